"""The report's HTML page (scripts/report.py): tables, interactive charts and run details in one file.

plotly.js is inlined once at the top, so the page opens offline and from a mail attachment; nothing is fetched.
A configuration's full settings are in the title (hover) of its label and in a <details> block (one click).
"""
from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

import report_charts as charts
from train import dashboard

if TYPE_CHECKING:
    from report import Group, Report

STYLE = """
body{font-family:sans-serif;margin:1.5em 2em;color:#222;max-width:1500px}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:90%}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#eee;position:sticky;top:0}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa}details>summary{cursor:pointer}
pre.config{font-size:85%;background:#f6f6f6;padding:6px;margin:4px 0;text-align:left}
.note{color:#555;font-size:90%}code{font-size:90%}
"""


def _table(rows: list[dict[str, str]], first_cell=None) -> str:
    """An HTML table; `first_cell(index, text)` may render the first column (the configuration's details)."""
    if not rows:
        return "<p class='note'>Nothing yet.</p>"
    header = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = []
    for i, row in enumerate(rows):
        cells = list(row.values())
        first = first_cell(i, cells[0]) if first_cell else html.escape(cells[0])
        body.append(f"<tr><td>{first}</td>" + "".join(f"<td>{html.escape(v)}</td>" for v in cells[1:]) + "</tr>")
    return f"<div class='scroll'><table><tr>{header}</tr>{''.join(body)}</table></div>"


def _config_text(group: Group) -> str:
    return "\n".join(f"{k}: {v}" for k, v in sorted(group.configuration.items()))


def _config_cell(group: Group) -> str:
    """The short label; its full configuration on hover (title) and on click (details)."""
    text = _config_text(group)
    return (f"<details><summary title='{html.escape(text, quote=True)}'>{html.escape(group.label)}</summary>"
            f"<pre class='config'>{html.escape(text)}</pre></details>")


def _chart(fig, div_id: str, caption: str) -> str:
    return f"<figure>{charts.fragment(fig, div_id)}<figcaption class='note'>{caption}</figcaption></figure>" \
        if fig is not None else ""


def _bars(groups: list[Group]) -> list[charts.Bar]:
    out = []
    for i, g in enumerate(groups):
        if g.mean("best_top1") is None:
            continue
        row = dashboard.paper_row(g.runs[0].config)
        out.append(charts.Bar(g.label, g.backbone, g.mean("best_top1"), g.std("best_top1"),
                              len(g.metrics["best_top1"]), row.top1 if row else None, i))
    return out


def _series(groups: list[Group], kind: str, key: str, x) -> list[tuple[str, list[charts.Series]]]:
    """Per group, one series per run: (x(record), record[key]) of its plain (not EMA) records of that kind."""
    out = []
    for g in groups:
        series = [charts.Series(run.label, [(x(r), r[key]) for r in (run.train if kind == "train" else run.val)
                                            if not r.get("ema") and r.get(key) is not None]) for run in g.runs]
        out.append((g.label, series))
    return out


def _reproduction(report: Report) -> str:
    rows = report.reproduction
    ours = [r for r in rows if r["Ours"] != "not run yet"]
    explain = ("Each published ImageNet row (models/published.py) beside our configurations of the same model "
               "trained on ImageNet (<code>data.name</code> starting with <code>imagenet</code>): mean ± std of the "
               "best top-1 over seeds and the difference to the published top-1.")
    if not ours:
        return (f"<h2>Reproduction status</h2><p class='note'>No ImageNet run in this report, so no row is compared. "
                f"{explain}</p><details><summary>The published rows</summary>{_table(rows)}</details>")
    return f"<h2>Reproduction status</h2><p class='note'>{explain}</p>{_table(rows)}"


def html_page(report: Report, refresh_s: float | None = None) -> str:
    groups, runs = report.groups, report.runs
    by_label = {g.label: g for g in groups}
    sections = [
        f"<p class='note'>{len(runs)} run(s) in {len(groups)} configuration(s); written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
        + (f", rewritten as the runs progress (this page reloads every {refresh_s:g} s)" if refresh_s else "")
        + ". Hover a chart for values, drag to zoom, click a legend entry to hide it.</p>",
        "<h2>Configurations (mean ± std over seeds)</h2>"
        "<p class='note'>Labels name the model and only the settings that differ; click one for its full "
        "configuration.</p>"
        + _table(report.group_rows, lambda i, text: _config_cell(by_label[text]) if text in by_label
                 else html.escape(text)),
        _chart(charts.bars_figure(_bars(groups)), "top1-bars",
               "Best validation top-1 per configuration: mean over seeds, the error bar one standard deviation "
               "(none for a single run)."),
        _reproduction(report),
        "<h2>Curves</h2>",
        _chart(charts.curves_figure(_series(groups, "val", "top1", lambda r: r["epoch"] + 1), x_title="epoch",
                                    y_title="validation top-1 (%)"), "val-top1",
               "Validation top-1 per epoch: the mean over a configuration's seeds with a band of ± one standard "
               "deviation; the buttons switch to the single runs."),
        _chart(charts.curves_figure(_series(groups, "train", "loss", lambda r: r["step"]), x_title="step",
                                    y_title="training loss"), "train-loss",
               "Training loss per logged step, mean over seeds ± std, or the single runs."),
        "<h2>Runs</h2>" + _table(report.run_rows),
        "<h2>Run details</h2>",
    ]
    for i, run in enumerate(runs):
        fig = charts.run_figure(run.train, run.val, dashboard.has_temperature(run.config))
        note = f"<p class='note'>{run.bad_lines} unreadable line(s) in metrics.jsonl skipped.</p>" \
            if run.bad_lines else ""
        if run.skipped:
            items = "".join(f"<li><code>{html.escape(p)}</code></li>" for p in run.skipped)
            note += f"<p>{len(run.skipped)} unreadable image(s) skipped (skipped_images.txt):</p><ul>{items}</ul>"
        body = charts.fragment(fig, f"run-{i}") if fig is not None else "<p class='note'>No metrics yet.</p>"
        sections.append(f"<h3>{html.escape(run.label)}</h3><p class='note'><code>{html.escape(str(run.path))}</code>"
                        f"</p>{body}{note}")
    refresh = f"<meta http-equiv='refresh' content='{refresh_s:g}'>" if refresh_s else ""
    title = html.escape(report.title)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>{refresh}<title>{title}</title>"
            f"<style>{STYLE}</style><script>{charts.plotly_js()}</script></head>"
            f"<body><h1>{title}</h1>{''.join(sections)}</body></html>\n")
