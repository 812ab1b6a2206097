"""The report's interactive charts (plotly): top-1 per configuration with its spread over seeds, curves per
configuration (mean over seeds with a ± std band, switchable to the single runs) and each run's training curves.

Each chart is an HTML fragment without plotly.js; scripts/report_page.py inlines plotly.js once, so the page is one
file that opens offline. Hover shows values, drag zooms, a click on a legend entry hides its series.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

PALETTE = qualitative.Plotly  # ten colours; a configuration keeps its colour in every chart
FONT = dict(family="sans-serif", size=13)
CONFIG = {"displaylogo": False, "responsive": True}


@dataclass
class Series:
    """One run's points of one metric: x (epoch or step) -> y."""
    label: str
    points: list[tuple[float, float]]


@dataclass
class Bar:
    label: str
    backbone: str
    mean: float
    std: float | None  # None for one run: no spread to draw
    n: int
    paper: float | None = None  # the published top-1 of its row (ImageNet runs only)
    index: int = 0  # the configuration's place in the report: its colour, the same in every chart


def plotly_js() -> str:
    return get_plotlyjs()


def color(index: int, alpha: float = 1.0) -> str:
    hex_color = PALETTE[index % len(PALETTE)].lstrip("#")
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def fragment(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=CONFIG,
                       default_height=f"{fig.layout.height}px")


def integer_ticks(last: float) -> dict:
    """Axis settings that put ticks on whole numbers only (epochs, steps): 1, 2, 5 x 10^k apart, about ten ticks."""
    span = max(1.0, last)
    step = next(m * 10 ** e for e in range(0, 12) for m in (1, 2, 5) if m * 10 ** e >= span / 10)
    return dict(tickmode="linear", tick0=0, dtick=step, tickformat="d")


def bars_figure(bars: list[Bar]) -> go.Figure | None:
    """Horizontal bars, one per configuration (labels stay horizontal and readable at any count) in its colour,
    the std over seeds as error bars; the published top-1 as a diamond where there is one."""
    bars = [b for b in bars if b.mean is not None]
    if not bars:
        return None
    fig = go.Figure(go.Bar(
        name="ours", orientation="h", y=[b.label for b in bars], x=[b.mean for b in bars], showlegend=False,
        error_x=dict(type="data", array=[b.std or 0.0 for b in bars], visible=True, thickness=1.5, width=6),
        marker_color=[color(b.index, 0.8) for b in bars], texttemplate="%{x:.2f}", textposition="inside",
        insidetextanchor="start",
        customdata=[[f"{b.std:.2f}" if b.std is not None else "—", b.n, b.backbone] for b in bars],
        hovertemplate="%{y} (%{customdata[2]})<br>top-1 %{x:.2f} ± %{customdata[0]} (n=%{customdata[1]})"
                      "<extra></extra>"))
    published = [b for b in bars if b.paper is not None]
    if published:
        fig.add_trace(go.Scatter(
            name="published", mode="markers", y=[b.label for b in published], x=[b.paper for b in published],
            marker=dict(symbol="diamond", size=11, color="black"),
            hovertemplate="%{y}<br>published top-1 %{x:.2f}<extra></extra>"))
    values = [b.mean - (b.std or 0) for b in bars] + [b.paper for b in published]
    high = max([b.mean + (b.std or 0) for b in bars] + [b.paper for b in published])
    fig.update_layout(
        height=140 + 34 * len(bars), font=FONT, template="plotly_white",
        margin=dict(l=10, r=20, t=50, b=50), showlegend=bool(published),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
        xaxis=dict(title="best validation top-1 (%), mean ± std over seeds",
                   range=[max(0.0, min(values) - 5.0), min(100.5, high + 2.0)]),
        yaxis=dict(autorange="reversed", automargin=True))
    return fig


def _mean_band(series: list[Series]):
    """x, mean, lower, upper at every x that all runs reached (a run that stopped early does not pull the mean)."""
    common = sorted(set.intersection(*(set(x for x, _ in s.points) for s in series)))
    by_run = [dict(s.points) for s in series]
    mean, low, high = [], [], []
    for x in common:
        ys = [run[x] for run in by_run]
        m = statistics.fmean(ys)
        sd = statistics.stdev(ys) if len(ys) > 1 else 0.0
        mean.append(m), low.append(m - sd), high.append(m + sd)
    return common, mean, low, high


