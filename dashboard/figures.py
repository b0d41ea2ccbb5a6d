"""Pure figure builders: results in, plotly Figure out. No streamlit here, so every chart is testable headless.

Every figure names its axes with units; time steps are counted from 1 (t = 1 is the output after one step).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ftbc_core.calibration import METHODS, CalibrationReport
from ftbc_core.experiment import ExperimentResult
from ftbc_core.image_trace import ImageTrace
from ftbc_core.neuron_lab import NeuronTrace

COLORS = {"none": "#7f7f7f", "ftbc": "#1f77b4", "ftbc-alpha": "#17becf", "ftbc-exact": "#2ca02c",
          "ftbc-layer": "#9467bd", "ftbc-official": "#8c564b", "cos": "#ff7f0e", "cos-causal": "#e377c2",
          "ftbc-root": "#aec7e8", "file": "#bcbd22"}  # a method missing here gets plotly's next colour
ERROR_AXIS = {"abs": "mean |SNN − ANN| (activation units)",
              "rel": "relative error (× mean ANN activation)",
              "offset": "mean |offset| (spikes)"}
BIAS_AXIS = "mean |b| (membrane-potential units, as θ)"
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=60, b=50), legend=dict(orientation="h", y=-0.2))


def step_ticks(fig: go.Figure, steps: int, first: int = 1) -> go.Figure:
    """Integer ticks on a time-step x axis (about ten of them)."""
    return fig.update_xaxes(tick0=first, dtick=max(1, round(steps / 10)))


def label(method: str) -> str:
    """A method's human label (the registry's), or its name."""
    return METHODS[method].label if method in METHODS else method


def color(method: str) -> str | None:
    return COLORS.get(method)


def accuracy_figure(result: ExperimentResult, x_axis: str = "T") -> go.Figure:
    """Top-1 accuracy after every step, one line per method, the ANN as a dashed horizontal line.

    Args:
        x_axis: ``T`` (counted steps) or ``latency`` (ρ + T: every step an input pays, COS's pre-steps included).
    """
    fig = go.Figure()
    xs_all = []
    for m in result.methods:
        extra = result.reports[m].latency if x_axis == "latency" else 0
        xs = np.arange(1, result.timesteps + 1) + extra
        xs_all.extend([xs[0], xs[-1]])
        fig.add_trace(go.Scatter(x=xs, y=result.accuracy[m], mode="lines+markers", name=label(m),
                                 line=dict(color=color(m)),
                                 hovertemplate="%{x} steps: %{y:.2f}%<extra>" + m + "</extra>"))
    fig.add_trace(go.Scatter(x=[min(xs_all), max(xs_all)], y=[result.ann_accuracy] * 2, mode="lines",
                             name=f"ANN ({result.ann_accuracy:.2f}%)", line=dict(color="black", dash="dash")))
    x_title = "latency ρ + T (time steps)" if x_axis == "latency" else "time steps T"
    fig.update_layout(title=f"{result.model_name}: accuracy vs time steps ({result.n_images} images)",
                      xaxis_title=x_title, yaxis_title="top-1 accuracy (%)", **LAYOUT)
    return step_ticks(fig, max(xs_all) - min(xs_all) + 1, min(xs_all))


def _final_layer_errors(result: ExperimentResult, kind: str) -> dict[str, np.ndarray]:
    """``{method: [L]}`` error per layer after the last step, for methods that recorded measurements."""
    return {m: meas.layer_error(kind)[:, -1] for m, meas in result.measurements.items() if meas is not None}


def layer_error_figure(result: ExperimentResult, kind: str = "abs", sort: bool = True) -> go.Figure:
    """Per-layer conversion error at the last step, before (``none``) and after each correction, as bars.

    Layers are sorted by the error before correction (largest first) when ``sort``, else in forward order.
    """
    errors = _final_layer_errors(result, kind)
    if not errors:
        raise ValueError("this result has no measurements (run with record=True)")
    names = list(next(m for m in result.measurements.values() if m is not None).layer_names)
    ref = errors.get("none", next(iter(errors.values())))
    order = np.argsort(-ref, kind="stable") if sort else np.arange(len(names))
    fig = go.Figure()
    for m, err in errors.items():
        fig.add_trace(go.Bar(x=[names[i] for i in order], y=err[order], name=label(m), marker_color=color(m)))
    fig.update_layout(title=f"Conversion error per layer after T = {result.timesteps} steps", barmode="group",
                      xaxis_title="spiking layer" + (" (sorted by error before correction)" if sort else ""),
                      yaxis_title=ERROR_AXIS[kind], **LAYOUT)
    return fig


def bias_magnitude_figure(result: ExperimentResult) -> go.Figure:
    """Mean |b| over steps and channels, per layer, for every method that fitted biases."""
    fig = go.Figure()
    for m in result.methods:
        biases = result.reports[m].biases
        if biases:
            names = list(biases)
            fig.add_trace(go.Bar(x=names, y=[float(np.abs(biases[n]).mean()) for n in names], name=label(m),
                                 marker_color=color(m)))
    fig.update_layout(title="Bias magnitude per layer", barmode="group", xaxis_title="spiking layer (forward order)",
                      yaxis_title=BIAS_AXIS, **LAYOUT)
    return fig


def layer_time_heatmap(result: ExperimentResult, method: str, quantity: str = "error", kind: str = "abs") -> go.Figure:
    """Layers x time steps: conversion error (``quantity="error"``) or mean |b[t]| (``"bias"``) of one method."""
    if quantity == "error":
        meas = result.measurements.get(method)
        if meas is None:
            raise ValueError(f"method {method!r} has no measurements")
        names, z, unit = list(meas.layer_names), meas.layer_error(kind), ERROR_AXIS[kind]
    elif quantity == "bias":
        biases = result.reports[method].biases
        if not biases:
            raise ValueError(f"method {method!r} fitted no biases")
        names = list(biases)
        z, unit = np.stack([np.abs(biases[n]).mean(1) for n in names]), BIAS_AXIS
    else:
        raise ValueError(f"quantity must be 'error' or 'bias', got {quantity!r}")
    fig = go.Figure(go.Heatmap(z=z, x=np.arange(1, z.shape[1] + 1), y=names, colorscale="Viridis",
                               colorbar=dict(title=unit.split(" (")[0])))
    fig.update_layout(title=f"{label(method)}: {unit} per layer and step", xaxis_title="time step t",
                      yaxis_title="spiking layer", yaxis_autorange="reversed", **LAYOUT)
    return step_ticks(fig, z.shape[1])


def bias_heatmap(report: CalibrationReport, layer: str) -> go.Figure:
    """Channels x time steps of ``b[t, c]``, diverging colours centred on 0."""
    b = np.asarray(report.biases[layer])  # [T, C]
    fig = go.Figure(go.Heatmap(z=b.T, x=np.arange(1, b.shape[0] + 1), y=np.arange(b.shape[1]), colorscale="RdBu_r",
                               zmid=0.0, colorbar=dict(title="b")))
    fig.update_layout(title=f"{layer}: bias b[t, c] ({label(report.method)})", xaxis_title="time step t",
                      yaxis_title="channel c", **LAYOUT)
    return step_ticks(fig, b.shape[0])


def bias_lines(report: CalibrationReport, layer: str, channels: list[int]) -> go.Figure:
    """``b[t, c]`` over t for the chosen channels."""
    b = np.asarray(report.biases[layer])
    fig = go.Figure()
    for c in channels:
        fig.add_trace(go.Scatter(x=np.arange(1, b.shape[0] + 1), y=b[:, c], mode="lines+markers", name=f"channel {c}"))
    fig.add_hline(y=0.0, line=dict(color="black", width=1))
    fig.update_layout(title=f"{layer}: bias trajectories", xaxis_title="time step t",
                      yaxis_title="bias b[t, c] (membrane-potential units)", **LAYOUT)
    return step_ticks(fig, b.shape[0])


def convergence_figure(result: ExperimentResult, methods: list[str]) -> go.Figure:
    """Mean |Δb| per calibration batch (``CalibrationReport.bias_change``), one line per method, log y axis:
    a fit that converges decays."""
    fig = go.Figure()
    for m in methods:
        change = np.asarray(result.reports[m].bias_change, dtype=float)
        fig.add_trace(go.Scatter(x=np.arange(1, len(change) + 1), y=change, mode="lines+markers", name=label(m),
                                 line=dict(color=color(m)),
                                 hovertemplate="batch %{x}: %{y:.4g}<extra>" + m + "</extra>"))
    fig.update_layout(title="Convergence: how much each calibration batch moved the biases",
                      xaxis_title="calibration batch k", yaxis_title="mean |Δb| (membrane-potential units)",
                      yaxis_type="log", **LAYOUT)
    return step_ticks(fig, max((len(result.reports[m].bias_change) for m in methods), default=1))


def _histogram_traces(result: ExperimentResult, layer: str, t: int, methods: list[str]) -> list[go.Bar]:
    traces = []
    for m in methods:
        meas = result.measurements.get(m)
        if meas is None:
            continue
        counts = meas.histograms[layer][t - 1]
        edges = meas.hist_edges
        traces.append(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts / max(counts.sum(), 1), width=np.diff(edges),
                             name=label(m), marker_color=color(m), opacity=0.6))
    return traces


def _mark_zero_and_theta(fig: go.Figure) -> None:
    fig.add_vline(x=0.0, line=dict(color="black", dash="dot"), annotation_text="0")
    fig.add_vline(x=1.0, line=dict(color="crimson", dash="dash"), annotation_text="θ (fires)")


def membrane_histogram(result: ExperimentResult, layer: str, t: int, methods: list[str]) -> go.Figure:
    """Distribution of the charge u[t]/θ of one layer at step t (1-based), methods overlaid."""
    fig = go.Figure(_histogram_traces(result, layer, t, methods))
    _mark_zero_and_theta(fig)
    fig.update_layout(title=f"{layer}: membrane potential before firing at t = {t}", barmode="overlay",
                      xaxis_title="u[t] / θ (charge before firing, in thresholds)",
                      yaxis_title="fraction of neurons", **LAYOUT)
    return fig


def membrane_animation(result: ExperimentResult, layer: str, methods: list[str]) -> go.Figure:
    """:func:`membrane_histogram` with one animation frame per step (play button and slider)."""
    steps = list(range(1, result.timesteps + 1))
    fig = membrane_histogram(result, layer, 1, methods)
    fig.frames = [go.Frame(data=_histogram_traces(result, layer, t, methods), name=str(t),
                           layout=go.Layout(title_text=f"{layer}: membrane potential before firing at t = {t}"))
                  for t in steps]
    ymax = max((float(tr.y.max()) for f in fig.frames for tr in f.data), default=1.0)
    fig.update_layout(
        yaxis_range=[0, ymax * 1.05],
        updatemenus=[dict(type="buttons", x=0, y=1.15, buttons=[
            dict(label="▶ play", method="animate", args=[None, dict(frame=dict(duration=400), fromcurrent=True)])])],
        sliders=[dict(currentvalue=dict(prefix="t = "), steps=[
            dict(label=str(t), method="animate", args=[[str(t)], dict(mode="immediate")]) for t in steps])])
    return fig


def image_pixels(image: np.ndarray, size: int = 256) -> np.ndarray:
    """One uint8 image ``[H, W, C]`` enlarged by whole pixels to about ``size`` px (sharp squares, not blurred),
    for ``st.image``: a picture, far lighter for the browser than a plotly chart. C = 1 becomes ``[H', W']``."""
    img = np.asarray(image)
    if img.ndim != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image [H, W, C], got {img.dtype} {img.shape}")
    k = max(1, size // max(img.shape[:2]))
    big = img.repeat(k, axis=0).repeat(k, axis=1)
    return big[..., 0] if big.shape[2] == 1 else big


def probability_figure(traces: dict[str, ImageTrace], true_class: int, class_names: list[str]) -> go.Figure:
    """Probability of the true class after every step, per method; hover shows the predicted class."""
    fig = go.Figure()
    for m, tr in traces.items():
        steps = np.arange(1, tr.probabilities.shape[0] + 1)
        pred = [class_names[k] for k in tr.predictions]
        fig.add_trace(go.Scatter(x=steps, y=tr.probabilities[:, true_class], mode="lines+markers", name=label(m),
                                 line=dict(color=color(m)), text=pred,
                                 hovertemplate="t=%{x}: p(true)=%{y:.3f}, predicted %{text}<extra></extra>"))
    fig.update_layout(title=f"Probability of the true class '{class_names[true_class]}' over time",
                      xaxis_title="time step t", yaxis_title="softmax probability of the true class",
                      yaxis_range=[0, 1.02], **LAYOUT)
    return step_ticks(fig, max((tr.probabilities.shape[0] for tr in traces.values()), default=1))


def neuron_figure(trace: NeuronTrace, ann_value: float, qcfs: float) -> go.Figure:
    """Two panels over t: membrane potential with spikes, and the running output rate vs the ANN and QCFS values."""
    steps = np.arange(1, trace.u.shape[0] + 1)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("membrane potential", "output rate (running mean of spikes)"))
    for i in range(trace.u.shape[1]):
        name = f"neuron {i}"
        fig.add_trace(go.Scatter(x=steps, y=trace.u[:, i], mode="lines+markers", name=f"{name}: u (before firing)",
                                 legendgroup=name), row=1, col=1)
        fired = trace.spikes[:, i] > 0
        fig.add_trace(go.Scatter(x=steps[fired], y=trace.u[fired, i], mode="markers", legendgroup=name,
                                 marker=dict(symbol="star", size=12, color="crimson"), name=f"{name}: spike",
                                 showlegend=i == 0), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=trace.rate[:, i], mode="lines+markers", name=f"{name}: rate",
                                 legendgroup=name, showlegend=False), row=2, col=1)
    fig.add_hline(y=trace.theta, line=dict(color="crimson", dash="dash"), annotation_text="θ", row=1, col=1)
    fig.add_hline(y=0.0, line=dict(color="black", width=1), row=1, col=1)
    fig.add_hline(y=ann_value, line=dict(color="black", dash="dash"), annotation_text="ANN clamp(z, 0, θ)",
                  row=2, col=1)
    fig.add_hline(y=qcfs, line=dict(color="green", dash="dot"), annotation_text="QCFS", row=2, col=1)
    fig.update_xaxes(title_text="time step t", row=2, col=1)
    fig.update_yaxes(title_text="u[t] (input units)", row=1, col=1)
    fig.update_yaxes(title_text="rate (input units)", row=2, col=1)
    fig.update_layout(height=620, template="plotly_white", margin=dict(l=60, r=20, t=40, b=40))
    return step_ticks(fig, len(steps))
