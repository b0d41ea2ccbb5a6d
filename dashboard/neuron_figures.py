"""Figures of a few neurons of one layer for one image: a raster where every spike is its own mark, each neuron's
rate beside its ANN activation, and one neuron's charge over time. Pure: trace in, plotly Figure out."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.figures import LAYOUT, color, label, step_ticks
from ftbc_core.per_image import LayerTrace

ROW_PX = 22  # height of one neuron's row: a spike mark is 80% of it, so every spike stays visible


def neuron_names(trace: LayerTrace) -> list[str]:
    """``n1234 · c5 · first t=3`` (or ``silent``) for every sampled neuron, in trace order."""
    first = trace.first_spike
    return [f"n{int(n)} · c{int(c)} · " + (f"first t={int(f)}" if f else "silent")
            for n, c, f in zip(trace.neuron_index, trace.channel, first)]


def raster_figure(trace: LayerTrace, order: np.ndarray, method: str) -> go.Figure:
    """Left: one tick per spike (row = neuron, in ``order``); right: each neuron's rate (spikes / T, in θ) next
    to its ANN activation (in θ), which the rate approximates."""
    steps, count = trace.spikes.shape
    row = np.empty(count, dtype=int)
    row[order] = np.arange(count)
    names = neuron_names(trace)
    ticks = [names[i] for i in order]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.68, 0.32], horizontal_spacing=0.02,
                        subplot_titles=("spikes (one mark per spike)", "rate vs ANN activation"))
    t_idx, n_idx = np.nonzero(trace.spikes)
    fig.add_trace(go.Scatter(
        x=t_idx + 1, y=row[n_idx], mode="markers", name="spike", showlegend=False,
        marker=dict(symbol="line-ns-open", size=int(ROW_PX * 0.8),
                    line=dict(width=3, color=color(method) or "#1f77b4")),
        text=[names[i] for i in n_idx], hovertemplate="t=%{x}: %{text} fires<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(y=row, x=trace.ann, orientation="h", name="ANN activation a/θ", marker_color="#111111",
                         hovertemplate="ANN a/θ = %{x:.3f}<extra></extra>"), row=1, col=2)
    fig.add_trace(go.Bar(y=row, x=trace.rate, orientation="h", name=f"{label(method)}: spikes/T",
                         marker_color=color(method) or "#1f77b4", hovertemplate="rate = %{x:.3f}<extra></extra>"),
                  row=1, col=2)
    fig.update_yaxes(tickvals=list(range(count)), ticktext=ticks, autorange="reversed", row=1, col=1)
    fig.update_xaxes(title_text="time step t", range=[0.5, steps + 0.5], row=1, col=1)
    fig.update_xaxes(title_text="fraction of θ", range=[0, 1.05], row=1, col=2)
    fig.update_layout(**{**LAYOUT, "margin": dict(l=170, r=20, t=80, b=50)}, barmode="group", bargap=0.15,
                      height=140 + ROW_PX * count,
                      title=f"{trace.layer}: {count} of {trace.layer_size} neurons ({label(method)})")
    step_ticks(fig, steps)
    return fig


def neuron_charge_figure(trace: LayerTrace, neuron: int, method: str) -> go.Figure:
    """One sampled neuron over t: its charge u[t]/θ with its spikes (top), its running rate against the ANN
    activation it approximates (bottom)."""
    steps = np.arange(1, trace.spikes.shape[0] + 1)
    charge, fired = trace.charge[:, neuron], trace.spikes[:, neuron]
    rate = np.cumsum(fired) / steps
    name = neuron_names(trace)[neuron]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.14,
                        subplot_titles=("charge before firing u[t] / θ", "running rate (spikes so far / t)"))
    fig.add_trace(go.Scatter(x=steps, y=charge, mode="lines+markers", name="u[t] / θ",
                             line=dict(color=color(method))), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps[fired], y=charge[fired], mode="markers", name="spike (fires θ, subtracts θ)",
                             marker=dict(symbol="star", size=13, color="crimson")), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=rate, mode="lines+markers", name="rate", line=dict(color=color(method)),
                             showlegend=False), row=2, col=1)
    fig.add_hline(y=1.0, line=dict(color="crimson", dash="dash"), annotation_text="θ", row=1, col=1)
    fig.add_hline(y=0.0, line=dict(color="black", width=1), row=1, col=1)
    fig.add_hline(y=float(trace.ann[neuron]), line=dict(color="black", dash="dash"),
                  annotation_text=f"ANN a/θ = {trace.ann[neuron]:.3f}", row=2, col=1)
    fig.update_xaxes(title_text="time step t", row=2, col=1)
    fig.update_yaxes(title_text="u[t] / θ", row=1, col=1)
    fig.update_yaxes(title_text="rate (fraction of θ)", row=2, col=1)
    fig.update_layout(**LAYOUT, height=560, title=f"{trace.layer}, {name} ({label(method)})")
    return step_ticks(fig, len(steps))
