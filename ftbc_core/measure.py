"""Opt-in measurements of a simulation: conversion error per layer/channel/step, membrane histograms, spike rates.

A :class:`Recorder` is a context manager that attaches step hooks to the SNN's IF layers and forward hooks to the
ANN's activations, and removes them on exit; without one nothing is stored. Histograms use fixed bins of
``u/θ`` so no membrane potential is kept. Results are plain numpy data (:class:`Measurements`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from .convert import ActivationProbe, clip_to_threshold
from .neuron import IFNeuron, StepHook, channel_view
from .snn import SpikingNetwork

__all__ = ["Recorder", "Measurements", "HIST_EDGES"]

#: Histogram bin edges of the charge ``u[t]/θ`` (outside values are counted in the first/last bin).
HIST_EDGES = np.round(np.linspace(-1.5, 2.5, 41), 6)
HIST_BINS, HIST_LOW = len(HIST_EDGES) - 1, float(HIST_EDGES[0])
HIST_SCALE = HIST_BINS / float(HIST_EDGES[-1] - HIST_EDGES[0])  # bins per unit of u/θ (10)


@dataclass(frozen=True)
class Measurements:
    """Per layer (in forward order) and step ``t = 1..T``; arrays are float64 sums turned into means.

    Attributes:
        abs_error: ``{layer: [T, C]}`` mean |SNN running mean − ANN activation| per channel (activation units).
        rel_error: ``{layer: [T, C]}`` abs_error divided by the channel's mean ANN activation.
        offset_spikes: ``{layer: [T, C]}`` mean signed offset (spikes fired so far − ANN activation·t/θ).
        histograms: ``{layer: [T, bins]}`` counts of ``u[t]/θ`` over :data:`HIST_EDGES`.
        spike_rate: ``{layer: [T]}`` fraction of neurons that fire at step t.
        ann_mean: ``{layer: [C]}`` mean ANN activation (clipped to [0, θ]).
        theta: ``{layer: [C]}`` the IF thresholds θ (per channel, a per-layer θ repeated).
    """

    layer_names: tuple[str, ...]
    timesteps: int
    n_images: int
    abs_error: dict[str, np.ndarray]
    rel_error: dict[str, np.ndarray]
    offset_spikes: dict[str, np.ndarray]
    histograms: dict[str, np.ndarray]
    spike_rate: dict[str, np.ndarray]
    ann_mean: dict[str, np.ndarray]
    theta: dict[str, np.ndarray]
    hist_edges: np.ndarray = field(default_factory=lambda: HIST_EDGES.copy())

    def truncated(self, timesteps: int) -> "Measurements":
        """The same measurements for the first ``timesteps`` steps (valid because everything is causal)."""
        if not 1 <= timesteps <= self.timesteps:
            raise ValueError(f"can only truncate to 1..{self.timesteps} steps, got {timesteps}")
        cut = lambda d: {k: v[:timesteps] for k, v in d.items()}  # noqa: E731
        return replace(self, timesteps=timesteps, abs_error=cut(self.abs_error), rel_error=cut(self.rel_error),
                       offset_spikes=cut(self.offset_spikes), histograms=cut(self.histograms),
                       spike_rate=cut(self.spike_rate))

    def signed_error(self) -> dict[str, np.ndarray]:
        """``{layer: [T, C]}`` mean signed error of the running mean at step t, SNN − ANN in activation units:
        ``offset · θ / t`` (the part of the error a bias per channel and step can cancel)."""
        steps = np.arange(1, self.timesteps + 1, dtype=np.float64)[:, None]
        return {n: self.offset_spikes[n] * self.theta[n][None, :] / steps for n in self.layer_names}

    def layer_error(self, kind: str = "abs") -> np.ndarray:
        """``[L, T]`` error averaged over channels; ``kind`` is ``abs``, ``rel`` or ``offset`` (|mean offset|)."""
        source = {"abs": self.abs_error, "rel": self.rel_error, "offset": self.offset_spikes}[kind]
        rows = [np.abs(source[n]).mean(1) if kind == "offset" else source[n].mean(1) for n in self.layer_names]
        return np.stack(rows)

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per layer, step and channel."""
        frames = []
        for li, name in enumerate(self.layer_names):
            t_count, c_count = self.abs_error[name].shape
            t_idx, c_idx = np.meshgrid(np.arange(1, t_count + 1), np.arange(c_count), indexing="ij")
            frames.append(pd.DataFrame({
                "layer": name, "layer_index": li, "t": t_idx.ravel(), "channel": c_idx.ravel(),
                "abs_error": self.abs_error[name].ravel(), "rel_error": self.rel_error[name].ravel(),
                "offset_spikes": self.offset_spikes[name].ravel(),
            }))
        return pd.concat(frames, ignore_index=True)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """All elements of a dense tensor as 1-D in memory order (a view, also for channels-last; order is lost)."""
    if x.is_contiguous():
        return x.view(-1)
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))
    return x.permute(order).reshape(-1)


