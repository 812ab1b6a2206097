"""Results dashboard: run directories -> Markdown tables and a self-contained HTML page with charts and curves.

    python scripts/report.py runs/ [more run dirs or folders of runs ...] --out report/

Runs of the same configuration (the whole config.yaml but the seed, paths and logging) form one group, reported as
mean ± std over its n runs (seeds) for top-1/top-5, params, MACs and training images/s; the comparison table is
sorted by top-1 within each backbone, and the HTML draws it as bars with the std as error bars. Each run is put beside
the published top-1/top-5, params and MACs of its paper row; only ImageNet runs are compared with the paper
(`data.name` starting with "imagenet"). Unfinished runs (no summary.json yet) are reported from their metrics so far.
Runs are labelled by configuration and seed; unreadable images a run skipped (skipped_images.txt) are listed.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/report.py` from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import report_charts  # noqa: E402

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")
SKIPPED_FILE = "skipped_images.txt"  # one unreadable image per line, each file once (the run directory contract)
DASH = "—"
# Config keys that do not change what a run measures: runs differing only in these are seeds of one configuration.
NOT_CONFIGURATION = ("trainer.seed", "paths", "logger", "run_name", "mode", "checkpoint", "data.root", "data.workers",
                     "trainer.progress", "trainer.log_every", "trainer.keep_last", "trainer.save_every_steps",
                     "trainer.threads", "trainer.stop_after_steps")
FAMILIES = ("od_", "static_", "condconv_", "dyconv_")


class ReportError(ValueError):
    """A path given to the report is not a run directory; the message names it."""


@dataclass
class Run:
    path: Path
    config: dict
    summary: dict | None
    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)
    bad_lines: int = 0
    label: str = ""
    skipped: list[str] = field(default_factory=list)  # distinct unreadable images, from skipped_images.txt

    def get(self, dotted: str, default=None):
        node = self.config
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node


def find_runs(paths: list[str | Path]) -> list[Path]:
    """The run directories among `paths`; a folder that is not a run itself stands for all runs below it."""
    runs: list[Path] = []
    for given in map(Path, paths):
        if not given.is_dir():
            raise ReportError(f"Run directory {given} does not exist.")
        if any((given / name).is_file() for name in RUN_FILES):
            runs.append(given)
            continue
        # Runs below a folder are found by their metrics or summary: config.yaml alone also names Hydra's
        # .hydra/ and wandb's folders.
        below = sorted({p.parent for name in RUN_FILES[1:] for p in given.rglob(name)
                        if not any(part.startswith(".") for part in p.relative_to(given).parts)})
        if not below:
            raise ReportError(f"{given} is not a run directory (no {', '.join(RUN_FILES)}) and holds none.")
        runs.extend(below)
    return list(dict.fromkeys(runs))


def load_run(path: Path) -> Run:
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else None
    run = Run(path, config or {}, summary)
    records: dict[tuple, dict] = {}
    metrics = path / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a run killed while writing leaves a cut last line
            run.bad_lines += 1
            continue
        # A resumed run appends again the steps it redoes after its last checkpoint: the later record wins.
        records[(record.get("kind"), bool(record.get("ema")), record.get("step"), record.get("epoch"))] = record
    for record in records.values():
        {"train": run.train, "val": run.val}.get(record.get("kind"), []).append(record)
    run.train.sort(key=lambda r: (r.get("step", 0), r.get("epoch", 0)))
    run.val.sort(key=lambda r: (r.get("step", 0), r.get("epoch", 0)))
    skipped = path / SKIPPED_FILE
    if skipped.is_file():
        run.skipped = list(dict.fromkeys(line.strip() for line in skipped.read_text().splitlines() if line.strip()))
    return run


def _paper_row(run: Run):
    if not str(run.get("data.name", "")).lower().startswith("imagenet"):
        return None
    try:
        from models.published import paper_row
    except ImportError:  # the zoo is optional for reading results
        return None
    return paper_row(str(run.get("model.name", "")), int(run.get("model.kernel_num") or 0))


def _fmt(value, digits: int = 2) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def _millions(params) -> float | None:
    if params is None:
        return None
    return params / 1e6 if params > 1e4 else float(params)  # counts are stored raw; small numbers already in M


def _model_name(run: Run) -> str:
    return str((run.summary or {}).get("model", run.get("model.name", DASH)))


def _kind(run: Run) -> str:
    """K column: static, Nx kernels (ODConv, DyConv) or Nx experts (CondConv)."""
    s = run.summary or {}
    if _model_name(run).startswith("condconv_"):  # unset: the builder's number, which the config does not record
        return f"{run.get('model.num_experts')}x experts" if run.get("model.num_experts") else "experts"
    kernel_num = s.get("kernel_num", run.get("model.kernel_num"))
    return str(kernel_num) if kernel_num else ("static" if _model_name(run).startswith("static_") else DASH)


def backbone(model_name: str) -> str:
    """resnet18 for od_resnet18, static_resnet18, condconv_resnet18 and dyconv_resnet18."""
    return next((model_name[len(p):] for p in FAMILIES if model_name.startswith(p)), model_name)


def run_metrics(run: Run) -> dict[str, float | None]:
    """The numbers a run contributes to its group: best top-1/top-5, final top-1, params (M), median training
    images/s (the first logged interval includes start-up and is left out when there are others)."""
    s = run.summary or {}
    plain = [r for r in run.val if not r.get("ema") and r.get("top1") is not None]
    best = max(plain, key=lambda r: r["top1"], default=None)
    rates = [r["images_per_s"] for r in run.train if r.get("images_per_s")]
    return {
        "top1": s.get("best_top1", best["top1"] if best else None),
        "top5": s.get("best_top5", best.get("top5") if best else None),
        "final_top1": s.get("final_top1", plain[-1]["top1"] if plain else None),
        "params": _millions(s.get("params")),
        "images_per_s": statistics.median(rates[1:] or rates) if rates else None,
    }


def result_row(run: Run) -> dict[str, str]:
    s = run.summary or {}
    m = run_metrics(run)
    ema = [r for r in run.val if r.get("ema") and r.get("top1") is not None]
    row = _paper_row(run)
    # The summary's `epochs` is how many ran (a stopped run has fewer); the plan is the config's.
    epochs_planned = run.get("trainer.epochs", s.get("epochs"))
    epochs_done = max((r.get("epoch", -1) for r in run.val), default=-1) + 1
    logged_skips = max([r.get("skipped_images") or 0 for r in run.train] + [s.get("skipped_images") or 0])
    return {
        "Run": run.label,
        "Model": _model_name(run),
        "K": _kind(run),
        "Seed": str(run.get("trainer.seed", DASH)),
        "Data": str(run.get("data.name", DASH)),
        "Epochs": f"{epochs_done}/{epochs_planned}" if epochs_planned else str(epochs_done),
        "Status": str(s.get("status", "running" if run.val or run.train else "empty")),
        "Top-1": _fmt(m["top1"]),
        "Top-5": _fmt(m["top5"]),
        "Final top-1": _fmt(m["final_top1"]),
        "EMA top-1": _fmt(max((r["top1"] for r in ema), default=None)),
        # Distinct unreadable files: the run directory's list, else the count the engine logged.
        "Skipped images": str(len(run.skipped) if run.skipped else logged_skips),
        "Params (M)": _fmt(m["params"]),
        "Paper row": row.label if row else DASH,
        "Paper top-1": _fmt(row.top1 if row else None),
        "Paper top-5": _fmt(row.top5 if row else None),
        "Δ top-1": (f"{m['top1'] - row.top1:+.2f}" if row and m["top1"] is not None else DASH),
        "Paper params (M)": _fmt(row.params if row else None),
        "Paper MACs (M)": _fmt(row.macs if row else None, 1),
    }


# ----------------------------------------------------------------------------------------------- grouping over seeds
def _flatten(node, prefix: str = "") -> dict[str, object]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, object] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def configuration(run: Run) -> dict[str, object]:
    """The run's config without what does not change the measurement (NOT_CONFIGURATION)."""
    flat = _flatten(run.config)
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NOT_CONFIGURATION)}


