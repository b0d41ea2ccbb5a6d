"""Several runs side by side: accuracy curves overlaid (on the T or the latency axis), per-layer errors overlaid,
and the differences in a table. Pure: ``[(label, result), ...]`` in, plotly Figure or DataFrame out.

Colour says the method, the line style says the run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.figures import ERROR_AXIS, LAYOUT, color, label, step_ticks
from ftbc_core.experiment import ExperimentResult

DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
Runs = list[tuple[str, ExperimentResult]]


def _curves(runs: Runs, methods: list[str] | None):
    for i, (name, result) in enumerate(runs):
        for m in result.methods:
            if methods is None or m in methods:
                yield i, name, result, m


def latency_steps(result: ExperimentResult, method: str) -> np.ndarray:
    """``[T]`` steps an input has paid after t counted steps: ρ + t (COS), t otherwise."""
    return np.arange(1, result.timesteps + 1) + result.reports[method].latency


def compare_accuracy_figure(runs: Runs, x_axis: str = "T", methods: list[str] | None = None) -> go.Figure:
    """Every run's accuracy curves (one per method), each run's ANN accuracy as a thin dashed line."""
    fig = go.Figure()
    xs_all = [1]
    for i, name, result, m in _curves(runs, methods):
        xs = latency_steps(result, m) if x_axis == "latency" else np.arange(1, result.timesteps + 1)
        xs_all.extend([int(xs[0]), int(xs[-1])])
        fig.add_trace(go.Scatter(x=xs, y=result.accuracy[m], mode="lines+markers", name=f"{name}: {label(m)}",
                                 line=dict(color=color(m), dash=DASHES[i % len(DASHES)]),
                                 hovertemplate="%{x} steps: %{y:.2f}%<extra>" + f"{name}: {m}" + "</extra>"))
    for i, (name, result) in enumerate(runs):
        fig.add_hline(y=result.ann_accuracy, line=dict(color="black", width=1, dash=DASHES[i % len(DASHES)]),
                      annotation_text=f"ANN {result.ann_accuracy:.2f}%" if i == 0 or result.ann_accuracy !=
                      runs[0][1].ann_accuracy else None)
    x_title = "latency ρ + T (time steps an input pays)" if x_axis == "latency" else "time steps T"
    fig.update_layout(title="Accuracy vs time steps, runs compared", xaxis_title=x_title,
                      yaxis_title="top-1 accuracy (%)", **LAYOUT)
    return step_ticks(fig, max(xs_all) - min(xs_all) + 1, min(xs_all))


def compare_layer_figure(runs: Runs, kind: str = "abs", methods: list[str] | None = None) -> go.Figure:
    """Every run's per-layer error after its last step (one line per run and method, layers in forward order)."""
    fig = go.Figure()
    order: list[str] = []
    for i, name, result, m in _curves(runs, methods):
        meas = result.measurements.get(m)
        if meas is None:
            continue
        order += [n for n in meas.layer_names if n not in order]
        fig.add_trace(go.Scatter(x=list(meas.layer_names), y=meas.layer_error(kind)[:, -1], mode="lines+markers",
                                 name=f"{name}: {label(m)}", line=dict(color=color(m), dash=DASHES[i % len(DASHES)])))
    fig.update_xaxes(categoryorder="array", categoryarray=order)
    fig.update_layout(title="Conversion error per layer after each run's last step",
                      xaxis_title="spiking layer (forward order)", yaxis_title=ERROR_AXIS[kind], **LAYOUT)
    return fig


def common_latency(runs: Runs, methods: list[str] | None = None) -> int | None:
    """The largest latency every compared curve reaches (None if some curve starts after another ends)."""
    spans = [latency_steps(r, m)[[0, -1]] for _, _, r, m in _curves(runs, methods)]
    if not spans:
        return None
    common = min(int(s[1]) for s in spans)
    return common if all(int(s[0]) <= common for s in spans) else None


def compare_table(runs: Runs, methods: list[str] | None = None) -> pd.DataFrame:
    """One row per run and method: T, latency, accuracy at T, gap to the ANN, the change from the first run's same
    method, the accuracy at the latency every curve reaches, and the mean per-layer error at T."""
    equal = common_latency(runs, methods)
    rows, first = [], {}
    for _, name, result, m in _curves(runs, methods):
        acc = float(result.accuracy[m][-1])
        first.setdefault(m, acc)
        lat = latency_steps(result, m)
        meas = result.measurements.get(m)
        row = {"run": name, "method": label(m), "T": result.timesteps, "latency": int(lat[-1]),
               "ANN (%)": result.ann_accuracy, "accuracy at T (%)": acc,
               "gap to ANN (points)": result.ann_accuracy - acc, "vs first run (points)": acc - first[m]}
        if equal is not None:
            row[f"accuracy at latency {equal} (%)"] = float(result.accuracy[m][equal - int(lat[0])])
        row["mean layer error at T"] = float(meas.layer_error("abs")[:, -1].mean()) if meas is not None else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
