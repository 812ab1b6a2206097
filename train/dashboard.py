"""What a run is and what it scored, in one place for every dashboard: W&B, TensorBoard and scripts/report.py.

A run's *configuration* is its config without what does not change the measurement (seed, paths, logging, ...):
runs that differ only in those are seeds of one configuration, grouped in W&B and averaged by the report. A run's
*figures* are the numbers a dashboard shows for it: best/final top-1 and top-5, params, MACs, training images/s and,
for ImageNet runs, the published top-1 of its paper row with the difference to it.
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics

# Config keys that do not change what a run measures: runs differing only in these are seeds of one configuration.
NOT_CONFIGURATION = ("trainer.seed", "paths", "logger", "run_name", "mode", "checkpoint", "data.root", "data.workers",
                     "trainer.progress", "trainer.log_every", "trainer.keep_last", "trainer.save_every_steps",
                     "trainer.threads", "trainer.stop_after_steps", "trainer.val_bn_diagnostics")


# Model families whose attention has a temperature (odconv/temperature.py anneals it); the others log one that
# nothing reads, which no dashboard should draw.
TEMPERATURE_FAMILIES = ("od_", "dyconv_", "kw_")  # kw_: tau, the weight of the initial cell assignment


def has_temperature(config: dict) -> bool:
    return str(get(config, "model.name", "")).startswith(TEMPERATURE_FAMILIES)


def flatten(node, prefix: str = "") -> dict[str, object]:
    """{"model": {"name": x}} -> {"model.name": x}; lists stay values."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, object] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def get(config: dict, dotted: str, default=None):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def configuration(config: dict) -> dict[str, object]:
    """The flat config without what does not change the measurement (NOT_CONFIGURATION)."""
    return {k: v for k, v in flatten(config).items()
            if not any(k == n or k.startswith(n + ".") for n in NOT_CONFIGURATION)}


def group_name(config: dict) -> str:
    """A W&B group for the configuration: the model name (readable) and a digest of the whole configuration (so two
    configurations of one model never share a group), e.g. "od_resnet18-3fa2c1d0"."""
    digest = hashlib.sha1(json.dumps(configuration(config), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{get(config, 'model.name', 'run')}-{digest}"


def paper_row(config: dict):
    """The published row a run reproduces, or None: only ImageNet runs (data.name imagenet...) are compared."""
    if not str(get(config, "data.name", "")).lower().startswith("imagenet"):
        return None
    try:
        from models.published import paper_row as row
    except ImportError:  # the zoo is optional for reading results
        return None
    return row(str(get(config, "model.name", "")), int(get(config, "model.kernel_num") or 0))


def millions(params) -> float | None:
    if params is None:
        return None
    return params / 1e6 if params > 1e4 else float(params)  # counts are stored raw; small numbers already in M


def training_rate(train: list[dict]) -> float | None:
    """Median training images/s; the first logged interval includes start-up and is left out when there are others."""
    rates = [r["images_per_s"] for r in train if r.get("images_per_s")]
    return statistics.median(rates[1:] or rates) if rates else None


def _finite(value) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) or value < 0 else value


def figures(config: dict, summary: dict | None, train: list[dict], val: list[dict],
            macs: float | None = None) -> dict[str, float | None]:
    """The numbers a dashboard shows for one run, from its summary.json when it has one, else its metrics so far."""
    s = summary or {}
    plain = [r for r in val if not r.get("ema") and r.get("top1") is not None]
    best = max(plain, key=lambda r: r["top1"], default=None)
    out = {
        "best_top1": _finite(s.get("best_top1", best["top1"] if best else None)),
        "best_top5": _finite(s.get("best_top5", best.get("top5") if best else None)),
        "final_top1": _finite(s.get("final_top1", plain[-1]["top1"] if plain else None)),
        "final_top5": _finite(s.get("final_top5", plain[-1].get("top5") if plain else None)),
        "params_m": millions(s.get("params")),
        "macs_m": macs,
        "images_per_s": training_rate(train),
    }
    row = paper_row(config)
    out["paper_top1"] = row.top1 if row else None
    out["delta_top1"] = out["best_top1"] - row.top1 if row and out["best_top1"] is not None else None
    return out


_MACS: dict[str, float] = {}  # one count per model and input size in a process (reports read the same runs again)


def model_macs(config: dict, params: int | None = None) -> float | None:
    """MACs (M) of one image at the run's data.img_size, for the model its config describes (None if it cannot be
    built here). Without data.num_classes the class count is recovered from the logged parameter count."""
    try:
        import timm

        from models.complexity import count_macs, count_params
        from train.builders import model_kwargs
        from train.config import ModelConfig

        fields = ModelConfig.__dataclass_fields__
        m = ModelConfig(**{k: v for k, v in (config.get("model") or {}).items() if k in fields})
        classes = get(config, "data.num_classes")
        size = int(get(config, "data.img_size") or 224)
        key = json.dumps([config.get("model"), classes, params, size], sort_keys=True, default=str)
        if key not in _MACS:
            model = timm.create_model(m.name, **model_kwargs(m, 1))
            if not classes and params:  # params = the rest + classes x (features + bias): the logged count gives it
                head = model.get_classifier()
                classes = 1 + round((params - count_params(model)) / (head.in_features + 1))
            model.reset_classifier(int(classes or 1000))
            _MACS[key] = count_macs(model, (3, size, size))["total"] / 1e6
        return _MACS[key]
    except Exception:  # noqa: BLE001  a dashboard must not fail for a model this checkout cannot build
        return None