@dataclass
class Group:
    label: str
    runs: list[Run]
    metrics: dict[str, list[float]]  # name -> one value per run that has it


def _describe(configs: list[dict[str, object]]) -> list[str]:
    """Short labels: the model, then the keys whose values differ between the groups (model keys first, by their
    short name: "od_resnet18 kernel_num=4 data.name=imagenet")."""
    differing = {k for c in configs for k in c if len({json.dumps(o.get(k), sort_keys=True) for o in configs}) > 1}
    ordered = sorted(differing - {"model.name"}, key=lambda k: (not k.startswith("model."), k))
    labels = []
    for c in configs:
        parts = [str(c.get("model.name", "run"))]
        for k in ordered:
            if c.get(k) is not None:  # an unset key is the default: not worth a word
                value = json.dumps(c[k]).strip('"').replace(" ", "")
                parts.append(f"{k[len('model.'):] if k.startswith('model.') else k}={value}")
        labels.append(" ".join(parts))
    return labels


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs with the same configuration, in order of first appearance; a run without config.yaml is its own group.
    Also labels each run by its group and seed (the curves' legend)."""
    keyed: dict[str, list[Run]] = {}
    for run in runs:
        key = json.dumps(configuration(run), sort_keys=True, default=str) if run.config else f"path:{run.path}"
        keyed.setdefault(key, []).append(run)
    members = list(keyed.values())
    labels = _describe([configuration(g[0]) for g in members]) if len(members) > 1 else \
        [str(members[0][0].get("run_name") or _model_name(members[0][0]))] if members else []
    groups = []
    for label, group in zip(labels, members):
        values: dict[str, list[float]] = {}
        for run in group:
            for name, value in run_metrics(run).items():
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    values.setdefault(name, []).append(float(value))
            seen = [r.label for r in group if r.label]
            run.label = f"{label} seed {run.get('trainer.seed', '?')}"
            if run.label in seen:  # the same configuration and seed run twice
                run.label += f" #{seen.count(run.label) + 1}"
        groups.append(Group(label, group, values))
    return groups


_MACS: dict[str, float] = {}  # one count per model and input size in a process (tests report the same runs again)


def model_macs(run: Run) -> float | None:
    """MACs (M) of one image at the run's data.img_size, for the model its config describes (None if it cannot be
    built here). The class count is recovered from the logged parameter count."""
    try:
        import timm

        from models.complexity import count_macs, count_params
        from train.builders import model_kwargs
        from train.config import ModelConfig

        fields = ModelConfig.__dataclass_fields__
        m = ModelConfig(**{k: v for k, v in (run.config.get("model") or {}).items() if k in fields})
        classes = run.get("data.num_classes")
        params = (run.summary or {}).get("params")
        size = int(run.get("data.img_size") or 224)
        key = json.dumps([run.config.get("model"), classes, params, size], sort_keys=True, default=str)
        if key not in _MACS:
            model = timm.create_model(m.name, **model_kwargs(m, 1))
            if not classes and params:  # params = the rest + classes x (features + bias): the logged count gives it
                head = model.get_classifier()
                classes = 1 + round((params - count_params(model)) / (head.in_features + 1))
            model.reset_classifier(int(classes or 1000))
            _MACS[key] = count_macs(model, (3, size, size))["total"] / 1e6
        return _MACS[key]
    except Exception:  # noqa: BLE001  a report must not fail for a model this checkout cannot build
        return None


def _mean_std(values: list[float], digits: int = 2) -> str:
    """mean ± sample std; one value has no spread to show ("± 0.00" would claim a measured zero)."""
    if not values:
        return DASH
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f} ± {DASH}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def group_row(group: Group) -> dict[str, str]:
    first = group.runs[0]
    v = group.metrics
    row = _paper_row(first)
    top1 = statistics.fmean(v["top1"]) if v.get("top1") else None
    return {
        "Configuration": group.label,
        "Backbone": backbone(_model_name(first)),
        "K": _kind(first),
        "Data": str(first.get("data.name", DASH)),
        "n": str(len(group.runs)),
        # The last evaluation first: the best over epochs is picked on the validation set itself and reads high.
        "Final top-1": _mean_std(v.get("final_top1", [])),
        "Top-1": _mean_std(v.get("top1", [])),
        "Top-5": _mean_std(v.get("top5", [])),
        "Params (M)": _mean_std(v.get("params", [])),
        "MACs (M)": _mean_std(v.get("macs", []), 1),
        "Images/s": _mean_std(v.get("images_per_s", []), 0),
        "Paper top-1": _fmt(row.top1 if row else None),
        "Δ top-1": f"{top1 - row.top1:+.2f}" if row and top1 is not None else DASH,
    }


