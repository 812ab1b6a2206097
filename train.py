"""Train or evaluate an ODConv model: `python train.py [group=option ...] [key=value ...]`.

With no arguments it trains the demo model on the embedded digits. The config is composed by Hydra from configs/
(see configs/train.yaml); everything else happens in train/loop.py, `run(cfg)`.
"""
import sys

import hydra
from omegaconf import DictConfig

from train.config import ConfigError, register

register()  # the typed schema configs/train.yaml starts from


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from train.loop import NonFiniteLossError, run

    try:
        run(cfg)
    except ConfigError as e:  # a user's mistake: one line, no traceback
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except NonFiniteLossError:  # already reported by the loop
        sys.exit(3)


if __name__ == "__main__":
    main()
