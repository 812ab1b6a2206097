"""Results dashboard: run directories -> a Markdown table and a self-contained HTML page with training curves.

    python scripts/report.py runs/ [more run dirs or folders of runs ...] --out report/

Each run (config.yaml, metrics.jsonl, summary.json; see the run directory contract) is put beside the published
top-1/top-5, params and MACs of its paper row. Only ImageNet runs are compared with the paper (`data.name` starting
with "imagenet"); runs on other data, such as the demo digits, show "—" there. Unfinished runs (no summary.json yet)
are reported from their metrics so far.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/report.py` from a checkout

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")
DASH = "—"


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


def result_row(run: Run) -> dict[str, str]:
    s = run.summary or {}
    plain = [r for r in run.val if not r.get("ema") and r.get("top1") is not None]
    ema = [r for r in run.val if r.get("ema") and r.get("top1") is not None]
    best = max(plain, key=lambda r: r["top1"], default=None)
    best_top1 = s.get("best_top1", best["top1"] if best else None)
    best_top5 = s.get("best_top5", best.get("top5") if best else None)
    final_top1 = s.get("final_top1", plain[-1]["top1"] if plain else None)
    row = _paper_row(run)
    epochs_planned = s.get("epochs", run.get("trainer.epochs"))
    epochs_done = max((r.get("epoch", -1) for r in run.val), default=-1) + 1
    kernel_num = s.get("kernel_num", run.get("model.kernel_num"))
    return {
        "Run": run.label,
        "Model": str(s.get("model", run.get("model.name", DASH))),
        "K": str(kernel_num) if kernel_num else "static",
        "Data": str(run.get("data.name", DASH)),
        "Epochs": f"{epochs_done}/{epochs_planned}" if epochs_planned else str(epochs_done),
        "Status": str(s.get("status", "running" if run.val or run.train else "empty")),
        "Top-1": _fmt(best_top1),
        "Top-5": _fmt(best_top5),
        "Final top-1": _fmt(final_top1),
        "EMA top-1": _fmt(max((r["top1"] for r in ema), default=None)),
        # The engine logs a running count of unreadable images skipped (summed over ranks).
        "Skipped images": str(max((r.get("skipped_images") or 0 for r in run.train), default=0)),
        "Params (M)": _fmt(_millions(s.get("params"))),
        "Paper row": row.label if row else DASH,
        "Paper top-1": _fmt(row.top1 if row else None),
        "Paper top-5": _fmt(row.top5 if row else None),
        "Δ top-1": (f"{best_top1 - row.top1:+.2f}" if row and best_top1 is not None else DASH),
        "Paper params (M)": _fmt(row.params if row else None),
        "Paper MACs (M)": _fmt(row.macs if row else None, 1),
    }


def markdown_table(rows: list[dict[str, str]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r[h].replace("|", "\\|") for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def curves_png(run: Run) -> str | None:
    """Training loss, lr and temperature per step, validation top-1/top-5 per epoch; base64 PNG, None without metrics."""
    if not run.train and not run.val:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr, ax_acc) = plt.subplots(1, 3, figsize=(13, 3.2), layout="constrained")
    for ax, key, color in ((ax_loss, "loss", "tab:blue"), (ax_lr, "lr", "tab:gray")):
        points = [(r["step"], r[key]) for r in run.train if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), color=color, label=key)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
    temperature = [(r["step"], r["temperature"]) for r in run.train if r.get("temperature") is not None]
    if temperature:  # ODConv's attention temperature, annealed from 30 to 1 in the recipe
        ax_t = ax_lr.twinx()
        ax_t.plot(*zip(*temperature), color="tab:red", linestyle=":")
        ax_t.set_ylabel("temperature (dotted)")
    for ema, style in ((False, "-"), (True, "--")):
        val = [r for r in run.val if bool(r.get("ema")) == ema and r.get("top1") is not None]
        suffix = " (EMA)" if ema else ""
        for key, color in (("top1", "tab:green"), ("top5", "tab:orange")):
            if val:
                ax_acc.plot([r["epoch"] + 1 for r in val], [r.get(key) for r in val], style, marker="o",
                            markersize=3, color=color, label=f"val {key}{suffix}")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    if run.val:
        ax_acc.legend(fontsize=8)
    fig.suptitle(run.label, fontsize=10)
    image = _png(fig)
    plt.close(fig)
    return image


def overview_png(runs: list[Run]) -> str | None:
    """Validation top-1 per epoch of every run in one plot; None for fewer than two runs with validation."""
    curves = [(run.label, [r for r in run.val if not r.get("ema") and r.get("top1") is not None]) for run in runs]
    curves = [(label, val) for label, val in curves if val]
    if len(curves) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    for label, val in curves:
        ax.plot([r["epoch"] + 1 for r in val], [r["top1"] for r in val], marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%)")
    ax.legend(fontsize=8)
    image = _png(fig)
    plt.close(fig)
    return image


def html_page(rows: list[dict[str, str]], runs: list[Run], title: str) -> str:
    header = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    sections = []
    overview = overview_png(runs)
    if overview:
        sections.append(f'<h2>Validation top-1</h2><img alt="validation top-1 of all runs" '
                        f'src="data:image/png;base64,{overview}">')
    for run in runs:
        image = curves_png(run)
        figure = (f'<img alt="training curves of {html.escape(run.label)}" src="data:image/png;base64,{image}">'
                  if image else "<p>No metrics yet.</p>")
        note = f"<p>{run.bad_lines} unreadable line(s) in metrics.jsonl skipped.</p>" if run.bad_lines else ""
        sections.append(f"<h2>{html.escape(run.label)}</h2><p><code>{html.escape(str(run.path))}</code></p>"
                        f"{figure}{note}")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:90%}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<table><tr>{header}</tr>{body}</table>{''.join(sections)}</body></html>\n")


def _labels(paths: list[Path]) -> list[str]:
    """Shortest distinguishing names: paths relative to the runs' common parent."""
    if len(paths) == 1:
        return [paths[0].resolve().name]
    resolved = [p.resolve() for p in paths]
    common = Path(*[parts[0] for parts in zip(*(p.parts for p in resolved)) if len(set(parts)) == 1])
    return [str(p.relative_to(common)) for p in resolved]


def write_report(paths: list[str | Path], out_dir: str | Path, title: str = "ODConv results") -> tuple[Path, Path]:
    run_dirs = find_runs(paths)
    runs = [load_run(p) for p in run_dirs]
    for run, label in zip(runs, _labels(run_dirs)):
        run.label = label
    rows = [result_row(r) for r in runs]
    for column, empty in (("EMA top-1", DASH), ("Skipped images", "0")):  # columns only when some run has them
        if all(r[column] == empty for r in rows):
            for r in rows:
                del r[column]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, page = out_dir / "results.md", out_dir / "results.html"
    md.write_text(f"# {title}\n\n" + markdown_table(rows))
    page.write_text(html_page(rows, runs, title))
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
