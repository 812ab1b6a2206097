"""Train or evaluate an ODConv model: `python train.py [group=option ...] [key=value ...]`.

With no arguments it trains the demo model on the embedded digits. The config is composed by Hydra from configs/
(see configs/train.yaml); everything else happens in train/loop.py, `run(cfg)`.

Exit status: 0 done, 2 a mistake in the command or config (ours or Hydra's: unknown key or option, bad override
syntax, wrong type), 3 the loss became non-finite, 1 anything else (a crash, with its traceback).
"""
import sys

import hydra
from omegaconf import DictConfig

from train.config import ConfigError, register

register()  # the typed schema configs/train.yaml starts from

USER_ERROR, NON_FINITE = 2, 3
_in_job = False  # True while a job runs in this process: an exception then is a crash, whatever its type


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    global _in_job
    from train.loop import NonFiniteLossError, run

    _in_job = True
    try:
        run(cfg)
    except ConfigError as e:  # a user's mistake: one line, no traceback
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR)
    except NonFiniteLossError:  # already reported by the loop
        sys.exit(NON_FINITE)
    _in_job = False  # the next job of a multirun is composed after this one returns


def cli() -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        main()
    except SystemExit as e:
        # Hydra prints its own errors (unknown key or option, override syntax, wrong type) and exits with 1, as it
        # does for a crash; the exception it was handling tells them apart.
        if e.code == 1 and not _in_job and isinstance(e.__context__, (HydraException, OmegaConfBaseException)):
            sys.exit(USER_ERROR)
        raise


if __name__ == "__main__":
    cli()
