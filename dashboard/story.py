"""The lecture walk-through's sentences, with their numbers taken from the run. Pure: result in, text out.

Each function returns the two or three sentences of one step and what its chart needs (a layer, an image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dashboard.figures import label
from ftbc_core.per_image import ImagePredictions
from ftbc_core.calibration import METHODS
from ftbc_core.experiment import ExperimentResult
from ftbc_core.neuron_lab import NeuronTrace, error_parts, simulate_if_neurons

BIAS_FIRST = tuple(m for m in METHODS if METHODS[m].fits_biases)  # the registry's bias methods, in its order
STEPS = ("One neuron's three errors", "The accuracy gap over T", "Which layers carry it", "The biases FTBC fits",
         "Membrane potentials before and after", "One image FTBC fixes")
PAGES = (("views/neuron_lab.py", "Neuron lab"), ("views/accuracy.py", "Accuracy vs time step"),
         ("views/layers.py", "Layers needing correction"), ("views/biases.py", "Bias trajectories"),
         ("views/membrane.py", "Membrane potentials"), ("views/one_image.py", "One image"))  # each step's full page


def _cap(text: str) -> str:
    """The first letter upper-cased, the rest kept (``FTBC`` stays ``FTBC``)."""
    return text[:1].upper() + text[1:]


def methods_to_contrast(result: ExperimentResult) -> tuple[str, str | None]:
    """``(baseline, correction)``: ``none`` (or the first method) and the first bias method (or another one)."""
    base = "none" if "none" in result.methods else result.methods[0]
    others = [m for m in result.methods if m != base]
    corr = next((m for m in BIAS_FIRST if m in others), others[0] if others else None)
    return base, corr


def neuron_step(timesteps: int) -> tuple[str, NeuronTrace, float]:
    """Three IF neurons over the run's T, one error each: 0.37 θ constant (quantization), the same charge arriving
    in the last quarter of the steps (unevenness), 1.15 θ (clipping). Returns the text, the trace and the target
    0.37 θ for the chart."""
    late = max(1, timesteps // 4)
    arriving = np.zeros(timesteps)
    arriving[-late:] = 0.37 * timesteps / late
    z = np.stack([np.full(timesteps, 0.37), arriving, np.full(timesteps, 1.15)], 1)
    trace = simulate_if_neurons(z, 1.0)
    out = trace.rate[-1]
    quant = error_parts(0.37, 1.0, timesteps, 0.5, float(out[0]))["quantization"]
    uneven = error_parts(0.37, 1.0, timesteps, 0.5, float(out[1]))["unevenness"]
    clip = error_parts(1.15, 1.0, timesteps, 0.5, float(out[2]))["clipping"]
    text = (f"After T = {timesteps} steps an IF neuron can only answer with a multiple of θ/{timesteps}. Neuron 0 "
            f"should output 0.37 θ and ends at {out[0]:.3f} θ: **quantization** error {quant:+.3f} θ. Neuron 1 gets "
            f"the same charge in its last {late} step(s) only and ends at {out[1]:.3f} θ: **unevenness** error "
            f"{uneven:+.3f} θ. Neuron 2, driven at 1.15 θ, fires at most once per step and ends at {out[2]:.3f} θ: "
            f"**clipping** loses {clip:.2f} θ. (Errors are ANN − SNN.)")
    return text, trace, 0.37


def accuracy_step(result: ExperimentResult) -> str:
    base, corr = methods_to_contrast(result)
    t, ann = result.timesteps, result.ann_accuracy
    acc_base = float(result.accuracy[base][-1])
    gap = ann - acc_base
    where = f"{gap:.1f} points below" if gap >= 0 else f"{-gap:.1f} points above it"
    text = (f"The ANN classifies {ann:.1f}% of the {result.n_images} evaluation images correctly. After T = {t} "
            f"steps, the converted SNN with {label(base)} reaches {acc_base:.1f}%: {where}.")
    within = np.flatnonzero(result.accuracy[base] >= ann - 1.0)
    if len(within):
        text += f" It comes within 1 point of the ANN at t = {int(within[0]) + 1}."
    if corr is not None:
        acc_corr = float(result.accuracy[corr][-1])
        closed = acc_corr - acc_base
        if closed > 0 and gap > 0:
            text += (f" {_cap(label(corr))} reaches {acc_corr:.1f}%: it closes {closed:.1f} of the "
                     f"{gap:.1f} points at T = {t}.")
        else:
            text += f" {_cap(label(corr))} reaches {acc_corr:.1f}% ({closed:+.1f} points) at T = {t}."
    return text


def top_layer(result: ExperimentResult) -> str | None:
    """The layer with the largest error before correction at the last step (None without measurements)."""
    base, _ = methods_to_contrast(result)
    meas = result.measurements.get(base)
    if meas is None:
        return None
    return meas.layer_names[int(np.argmax(meas.layer_error("abs")[:, -1]))]


def layers_step(result: ExperimentResult) -> str:
    base, corr = methods_to_contrast(result)
    meas = result.measurements.get(base)
    if meas is None:
        return "This run has no measurements: run it again with measured images to see the layers."
    err = meas.layer_error("abs")[:, -1]
    i, total = int(np.argmax(err)), max(float(err.sum()), 1e-12)
    text = (f"Measured on {meas.n_images} images, layer **{meas.layer_names[i]}** carries the largest error after "
            f"T = {result.timesteps} steps ({err[i]:.3f} activation units, {100 * err[i] / total:.0f}% of the "
            f"summed error of all {len(err)} layers). Errors made early propagate to every later layer.")
    after = result.measurements.get(corr) if corr else None
    if after is not None:
        err2 = after.layer_error("abs")[:, -1]
        text += (f" {_cap(label(corr))} changes the summed error by {100 * (err2.sum() / total - 1):+.0f}% "
                 f"(in {meas.layer_names[i]}: {100 * (err2[i] / max(err[i], 1e-12) - 1):+.0f}%).")
    return text


def biases_step(result: ExperimentResult) -> tuple[str, str | None]:
    """The text and the bias method shown (None when the run fitted no biases)."""
    method = next((m for m in result.methods if result.reports[m].biases), None)
    if method is None:
        return "None of this run's methods fits biases: add FTBC in the sidebar and run again.", None
    report = result.reports[method]
    b = report.biases
    per_step = np.mean([np.abs(v).mean(1) for v in b.values()], axis=0)  # [T]
    per_layer = {n: float(np.abs(v).mean()) for n, v in b.items()}
    top = max(per_layer, key=per_layer.get)
    count = sum(v.size for v in b.values())
    trend = ("the first steps need most correction" if per_step[0] > per_step[-1] else
             "here the later steps get the larger corrections")
    text = (f"{_cap(label(method))} fitted {count:,} biases (one per layer, step and channel) on "
            f"{report.n_images} calibration images in {report.seconds:.1f} s. Their mean |b| is "
            f"{per_step[0]:.3f} at t = 1 and {per_step[-1]:.3f} at t = {len(per_step)}: {trend}. They are largest "
            f"in **{top}** (mean |b| {per_layer[top]:.3f}).")
    return text, method


def firing_share(result: ExperimentResult, method: str, layer: str, t: int) -> float:
    """Fraction of the layer's neurons whose charge reaches θ at step t (from the measured histogram)."""
    meas = result.measurements[method]
    counts = meas.histograms[layer][t - 1]
    centers = (meas.hist_edges[:-1] + meas.hist_edges[1:]) / 2
    return float(counts[centers >= 1].sum() / max(counts.sum(), 1))