def curves_figure(groups: list[tuple[str, list[Series]]], *, x_title: str, y_title: str) -> go.Figure | None:
    """Per configuration: the mean over its runs with a ± std band; a button switches to every single run."""
    groups = [(i, label, [s for s in series if s.points]) for i, (label, series) in enumerate(groups)]
    groups = [(i, label, series) for i, label, series in groups if series]
    if not groups:
        return None
    fig = go.Figure()
    mean_view, run_view = [], []
    for i, label, series in groups:
        x, mean, low, high = _mean_band(series)
        n = len(series)
        if n > 1 and x:
            fig.add_trace(go.Scatter(x=x + x[::-1], y=high + low[::-1], mode="lines", fill="toself",
                                     fillcolor=color(i, 0.18),
                                     line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=label,
                                     name=f"{label} ± std"))
            mean_view.append(True), run_view.append(False)
        fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", name=f"{label} (n={n})", legendgroup=label,
                                 line=dict(color=color(i), width=2.5), marker=dict(size=5),
                                 hovertemplate=f"{label}<br>%{{x}}: %{{y:.3g}} (mean of {n})<extra></extra>"))
        mean_view.append(True), run_view.append(False)
        for s in series:
            fig.add_trace(go.Scatter(x=[p[0] for p in s.points], y=[p[1] for p in s.points], mode="lines+markers",
                                     name=s.label, visible=False, line=dict(color=color(i), width=1.5),
                                     marker=dict(size=4), hovertemplate=f"{s.label}<br>%{{x}}: %{{y:.3g}}"
                                                                        "<extra></extra>"))
            mean_view.append(False), run_view.append(True)
    last = max(p[0] for _, _, series in groups for s in series for p in s.points)
    fig.update_layout(
        height=420, font=FONT, template="plotly_white", margin=dict(l=10, r=10, t=60, b=50),
        legend=dict(orientation="h", yanchor="top", y=-0.18, x=0),
        xaxis=dict(title=x_title, **integer_ticks(last)), yaxis=dict(title=y_title, automargin=True),
        updatemenus=[dict(type="buttons", direction="right", x=0, y=1.12, xanchor="left", yanchor="bottom",
                          buttons=[dict(label="mean ± std over seeds", method="update",
                                        args=[{"visible": mean_view}]),
                                   dict(label="single runs", method="update", args=[{"visible": run_view}])])])
    return fig


def run_figure(train: list[dict], val: list[dict], temperature: bool) -> go.Figure | None:
    """One run: training loss and learning rate per step (with the attention temperature when the model has one),
    validation top-1/top-5 per epoch (dashed: the EMA weights)."""
    if not train and not val:
        return None
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.09, specs=[[{}, {"secondary_y": True}, {}]],
                        subplot_titles=("training loss", "learning rate" + (" and temperature" if temperature else ""),
                                        "validation accuracy (%)"))
    for col, key, line in ((1, "loss", "#1f77b4"), (2, "lr", "#7f7f7f")):
        points = [(r["step"], r[key]) for r in train if r.get(key) is not None]
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], name=key, mode="lines",
                                 line=dict(color=line)), row=1, col=col)
    points = [(r["step"], r["temperature"]) for r in train if r.get("temperature") is not None] if temperature else []
    if points:  # the attention temperature, annealed from temperature_init to 1
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], name="temperature",
                                 mode="lines", line=dict(color="#d62728", dash="dot")), row=1, col=2, secondary_y=True)
    for ema in (False, True):
        points = [r for r in val if bool(r.get("ema")) == ema and r.get("top1") is not None]
        for key, line in (("top1", "#2ca02c"), ("top5", "#ff7f0e")):
            if points:
                fig.add_trace(go.Scatter(x=[r["epoch"] + 1 for r in points], y=[r.get(key) for r in points],
                                         name=f"val {key}" + (" (EMA)" if ema else ""), mode="lines+markers",
                                         line=dict(color=line, dash="dash" if ema else "solid")), row=1, col=3)
    steps = max([r["step"] for r in train] or [1])
    epochs = max([r["epoch"] + 1 for r in val] or [1])
    fig.update_xaxes(title_text="step", **integer_ticks(steps), row=1, col=1)
    fig.update_xaxes(title_text="step", **integer_ticks(steps), row=1, col=2)
    fig.update_xaxes(title_text="epoch", **integer_ticks(epochs), row=1, col=3)
    fig.update_layout(height=330, font=FONT, template="plotly_white", margin=dict(l=10, r=10, t=40, b=40),
                      legend=dict(orientation="h", yanchor="top", y=-0.25, x=0))
    return fig