class Recorder:
    """Collect :class:`Measurements` while ``snn.simulate`` runs on batches whose ANN activations it saw.

    Usage::

        rec = Recorder(snn, ann, T)
        for x in batches:
            rec.observe_ann(x)                              # the ANN's activations of this batch
            snn.simulate(x, T + snn.latency, hooks=rec.hooks)
        m = rec.result()
    """

    def __init__(self, snn: SpikingNetwork, ann: nn.Module, timesteps: int) -> None:
        self.snn, self.ann, self.timesteps = snn, ann, int(timesteps)
        self.latency = int(getattr(snn, "latency", 0))
        self._probe = ActivationProbe(ann)  # traced once: observe_ann runs on every measured batch
        names = self._probe.names
        if names != snn.layer_names:
            raise ValueError("the ANN and the SNN do not pair up layer by layer")
        self.names = names
        self._acts: dict[str, torch.Tensor] = {}
        self._fired: dict[str, torch.Tensor] = {}  # spikes so far of the batch being simulated
        self._sums: dict[str, dict[str, torch.Tensor]] = {}
        self._n_images = 0
        self._handles: list = []

    @property
    def hooks(self) -> dict[IFNeuron, tuple[StepHook, ...]]:
        """The step observers to pass to ``snn.simulate(..., hooks=rec.hooks)`` for a measured batch."""
        return {neuron: (self._on_step,) for neuron in self.snn.neurons}

    # -- collection ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def observe_ann(self, x: torch.Tensor) -> None:
        """Run the ANN on ``x`` and keep its activations (clipped to [0, θ]) for the next simulation."""
        thetas = {n: neuron.theta for n, neuron in zip(self.names, self.snn.neurons)}
        self._probe.observe(x, lambda n, out: self._acts.__setitem__(n, clip_to_threshold(out, thetas[n])))
        self._n_images += x.shape[0]

    def _buffers(self, name: str, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Float64 running sums of one layer (spike and ANN sums per channel, so offsets follow exactly)."""
        if name not in self._sums:
            t, c, device = self.timesteps, self._acts[name].shape[1], theta.device
            z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
            self._sums[name] = {"abs": z(t, c), "spikes": z(t, c), "ann": z(c), "n_pos": z(1), "n_neur": z(1),
                                "hist": torch.zeros(t, HIST_BINS, dtype=torch.int64, device=device),
                                "theta": theta.double().expand(c).clone()}
        return self._sums[name]

    @torch.no_grad()
    def _on_step(self, neuron: IFNeuron, t: int, u: torch.Tensor, spikes: torch.Tensor) -> None:
        """Add step ``t`` of one layer: ``u`` (charge before firing) and ``spikes`` are ``[B, C, ...]``.

        Per channel and step it sums |Σ_τ≤t s[τ] − (t+1)·a| (the error of the running mean times t+1), the
        spikes (0 or θ, summed exactly in float64: spike rates and offsets come from these in :meth:`result`)
        and the histogram of u/θ.
        """
        t -= self.latency
        if t < 0:
            return
        name = neuron.name
        a = self._acts.get(name)
        if a is None or a.shape != u.shape:
            raise RuntimeError(f"Recorder: no ANN activations for layer {name!r} of this batch (call observe_ann)")
        if t == 0 and a.stride() != u.stride():  # e.g. a channels-last SNN: same layout, no strided arithmetic
            a = self._acts[name] = torch.empty_like(u).copy_(a)
        fired = spikes.clone() if t == 0 else self._fired[name].add_(spikes)  # Σ_τ≤t s[τ], in place
        self._fired[name] = fired
        s = self._buffers(name, neuron.theta)
        dims = (0, *range(2, u.dim()))  # every axis but the channel
        s["abs"][t] += torch.sub(fired, a, alpha=t + 1).abs_().sum(dims)
        s["spikes"][t] += spikes.sum(dims, dtype=torch.float64)
        # bin i = floor((u/θ − first edge) · bins per unit): [HIST_EDGES[i], HIST_EDGES[i+1]) up to float32
        # rounding (torch.histc's arithmetic); values beyond the edges go to the first/last bin
        bins = (u / channel_view(neuron.theta, u.dim())).sub_(HIST_LOW).mul_(HIST_SCALE).clamp_(0, HIST_BINS - 1)
        s["hist"][t] += torch.bincount(_flat(bins.to(torch.int8)), minlength=HIST_BINS)  # int8: fast cast
        if t == 0:
            s["ann"] += a.sum(dims, dtype=torch.float64)
            s["n_pos"] += a.numel() / a.shape[1]
            s["n_neur"] += a.numel()

    def result(self) -> Measurements:
        """The means over everything observed so far."""
        missing = [n for n in self.names if n not in self._sums]
        if missing:
            raise RuntimeError(f"Recorder saw no simulation of layers {missing[:3]}")
        out = {k: {} for k in ("abs", "rel", "off", "hist", "rate", "ann", "theta")}
        for name in self.names:
            s = {k: v.cpu().numpy() for k, v in self._sums[name].items()}
            n_pos, n_neur = float(s["n_pos"][0]), float(s["n_neur"][0])
            ann_mean = s["ann"] / n_pos
            steps = np.arange(1, self.timesteps + 1, dtype=np.float64)[:, None]
            out["abs"][name] = s["abs"] / (steps * n_pos)
            out["rel"][name] = out["abs"][name] / np.maximum(ann_mean, 1e-8)[None, :]
            # offset in spikes: (spikes so far − (t+1)·ANN activation) / θ, summed over every batch
            out["off"][name] = (np.cumsum(s["spikes"], 0) - steps * s["ann"][None, :]) / (s["theta"][None, :] * n_pos)
            out["hist"][name] = s["hist"].astype(np.float64)
            out["rate"][name] = (s["spikes"] / s["theta"][None, :]).sum(1) / n_neur
            out["ann"][name] = ann_mean
            out["theta"][name] = s["theta"]
        return Measurements(tuple(self.names), self.timesteps, self._n_images, out["abs"], out["rel"], out["off"],
                            out["hist"], out["rate"], out["ann"], out["theta"])
