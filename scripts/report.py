"""Results dashboard: run directories -> Markdown tables and one self-contained interactive HTML page.

    python scripts/report.py runs/ [more run dirs or folders of runs ...] --out report/ [--watch [--interval 60]]

Runs of the same configuration (the whole config.yaml but the seed, paths and logging: train/dashboard.py) form one
group, reported as mean ± std over its n runs (seeds) for top-1/top-5, params, MACs and training images/s, sorted by
top-1 within each backbone. Groups are labelled by their model and only the settings that tell them apart
("od_resnet18 K=4", "od_resnet18 K=1 norm=batch"); the full configuration is in the page, on hover and one click
away. ImageNet runs (`data.name` starting with "imagenet") are put beside the published row of their model; the
page's "reproduction status" lists every published row with ours. Unfinished runs (no summary.json yet) are
reported from their metrics so far, so `--watch` can rewrite the report as a sweep progresses. Columns that are
empty for every row are left out. Unreadable images a run skipped (skipped_images.txt) are listed.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/report.py` from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import report_page  # noqa: E402
from report_labels import describe  # noqa: E402
from train import dashboard  # noqa: E402

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")
SKIPPED_FILE = "skipped_images.txt"  # one unreadable image per line, each file once (the run directory contract)
DASH = "—"
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
        return dashboard.get(self.config, dotted, default)


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


def _fmt(value, digits: int = 2) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


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


def run_figures(run: Run) -> dict[str, float | None]:
    return dashboard.figures(run.config, run.summary, run.train, run.val)


def result_row(run: Run) -> dict[str, str]:
    s = run.summary or {}
    f = run_figures(run)
    ema = [r for r in run.val if r.get("ema") and r.get("top1") is not None]
    row = dashboard.paper_row(run.config)
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
        "Top-1": _fmt(f["best_top1"]),
        "Top-5": _fmt(f["best_top5"]),
        "Final top-1": _fmt(f["final_top1"]),
        "EMA top-1": _fmt(max((r["top1"] for r in ema), default=None)),
        # Distinct unreadable files: the run directory's list, else the count the engine logged.
        "Skipped images": str(len(run.skipped) if run.skipped else logged_skips),
        "Params (M)": _fmt(f["params_m"]),
        "Images/s": _fmt(f["images_per_s"], 0),
        "Paper row": row.label if row else DASH,
        "Paper top-1": _fmt(row.top1 if row else None),
        "Δ top-1": f"{f['delta_top1']:+.2f}" if f["delta_top1"] is not None else DASH,
    }


# ----------------------------------------------------------------------------------------------- grouping over seeds
@dataclass
class Group:
    label: str
    runs: list[Run]
    metrics: dict[str, list[float]]  # figure name -> one value per run that has it

    @property
    def backbone(self) -> str:
        return backbone(_model_name(self.runs[0]))

    @property
    def configuration(self) -> dict[str, object]:
        return dashboard.configuration(self.runs[0].config)

    def mean(self, name: str) -> float | None:
        values = self.metrics.get(name)
        return statistics.fmean(values) if values else None

    def std(self, name: str) -> float | None:
        values = self.metrics.get(name) or []
        return statistics.stdev(values) if len(values) > 1 else None


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs with the same configuration, in order of first appearance; a run without config.yaml is its own group.
    Also labels each run by its group and seed (the curves' legend)."""
    keyed: dict[str, list[Run]] = {}
    for run in runs:
        key = json.dumps(dashboard.configuration(run.config), sort_keys=True, default=str) if run.config \
            else f"path:{run.path}"
        keyed.setdefault(key, []).append(run)
    members = list(keyed.values())
    labels = describe([dashboard.configuration(g[0].config) if g[0].config else {"model.name": _model_name(g[0])}
                       for g in members])
    groups = []
    for label, group in zip(labels, members):
        values: dict[str, list[float]] = {}
        seen: list[str] = []
        for run in group:
            for name, value in run_figures(run).items():
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    values.setdefault(name, []).append(float(value))
            run.label = f"{label} seed {run.get('trainer.seed', '?')}"
            if run.label in seen:  # the same configuration and seed run twice
                run.label += f" #{seen.count(run.label) + 1}"
            seen.append(run.label.split(" #")[0])
        groups.append(Group(label, group, values))
    return groups


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
    row = dashboard.paper_row(first.config)
    top1 = group.mean("best_top1")
    return {
        "Configuration": group.label,
        "Backbone": backbone(_model_name(first)),
        "K": _kind(first),
        "Data": str(first.get("data.name", DASH)),
        "n": str(len(group.runs)),
        # The last evaluation first: the best over epochs is picked on the validation set itself and reads high.
        "Final top-1": _mean_std(v.get("final_top1", [])),
        "Top-1": _mean_std(v.get("best_top1", [])),
        "Top-5": _mean_std(v.get("best_top5", [])),
        "Params (M)": _mean_std(v.get("params_m", [])),
        "MACs (M)": _mean_std(v.get("macs_m", []), 1),
        "Images/s": _mean_std(v.get("images_per_s", []), 0),
        "Paper top-1": _fmt(row.top1 if row else None),
        "Δ top-1": f"{top1 - row.top1:+.2f}" if row and top1 is not None else DASH,
    }


def comparison(groups: list[Group]) -> list[Group]:
    """Backbones in alphabetical order; within one, the best mean top-1 first (groups without top-1 last)."""
    def key(g: Group):
        top1 = g.mean("best_top1")
        return backbone(_model_name(g.runs[0])), -(top1 if top1 is not None else -math.inf)

    return sorted(groups, key=key)


