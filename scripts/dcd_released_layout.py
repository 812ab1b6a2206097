"""Write the state-dict layout (key -> shape) of the released DCD models, the fixture the zoo's strict-loading test
reads (tests/fixtures/dcd_released_layout.json).

    git clone https://github.com/liyunsheng13/dcd /tmp/dcd   # 6a5e27f, the release
    python scripts/dcd_released_layout.py /tmp/dcd [--out tests/fixtures/dcd_released_layout.json]

It builds the released constructors themselves (models/imagenet/resnet_dcd.py, mobilenetv2_dcd.py; torch only),
with the arguments of the released evaluation commands: ResNet50 and ResNet18 with `--dropout 0.1`, MobileNetV2
1.0x with `--dropout 0.1 --fc-squeeze 16`. The dropout only decides the classifier's index (`classifier.1`). Only
names and shapes are written: no weights, nothing downloaded.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "dcd_released_layout.json"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def released_layouts(repo: Path) -> dict[str, dict[str, list[int]]]:
    import torch

    resnet = _load(repo / "models" / "imagenet" / "resnet_dcd.py", "released_resnet_dcd")
    mobilenet = _load(repo / "models" / "imagenet" / "mobilenetv2_dcd.py", "released_mobilenetv2_dcd")
    builds = {
        "dcd_resnet18": lambda: resnet.resnet18_dcd(dropout=0.1),
        "dcd_resnet50": lambda: resnet.resnet50_dcd(dropout=0.1),
        "dcd_mobilenetv2_100": lambda: mobilenet.mobilenetv2_dcd(width_mult=1.0, dropout=0.1, fc_squeeze=16),
    }
    out = {}
    for name, build in builds.items():
        with torch.device("meta"):
            model = build()
        out[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
    return out


def format_layouts(layouts: dict[str, dict[str, list[int]]]) -> str:
    """JSON with one key per line, in the released state dict's order (diffs stay readable)."""
    models = []
    for name, layout in layouts.items():
        entries = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in layout.items())
        models.append(f"{json.dumps(name)}: {{\n{entries}\n}}")
    return "{\n" + ",\n".join(models) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", type=Path, help="a checkout of github.com/liyunsheng13/dcd")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not (args.repo / "models" / "imagenet" / "resnet_dcd.py").is_file():
        print(f"error: {args.repo} is not a checkout of liyunsheng13/dcd (no models/imagenet/resnet_dcd.py)",
              file=sys.stderr)
        return 2
    layouts = released_layouts(args.repo)
    args.out.write_text(format_layouts(layouts))
    print(f"wrote {args.out}: " + ", ".join(f"{k} {len(v)} keys" for k, v in layouts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
