"""A 1-D CNN with ODConv1d beside its static twin (nn.Conv1d, the same network) on the digits read as sequences.

Each of scikit-learn's bundled 8x8 digits is read row by row as a sequence of 64 values of one channel; the split is
the demo's (stratified 80/20, seed 0: 1,437 train / 360 test). The static network is a stem conv, three conv-BN-ReLU
blocks (two of stride 2), global average pooling and a linear classifier; its ODConv twin is that network passed
through `odconv.convert` (the stem stays static, every other Conv1d becomes an ODConv1d with `--kernel-num`
kernels). Both train with the same seed, data order and recipe (SGD, momentum 0.9, cosine schedule, weight decay
1e-4 on the conv and linear weights), and the script prints each seed's final top-1 on the test split, then the
mean ± std (sample std) over the seeds:

    python scripts/digits_1d.py               # 3 seeds x 2 networks, 20 epochs each

Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import odconv  # noqa: E402
from train.demo_data import DEMO_SEED, DEMO_VAL_FRACTION  # noqa: E402


def digits_as_sequences() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train x, train y, test x, test y): the digits as (N, 1, 64) sequences scaled to [0, 1], the demo's split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images.reshape(-1, 1, 64) / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=DEMO_VAL_FRACTION, random_state=DEMO_SEED,
                                           stratify=digits.target)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def static_net(width: int = 32, num_classes: int = 10) -> nn.Sequential:
    """The static 1-D CNN: stem, three conv-BN-ReLU blocks (64 -> 32 -> 16 positions), GAP, linear."""
    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv1d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*block(1, width, 1), *block(width, width, 1), *block(width, 2 * width, 2),
                         *block(2 * width, 2 * width, 2), nn.AdaptiveAvgPool1d(1), nn.Flatten(1),
                         nn.Linear(2 * width, num_classes))


def build(kind: str, seed: int, kernel_num: int) -> nn.Module:
    torch.manual_seed(seed)
    model = static_net()
    if kind == "odconv":
        torch.manual_seed(seed + 1000)  # the dynamic layers' own initialisation, the static parts unchanged
        odconv.convert(model, kernel_num=kernel_num)
    return model


def train_and_test(kind: str, seed: int, data, epochs: int, steps: int, batch_size: int, lr: float,
                   kernel_num: int) -> float:
    """Train one network and return its final top-1 (%) on the test split."""
    x_train, y_train, x_test, y_test = data
    model = build(kind, seed, kernel_num)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1 and "attention" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() > 1 and "attention" not in n)]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 1e-4}, {"params": rest, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9, nesterov=True)
    per_epoch = min(steps, len(y_train) // batch_size) if steps else len(y_train) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch)
    gen = torch.Generator().manual_seed(seed)  # the same data order for both twins
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=gen)
        for i in range(per_epoch):
            idx = order[i * batch_size: (i + 1) * batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x_test[i: i + 256]).argmax(1) == y_test[i: i + 256]).sum())
                      for i in range(0, len(y_test), 256))
    return 100.0 * correct / len(y_test)


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def main(argv=None) -> dict[str, list[float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=0, help="limit of steps per epoch (0: the whole training split)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--kernel-num", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny tensors: 1 is fastest)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = digits_as_sequences()
    results: dict[str, list[float]] = {"static": [], "odconv": []}
    start = time.perf_counter()
    for seed in args.seeds:
        for kind in results:
            results[kind].append(train_and_test(kind, seed, data, args.epochs, args.steps, args.batch_size, args.lr,
                                                args.kernel_num))
        print(f"seed {seed}: static Conv1d top-1 {results['static'][-1]:.2f}%  "
              f"ODConv1d ({args.kernel_num}x) top-1 {results['odconv'][-1]:.2f}%", flush=True)
    params = {k: sum(p.numel() for p in build(k, 0, args.kernel_num).parameters()) for k in results}
    print(f"static Conv1d ({params['static']:,} params): top-1 {mean_std(results['static'])}% over "
          f"{len(args.seeds)} seeds")
    print(f"ODConv1d {args.kernel_num}x ({params['odconv']:,} params): top-1 {mean_std(results['odconv'])}% over "
          f"{len(args.seeds)} seeds")
    print(f"({time.perf_counter() - start:.0f} s, {args.epochs} epochs, {len(data[1])} train / {len(data[3])} test "
          "sequences of 64)")
    return results


if __name__ == "__main__":
    main()
