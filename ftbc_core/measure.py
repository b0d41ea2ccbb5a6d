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

from .models import activation_modules
from .neuron import IFNeuron, channel_view
from .snn import SpikingNetwork

__all__ = ["Recorder", "Measurements", "HIST_EDGES"]

#: Histogram bin edges of the charge ``u[t]/θ`` (outside values are counted in the first/last bin).
HIST_EDGES = np.round(np.linspace(-1.5, 2.5, 41), 6)


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
    hist_edges: np.ndarray = field(default_factory=lambda: HIST_EDGES.copy())

    def truncated(self, timesteps: int) -> "Measurements":
        """The same measurements for the first ``timesteps`` steps (valid because everything is causal)."""
        if not 1 <= timesteps <= self.timesteps:
            raise ValueError(f"can only truncate to 1..{self.timesteps} steps, got {timesteps}")
        cut = lambda d: {k: v[:timesteps] for k, v in d.items()}  # noqa: E731
        return replace(self, timesteps=timesteps, abs_error=cut(self.abs_error), rel_error=cut(self.rel_error),
                       offset_spikes=cut(self.offset_spikes), histograms=cut(self.histograms),
                       spike_rate=cut(self.spike_rate))

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


class Recorder:
    """Collect :class:`Measurements` while ``snn.simulate`` runs on batches whose ANN activations it saw.

    Usage::

        with Recorder(snn, ann, T) as rec:
            for x in batches:
                rec.observe_ann(x)          # one ANN forward: the reference activations of this batch
                snn.simulate(x, T + snn.latency)
        m = rec.result()
    """

    def __init__(self, snn: SpikingNetwork, ann: nn.Module, timesteps: int) -> None:
        self.snn, self.ann, self.timesteps = snn, ann, int(timesteps)
        self.latency = int(getattr(snn, "latency", 0))
        names = [n for n, _ in activation_modules(ann)]
        if names != snn.layer_names:
            raise ValueError("the ANN and the SNN do not pair up layer by layer")
        self.names = names
        self._acts: dict[str, torch.Tensor] = {}
        self._count: dict[str, torch.Tensor] = {}
        self._sums: dict[str, dict[str, torch.Tensor]] = {}
        self._n_images = 0
        self._handles: list = []
        self._edges = torch.tensor(HIST_EDGES, dtype=torch.float32)

    # -- context -------------------------------------------------------------------------------------------
    def __enter__(self) -> "Recorder":
        for neuron in self.snn.neurons:
            neuron.step_hooks.append(self._on_step)
        return self

    def __exit__(self, *exc) -> None:
        for neuron in self.snn.neurons:
            if self._on_step in neuron.step_hooks:
                neuron.step_hooks.remove(self._on_step)

    # -- collection ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def observe_ann(self, x: torch.Tensor) -> None:
        """Run the ANN on ``x`` and keep its activations (clipped to [0, θ]) for the next simulation."""
        thetas = {n: neuron.theta for n, neuron in zip(self.names, self.snn.neurons)}
        acts = dict(activation_modules(self.ann))

        def hook_for(name: str):
            def hook(_m, _i, out):
                theta = channel_view(thetas[name].to(out.device), out.dim())
                self._acts[name] = torch.minimum(out.float().clamp_min(0), theta)

            return hook

        handles = [acts[n].register_forward_hook(hook_for(n)) for n in self.names]
        try:
            self.ann.eval()
            self.ann(x)
        finally:
            for h in handles:
                h.remove()
        self._n_images += x.shape[0]

    def _buffers(self, name: str, channels: int, device) -> dict[str, torch.Tensor]:
        if name not in self._sums:
            t, c = self.timesteps, channels
            z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
            self._sums[name] = {"abs": z(t, c), "off": z(t, c), "hist": z(t, len(HIST_EDGES) - 1),
                                "rate": z(t), "ann": z(c), "n_pos": z(1), "n_neur": z(1)}
        return self._sums[name]

    @torch.no_grad()
    def _on_step(self, neuron: IFNeuron, t: int, u: torch.Tensor, spikes: torch.Tensor) -> None:
        t -= self.latency
        if t < 0:
            return
        name = neuron.name
        a = self._acts.get(name)
        if a is None or a.shape != u.shape:
            raise RuntimeError(f"Recorder: no ANN activations for layer {name!r} of this batch (call observe_ann)")
        theta = channel_view(neuron.theta, u.dim())
        count = spikes / theta if t == 0 else self._count[name] + spikes / theta
        self._count[name] = count
        s = self._buffers(name, u.shape[1], u.device)
        per_channel = lambda x: x.transpose(0, 1).reshape(x.shape[1], -1).sum(1)  # noqa: E731
        s["abs"][t] += per_channel((count * theta / (t + 1) - a).abs()).double()
        s["off"][t] += per_channel(count - a * (t + 1) / theta).double()
        ratio = (u / theta).clamp(float(HIST_EDGES[0]), float(HIST_EDGES[-1]) - 1e-6)
        s["hist"][t] += torch.histc(ratio, bins=len(HIST_EDGES) - 1, min=float(HIST_EDGES[0]),
                                    max=float(HIST_EDGES[-1])).double()
        s["rate"][t] += (spikes > 0).sum().double()
        if t == 0:
            s["ann"] += per_channel(a).double()
            s["n_pos"] += a.numel() / a.shape[1]
            s["n_neur"] += a.numel()

    def result(self) -> Measurements:
        """The means over everything observed so far."""
        missing = [n for n in self.names if n not in self._sums]
        if missing:
            raise RuntimeError(f"Recorder saw no simulation of layers {missing[:3]}")
        out = {k: {} for k in ("abs", "rel", "off", "hist", "rate", "ann")}
        for name in self.names:
            s = {k: v.cpu().numpy() for k, v in self._sums[name].items()}
            n_pos, n_neur = float(s["n_pos"][0]), float(s["n_neur"][0])
            ann_mean = s["ann"] / n_pos
            out["abs"][name] = s["abs"] / n_pos
            out["rel"][name] = out["abs"][name] / np.maximum(ann_mean, 1e-8)[None, :]
            out["off"][name] = s["off"] / n_pos
            out["hist"][name] = s["hist"]
            out["rate"][name] = s["rate"] / n_neur
            out["ann"][name] = ann_mean
        return Measurements(tuple(self.names), self.timesteps, self._n_images, out["abs"], out["rel"], out["off"],
                            out["hist"], out["rate"], out["ann"])