def comparison(groups: list[Group]) -> list[Group]:
    """Backbones in alphabetical order; within one, the best mean top-1 first (groups without top-1 last)."""
    def key(g: Group):
        top1 = g.metrics.get("top1")
        return backbone(_model_name(g.runs[0])), -(statistics.fmean(top1) if top1 else -math.inf)

    return sorted(groups, key=key)


# ------------------------------------------------------------------------------------------------------- output
def markdown_table(rows: list[dict[str, str]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r[h].replace("|", "\\|") for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _html_table(rows: list[dict[str, str]]) -> str:
    header = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{header}</tr>{body}</table>"


def _img(alt: str, png: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png}">'


def html_page(group_rows: list[dict[str, str]], groups: list[Group], rows: list[dict[str, str]], runs: list[Run],
              title: str) -> str:
    sections = [f"<h2>Configurations (mean ± std over seeds)</h2>{_html_table(group_rows)}"]
    bars = report_charts.groups_png([
        (g.label, backbone(_model_name(g.runs[0])), statistics.fmean(g.metrics["top1"]),
         statistics.stdev(g.metrics["top1"]) if len(g.metrics["top1"]) > 1 else 0.0, len(g.metrics["top1"]))
        for g in groups if g.metrics.get("top1")])
    if bars:
        sections.append(_img("top-1 per configuration, mean and std over seeds", bars))
    sections.append(f"<h2>Runs</h2>{_html_table(rows)}")
    overview = report_charts.overview_png(
        [(run.label, [r for r in run.val if not r.get("ema") and r.get("top1") is not None]) for run in runs])
    if overview:
        sections.append(f"<h2>Validation top-1</h2>{_img('validation top-1 of all runs', overview)}")
    for run in runs:
        image = report_charts.curves_png(run.label, run.train, run.val)
        figure = _img(f"training curves of {run.label}", image) if image else "<p>No metrics yet.</p>"
        note = f"<p>{run.bad_lines} unreadable line(s) in metrics.jsonl skipped.</p>" if run.bad_lines else ""
        if run.skipped:
            items = "".join(f"<li><code>{html.escape(p)}</code></li>" for p in run.skipped)
            note += f"<p>{len(run.skipped)} unreadable image(s) skipped ({SKIPPED_FILE}):</p><ul>{items}</ul>"
        sections.append(f"<h2>{html.escape(run.label)}</h2><p><code>{html.escape(str(run.path))}</code></p>"
                        f"{figure}{note}")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:90%}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n")


def write_report(paths: list[str | Path], out_dir: str | Path, title: str = "ODConv results") -> tuple[Path, Path]:
    runs = [load_run(p) for p in find_runs(paths)]
    groups = group_runs(runs)
    for g in groups:  # one model per configuration
        g.metrics["macs"] = [m] * len(g.runs) if (m := model_macs(g.runs[0])) is not None else []
    ordered = comparison(groups)
    group_rows = [group_row(g) for g in ordered]
    runs = [run for g in ordered for run in g.runs]
    rows = [result_row(r) for r in runs]
    for column, empty in (("EMA top-1", DASH), ("Skipped images", "0")):  # columns only when some run has them
        if all(r[column] == empty for r in rows):
            for r in rows:
                del r[column]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, page = out_dir / "results.md", out_dir / "results.html"
    skipped = "".join(f"\n### Unreadable images skipped by {run.label} ({run.path})\n\n" +
                      "".join(f"- `{p}`\n" for p in run.skipped) for run in runs if run.skipped)
    md.write_text(f"# {title}\n\n## Configurations (mean ± std over seeds)\n\n" + markdown_table(group_rows)
                  + "\n## Runs\n\n" + markdown_table(rows) + skipped)
    page.write_text(html_page(group_rows, ordered, rows, runs, title))
    return md, page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories, or folders holding run directories")
    parser.add_argument("--out", default="report", help="output folder for results.md and results.html")
    parser.add_argument("--title", default="ODConv results")
    args = parser.parse_args(argv)
    try:
        md, page = write_report(args.runs, args.out, args.title)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(md.read_text(), end="")
    print(f"wrote {md} and {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
