"""The report's figures as self-contained base64 PNGs: per-run training curves, every run's validation top-1, and the
mean top-1 of each configuration with its seed-to-seed standard deviation as error bars (scripts/report.py)."""
from __future__ import annotations

import base64
import io


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def curves_png(label: str, train: list[dict], val: list[dict]) -> str | None:
    """Training loss, lr and temperature per step, validation top-1/top-5 per epoch; None without metrics."""
    if not train and not val:
        return None
    fig, (ax_loss, ax_lr, ax_acc) = _pyplot().subplots(1, 3, figsize=(13, 3.2), layout="constrained")
    for ax, key, color in ((ax_loss, "loss", "tab:blue"), (ax_lr, "lr", "tab:gray")):
        points = [(r["step"], r[key]) for r in train if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), color=color, label=key)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
    temperature = [(r["step"], r["temperature"]) for r in train if r.get("temperature") is not None]
    if temperature:  # the attention temperature, annealed from 30 to 1 in the recipe
        ax_t = ax_lr.twinx()
        ax_t.plot(*zip(*temperature), color="tab:red", linestyle=":")
        ax_t.set_ylabel("temperature (dotted)")
    for ema, style in ((False, "-"), (True, "--")):
        points = [r for r in val if bool(r.get("ema")) == ema and r.get("top1") is not None]
        suffix = " (EMA)" if ema else ""
        for key, color in (("top1", "tab:green"), ("top5", "tab:orange")):
            if points:
                ax_acc.plot([r["epoch"] + 1 for r in points], [r.get(key) for r in points], style, marker="o",
                            markersize=3, color=color, label=f"val {key}{suffix}")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    if val:
        ax_acc.legend(fontsize=8)
    fig.suptitle(label, fontsize=10)
    return _png(fig)


def overview_png(curves: list[tuple[str, list[dict]]]) -> str | None:
    """Validation top-1 per epoch of every run, one line per (label, val records); None for fewer than two runs."""
    curves = [(label, val) for label, val in curves if val]
    if len(curves) < 2:
        return None
    fig, ax = _pyplot().subplots(figsize=(8, 3.8), layout="constrained")
    for label, val in curves:
        ax.plot([r["epoch"] + 1 for r in val], [r["top1"] for r in val], marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%)")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def groups_png(bars: list[tuple[str, str, float, float, int]]) -> str | None:
    """One bar per configuration: (label, backbone, mean top-1, std over seeds, n), coloured by backbone, the std as
    error bar and n under the label; None without any top-1."""
    bars = [b for b in bars if b[2] is not None]
    if not bars:
        return None
    plt = _pyplot()
    backbones = list(dict.fromkeys(b[1] for b in bars))
    colors = {bb: plt.get_cmap("tab10")(i % 10) for i, bb in enumerate(backbones)}
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(bars) + 1.5), 4.2), layout="constrained")
    x = range(len(bars))
    ax.bar(x, [b[2] for b in bars], yerr=[b[3] for b in bars], capsize=4, color=[colors[b[1]] for b in bars])
    ax.set_xticks(list(x), [f"{b[0]}\nn={b[4]}" for b in bars], rotation=30, ha="right", fontsize=7)
    low = min(b[2] - b[3] for b in bars)
    ax.set_ylim(max(0.0, low - 5.0), min(100.0, max(b[2] + b[3] for b in bars) + 2.0))
    ax.set_ylabel("best val top-1 (%), mean ± std")
    for bb in backbones:
        ax.bar([0], [0], color=colors[bb], label=bb)  # legend entries only
    ax.legend(fontsize=8, title="backbone", title_fontsize=8)
    return _png(fig)
