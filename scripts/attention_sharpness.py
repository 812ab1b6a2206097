"""How close to one-hot a network's kernel attention is, per layer: the mean over a batch of each sample's
largest kernel weight (1/K is uniform, 1 is one-hot), at the given softmax temperatures. A freshly built network
by default (the state the first training step sees); `--checkpoint` reads a run's weights instead.

    python scripts/attention_sharpness.py --model dyconv_resnet18 --kernel-num 4 --temperatures 1 30
    python scripts/attention_sharpness.py --model od_resnet18 --kernel-num 4 --attention-norm layer

Inputs are standard-normal images of the digits demo's size (3 x 32 x 32), the seed fixed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import timm  # noqa: E402
import torch  # noqa: E402

import models  # noqa: E402,F401  (registers the zoo with timm)
import odconv  # noqa: E402


def sharpness(model: torch.nn.Module, x: torch.Tensor, temperature: float) -> dict[str, float]:
    """{layer name: mean over the batch of the largest kernel-attention weight} for every layer with a kernel
    attention (ODConv and DyConv with K > 1)."""
    odconv.set_temperature(model, temperature)
    found: dict[str, float] = {}
    hooks = []
    for name, module in model.named_modules():
        attention = getattr(module, "attention", None)
        if isinstance(module, odconv.DynamicConvNd) and attention is not None:
            def record(_, __, out, name=name):
                if out.kernel is not None:
                    found[name] = out.kernel.max(dim=1).values.mean().item()
            hooks.append(attention.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dyconv_resnet18")
    parser.add_argument("--kernel-num", type=int, default=4)
    parser.add_argument("--attention-norm", help="ODConv's attention norm (e.g. layer, as the demo)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 30.0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--checkpoint", help="a run's checkpoint (last.pt) or a released one")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    extra = {"attention_norm": args.attention_norm} if args.attention_norm else {}
    model = timm.create_model(args.model, kernel_num=args.kernel_num, num_classes=10, **extra).train()
    if args.checkpoint:
        models.load_checkpoint(model, args.checkpoint)
    x = torch.randn(args.batch, 3, 32, 32)
    print(f"{args.model} K={args.kernel_num}: mean largest kernel weight per layer (uniform {1 / args.kernel_num:.2f})")
    for t in args.temperatures:
        per_layer = sharpness(model, x, t)
        values = list(per_layer.values())
        if not values:
            print(f"error: {args.model} has no kernel attention (K = 1?)", file=sys.stderr)
            return 2
        print(f"T={t:g}: min {min(values):.2f} max {max(values):.2f}; " + " ".join(f"{v:.2f}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
