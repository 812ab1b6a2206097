"""Write the state-dict layout (key -> shape) of the released DCD models, the fixture the zoo's strict-loading test
reads (tests/fixtures/dcd_released_layout.json); with --compare, also check that the zoo's networks compute what the
released ones compute.

    git clone https://github.com/liyunsheng13/dcd /tmp/dcd   # 6a5e27f, the release
    python scripts/dcd_released_layout.py /tmp/dcd [--out tests/fixtures/dcd_released_layout.json] [--compare]

It builds the released constructors themselves (models/imagenet/resnet_dcd.py, mobilenetv2_dcd.py; torch only),
with the arguments of the released evaluation commands: ResNet50 and ResNet18 with `--dropout 0.1`, MobileNetV2
1.0x with `--dropout 0.1 --fc-squeeze 16`. The dropout only decides the classifier's index (`classifier.1`). Only
names and shapes are written: no weights, nothing downloaded. --compare gives both networks the same random
float64 weights and BatchNorm statistics, loads them into the zoo's model strictly, and prints the relative
difference of their outputs on random images in eval and train mode (dropout off).
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


def released_builders(repo: Path) -> dict:
    """The released constructors, by zoo name, with the released evaluation commands' arguments."""
    resnet = _load(repo / "models" / "imagenet" / "resnet_dcd.py", "released_resnet_dcd")
    mobilenet = _load(repo / "models" / "imagenet" / "mobilenetv2_dcd.py", "released_mobilenetv2_dcd")
    return {
        "dcd_resnet18": lambda: resnet.resnet18_dcd(dropout=0.1),
        "dcd_resnet50": lambda: resnet.resnet50_dcd(dropout=0.1),
        "dcd_mobilenetv2_100": lambda: mobilenet.mobilenetv2_dcd(width_mult=1.0, dropout=0.1, fc_squeeze=16),
    }


def released_layouts(repo: Path) -> dict[str, dict[str, list[int]]]:
    import torch

    out = {}
    for name, build in released_builders(repo).items():
        with torch.device("meta"):
            model = build()
        out[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
    return out


def compare_outputs(repo: Path) -> dict[str, dict[str, float]]:
    """Relative L2 difference between the released network and the zoo's, same weights, float64."""
    import timm
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import models

    out = {}
    for name, build in released_builders(repo).items():
        torch.manual_seed(0)
        theirs = build().double()
        with torch.no_grad():  # BatchNorm statistics and affines away from their initial values
            for key, v in theirs.state_dict().items():
                if key.endswith("running_var"):
                    v.uniform_(2, 4)
                elif key.endswith(("running_mean", "bias")):
                    v.normal_(0, 0.05)
                elif v.is_floating_point() and v.dim() == 1:
                    v.uniform_(0.3, 0.6)
        ours = timm.create_model(name).double()
        models.load_state_dict_checked(ours, theirs.state_dict(), strict=True)
        x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
        out[name] = {}
        for mode in ("eval", "train"):
            for net in (theirs, ours):
                net.train(mode == "train")
                for m in net.modules():
                    if isinstance(m, torch.nn.Dropout):
                        m.p = 0.0
            with torch.no_grad():
                a, b = theirs(x), ours(x)
            out[name][mode] = float((a - b).norm() / a.norm())
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
    parser.add_argument("--compare", action="store_true", help="also compare the zoo's outputs with the released")
    args = parser.parse_args(argv)
    if not (args.repo / "models" / "imagenet" / "resnet_dcd.py").is_file():
        print(f"error: {args.repo} is not a checkout of liyunsheng13/dcd (no models/imagenet/resnet_dcd.py)",
              file=sys.stderr)
        return 2
    layouts = released_layouts(args.repo)
    args.out.write_text(format_layouts(layouts))
    print(f"wrote {args.out}: " + ", ".join(f"{k} {len(v)} keys" for k, v in layouts.items()))
    if args.compare:
        for name, diffs in compare_outputs(args.repo).items():
            print(f"{name}: relative difference to the released network, float64: "
                  + ", ".join(f"{mode} {d:.1e}" for mode, d in diffs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