def membrane_step(result: ExperimentResult, layer: str) -> str:
    base, corr = methods_to_contrast(result)
    meas = result.measurements[base]
    target = float(np.mean(meas.ann_mean[layer] / meas.theta[layer]))
    before = firing_share(result, base, layer, 1)
    text = (f"In **{layer}** the ANN's mean activation is {target:.2f} θ: on average a neuron should fire on "
            f"{100 * target:.0f}% of the steps. At t = 1, {100 * before:.0f}% of its neurons reach θ with "
            f"{label(base)}")
    if corr is None or result.measurements.get(corr) is None:
        return text + "."
    after = firing_share(result, corr, layer, 1)
    text += f" and {100 * after:.0f}% with {label(corr)}"
    if abs(after - target) < abs(before - target):
        return text + ": the correction moves the charge so the first step fires closer to what it should."
    return text + ": at t = 1 the correction does not bring this layer closer (the histogram shows where it acts)."


@dataclass(frozen=True)
class ImageStory:
    text: str
    index: int | None  # the image to show (one the correction fixes, if any)
    fixed: np.ndarray
    broken: np.ndarray


def image_step(result: ExperimentResult, preds: ImagePredictions, classes: list[str]) -> ImageStory:
    base, corr = methods_to_contrast(result)
    t = result.timesteps
    if corr is None:
        return ImageStory("Compare two methods to see the images one of them fixes.", None, np.array([]), np.array([]))
    fixed, broken = preds.disagreements(base, corr, t)
    n = len(preds.labels)
    seen = f"the {n}" if n >= result.n_images else f"the first {n} of the {result.n_images}"
    text = (f"Of {seen} evaluation images, {label(corr)} fixes {len(fixed)} and breaks "
            f"{len(broken)} at T = {t} (right with one method and wrong with the other).")
    index = int(fixed[0]) if len(fixed) else (int(broken[0]) if len(broken) else None)
    if index is not None:
        y = int(preds.labels[index])
        text += (f" Image {index}, a '{classes[y]}': '{classes[preds.predicted[base][-1, index]]}' with {label(base)}, "
                 f"'{classes[preds.predicted[corr][-1, index]]}' with {label(corr)} after {t} steps.")
    return ImageStory(text, index, fixed, broken)