def reproduction_rows(groups: list[Group]) -> list[dict[str, str]]:
    """Every published row beside our ImageNet configurations of its model (one line each), or "not run yet"."""
    from models.published import PAPER_ROWS

    ours: dict[str, list[Group]] = {}
    for g in groups:
        row = dashboard.paper_row(g.runs[0].config)
        if row is not None:
            ours.setdefault(row.label, []).append(g)
    rows = []
    for row in PAPER_ROWS.values():
        for g in ours.get(row.label) or [None]:
            top1 = g.mean("best_top1") if g else None
            rows.append({
                "Published row": row.label, "Paper top-1": _fmt(row.top1), "Paper top-5": _fmt(row.top5),
                "Paper params (M)": _fmt(row.params), "Paper MACs (M)": _fmt(row.macs, 1),
                "Ours": g.label if g else "not run yet", "n": str(len(g.runs)) if g else DASH,
                "Our top-1": _mean_std(g.metrics.get("best_top1", [])) if g else DASH,
                "Δ top-1": f"{top1 - row.top1:+.2f}" if top1 is not None else DASH,
                "Our params (M)": _fmt(g.mean("params_m")) if g else DASH,
                "Our MACs (M)": _fmt(g.mean("macs_m"), 1) if g else DASH,
            })
    return rows


# ------------------------------------------------------------------------------------------------------- output
def drop_empty_columns(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows without the columns that say nothing on any row: all "—", or no skipped image anywhere."""
    if not rows:
        return rows
    empty = {h: {DASH, "0"} if h == "Skipped images" else {DASH} for h in rows[0]}
    keep = [h for h in rows[0] if any(r[h] not in empty[h] for r in rows) or h in ("Run", "Configuration")]
    return [{h: r[h] for h in keep} for r in rows]


def markdown_table(rows: list[dict[str, str]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r[h].replace("|", "\\|") for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@dataclass
class Report:
    title: str
    groups: list[Group]  # in comparison order
    runs: list[Run]  # in the groups' order
    group_rows: list[dict[str, str]]
    run_rows: list[dict[str, str]]
    reproduction: list[dict[str, str]]


def build_report(paths: list[str | Path], title: str = "ODConv results") -> Report:
    runs = [load_run(p) for p in find_runs(paths)]
    groups = group_runs(runs)
    for g in groups:  # one model per configuration
        macs = dashboard.model_macs(g.runs[0].config, (g.runs[0].summary or {}).get("params"))
        g.metrics["macs_m"] = [macs] * len(g.runs) if macs is not None else []
    ordered = comparison(groups)
    runs = [run for g in ordered for run in g.runs]
    return Report(title, ordered, runs, drop_empty_columns([group_row(g) for g in ordered]),
                  drop_empty_columns([result_row(r) for r in runs]), reproduction_rows(ordered))


def write_report(paths: list[str | Path], out_dir: str | Path, title: str = "ODConv results",
                 refresh_s: float | None = None) -> tuple[Path, Path]:
    """results.md and results.html in out_dir (each written whole, then renamed: a reader never sees half a file)."""
    report = build_report(paths, title)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, page = out_dir / "results.md", out_dir / "results.html"
    skipped = "".join(f"\n### Unreadable images skipped by {run.label} ({run.path})\n\n" +
                      "".join(f"- `{p}`\n" for p in run.skipped) for run in report.runs if run.skipped)
    ours = [r for r in report.reproduction if r["Ours"] != "not run yet"]
    status = "\n## Reproduction status (ImageNet)\n\n" + markdown_table(ours) if ours else ""
    _replace(md, f"# {report.title}\n\n## Configurations (mean ± std over seeds)\n\n"
             + markdown_table(report.group_rows) + status + "\n## Runs\n\n" + markdown_table(report.run_rows)
             + skipped)
    _replace(page, report_page.html_page(report, refresh_s))
    return md, page


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def watch(paths: list[str | Path], out_dir: str | Path, title: str, interval_s: float,
          iterations: int | None = None, on_write=print) -> int:
    """Rewrite the report whenever a run file changed (new metrics line, new run, summary); returns the number of
    writes. The page reloads itself every interval while watched. `iterations` bounds the checks (None: forever)."""
    last, writes, done = None, 0, 0
    while iterations is None or done < iterations:
        try:
            state = _fingerprint(paths)
        except ReportError as err:  # the sweep has not written its first run yet
            if done == 0:
                on_write(f"waiting for runs: {err}")
            state = None
        if state is not None and state != last:
            md, page = write_report(paths, out_dir, title, refresh_s=interval_s)
            last, writes = state, writes + 1
            on_write(f"{time.strftime('%H:%M:%S')} wrote {md} and {page} ({len(state)} run files)")
        done += 1
        if iterations is None or done < iterations:
            time.sleep(interval_s)
    return writes


def _fingerprint(paths: list[str | Path]) -> tuple:
    """Size and modification time of every run file: a new line in metrics.jsonl changes it."""
    out = []
    for run in find_runs(paths):
        for name in (*RUN_FILES, SKIPPED_FILE):
            path = run / name
            if path.is_file():
                st = path.stat()
                out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories, or folders holding run directories")
    parser.add_argument("--out", default="report", help="output folder for results.md and results.html")
    parser.add_argument("--title", default="ODConv results")
    parser.add_argument("--watch", action="store_true",
                        help="keep running: rewrite the report whenever a run writes (a sweep in progress)")
    parser.add_argument("--interval", type=float, default=60.0, help="--watch: seconds between checks")
    parser.add_argument("--iterations", type=int, default=None, help="--watch: stop after this many checks")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error(f"--interval must be > 0 seconds, got {args.interval}")
    try:
        if args.watch:
            watch(args.runs, args.out, args.title, args.interval, args.iterations)
            return 0
        md, page = write_report(args.runs, args.out, args.title)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the way to stop --watch
        return 0
    print(md.read_text(), end="")
    print(f"wrote {md} and {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
