"""Our KernelWarehouse networks against the authors' code, run side by side: the same weights, the same input, at
several tau, in training and evaluation mode; prints the largest output and gradient differences per row.

    python scripts/compare_released_kw.py --released PATH/TO/KernelWarehouse [--rows resnet18/kw1x_resnet18 ...]

PATH is a clone of github.com/OSVAI/KernelWarehouse (nothing is downloaded here; the tests cannot use it, so this is
the one place where our layers meet the released ones numerically; docs/training.md records its output). Each row is
a released config file under configs/; the released network is built from it as the released main.py does, ours by
our builder (`models.kw.<name>(kw_ratio=...)`, what timm.create_model calls). The released state dict is loaded into ours strictly, so the layouts match
too. Compares in float64 by default and exits 1 if a relative difference exceeds --rtol.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models.kw  # noqa: E402

DEFAULT_ROWS = ("resnet18/kw1x_resnet18", "resnet18/kw4x_resnet18", "resnet18/kw1d4x_resnet18",
                "mobilenetv2_100/kw1x_mobilenetv2_100", "resnet50/kw1d2x_resnet50")
RATIOS = {"kw1d4x": 0.25, "kw1d2x": 0.5, "kw1x": 1, "kw2x": 2, "kw4x": 4}
RELEASED_FILE = {"kw_resnet": "kw_resnet.py", "kw_mobilenetv2": "kw_mobilenetv2.py", "kw_convnext": "kw_convnext.py"}


def released_builder(repo: Path, name: str, row: str):
    """The released builder function for `name`, loaded from its file without importing the released `models`
    package (whose names would shadow ours); the released MobileNetV2 1/2x has its own file and name."""
    if name.startswith("kw1d2x_mobilenetv2"):
        file = "kw1d2x_mobilenetv2.py"
    else:
        file = next(f for prefix, f in RELEASED_FILE.items() if name.startswith(prefix))
    sys.path.insert(0, str(repo))  # the released files import `modules.kernel_warehouse`
    spec = importlib.util.spec_from_file_location(f"released_{file[:-3]}", repo / "models" / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # timm's register_model looks its module up there
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's "overwriting kw_resnet18 in registry": ours are already built
        spec.loader.exec_module(module)
    return getattr(module, name)


def released_kwargs(cfg: dict) -> dict:
    """The keyword arguments main.py passes to create_model (no drop path or dropout: they are random)."""
    sharing = cfg.get("sharing_range", [])
    sharing = tuple(sharing.split("_")) if isinstance(sharing, str) else tuple(sharing)
    # main.py passes every key, None where its config file has none, and timm's create_model drops the Nones, so the
    # builder's own defaults hold (MobileNetV2's reduction; the 1/2x network fixes its own settings).
    kwargs = dict(num_classes=10, drop_path_rate=0.0, dropout=0.0, reduction=cfg.get("reduction"),
                cell_num_ratio=cfg.get("cell_num_ratio"), cell_inplane_ratio=cfg.get("cell_inplane_ratio"),
                cell_outplane_ratio=cfg.get("cell_outplane_ratio"), sharing_range=sharing,
                nonlocal_basis_ratio=cfg.get("nonlocal_basis_ratio", 1.0))
    return {k: v for k, v in kwargs.items() if v is not None}


def set_tau(model: torch.nn.Module, tau: float) -> None:
    for m in model.modules():
        if hasattr(m, "update_temperature"):
            m.update_temperature(tau)


def compare_row(repo: Path, row: str, taus: list[float], img: int, batch: int, dtype: torch.dtype) -> float:
    cfg = json.loads((repo / "configs" / f"{row}.json").read_text())
    released_name, ratio = cfg["model"], RATIOS[row.split("/")[-1].split("_")[0]]
    name = released_name.replace("kw1d2x_", "kw_")  # the released MobileNetV2 1/2x is a network of its own
    torch.manual_seed(0)
    # Our builder itself, not timm.create_model: loading a released file re-registers its names in timm's registry.
    no_drop_path = {} if "mobilenetv2" in name else dict(drop_path_rate=0.0)  # our MobileNetV2 has no drop path
    ours = getattr(models.kw, name)(kw_ratio=ratio, num_classes=10, drop_rate=0.0, **no_drop_path)
    released = released_builder(repo, released_name, row)(**released_kwargs(cfg))
    ours.load_state_dict(released.state_dict(), strict=True)  # raises, naming the key, if the layouts differ
    # In float64 the comparison shows whether the maths is the same: in float32 a layer whose logits sum to little
    # (the L1 normalisation divides by sum|z| + 1e-3) magnifies rounding, and the two codes round differently.
    released.to(dtype), ours.to(dtype)
    x = torch.randn(batch, 3, img, img, generator=torch.Generator().manual_seed(1), dtype=dtype)
    y = torch.arange(batch) % 10
    worst = 0.0
    for tau in taus:
        for training in (True, False):
            outs, grads = [], []
            for net in (released, ours):
                set_tau(net, tau)
                net.train(training)
                net.zero_grad(set_to_none=True)
                out = net(x)
                F.cross_entropy(out, y).backward()
                outs.append(out.detach())
                grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
            out_err = ((outs[0] - outs[1]).abs().max() / outs[0].abs().max()).item()
            # Our MobileNetV2 classifier is Sequential(Dropout, Linear): `classifier.1.weight` is the released
            # `classifier.weight` (a load hook maps the released name; the strict load above went through it).
            grads[1] = {n if n in grads[0] else n.replace("classifier.1.", "classifier.", 1): g
                        for n, g in grads[1].items()}
            if grads[0].keys() != grads[1].keys():
                raise SystemExit(f"{row}: the two networks train different parameters: released only "
                                 f"{sorted(grads[0].keys() - grads[1].keys())[:3]}, ours only "
                                 f"{sorted(grads[1].keys() - grads[0].keys())[:3]}")
            # Each parameter's gradient difference over its largest gradient; a gradient that is only rounding
            # noise (the attention's at tau = 1, where (1 - tau) = 0 scales it) is measured against the network's
            # largest gradient instead.
            floor = 1e-4 * max(g.abs().max().item() for g in grads[0].values())
            grad_err, grad_name = max(((grads[0][n] - g).abs().max().item() / max(grads[0][n].abs().max().item(),
                                                                                  floor), n)
                                      for n, g in grads[1].items())
            worst = max(worst, out_err, grad_err)
            print(f"{row:38s} kw_ratio={ratio:<5g} tau {tau:<4g} {'train' if training else 'eval ':5s} "
                  f"output {out_err:.2e}  gradient {grad_err:.2e} ({grad_name})")
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--released", type=Path, required=True, help="a clone of github.com/OSVAI/KernelWarehouse")
    p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), help="released configs, e.g. resnet18/kw4x_resnet18")
    p.add_argument("--taus", nargs="+", type=float, default=[1.0, 0.5, 0.0])
    p.add_argument("--img", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--rtol", type=float, default=None,
                   help="largest relative difference accepted; default 1e-6 in float64 (rounding, magnified up to "
                        "1e8 at tau 0 in a fresh ResNet50 1/2x whose attention logits sum to little; a wrong formula "
                        "differs by order 1), 1e-3 in float32")
    a = p.parse_args()
    if not (a.released / "modules" / "kernel_warehouse.py").is_file():
        sys.exit(f"error: --released {a.released}: no modules/kernel_warehouse.py there (clone OSVAI/KernelWarehouse)")
    torch.set_num_threads(1)
    dtype = getattr(torch, a.dtype)
    a.rtol = a.rtol if a.rtol is not None else (1e-6 if dtype == torch.float64 else 1e-3)
    worst = max(compare_row(a.released, row, a.taus, a.img, a.batch, dtype) for row in a.rows)
    print(f"worst relative difference {worst:.2e} (--rtol {a.rtol:g}): {'same' if worst <= a.rtol else 'DIFFERENT'}")
    sys.exit(0 if worst <= a.rtol else 1)


if __name__ == "__main__":
    main()
