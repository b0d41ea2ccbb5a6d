"""Per-image views of a stored run (the dashboard's one-image page and walk-through): every method's network
rebuilt from its report, the prediction of every evaluation image after every step, and a few neurons of one
layer for one image (spikes, charge and the ANN activation they approximate).

Time convention as in the core: index t of a ``[T, ...]`` array is after t+1 steps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .assets import load_images
from .checkpoint import ModelCard
from .convert import clip_to_threshold, observe_activations
from .data import ImageArrays, get_info, iterate_batches
from .devices import check_device
from .experiment import ExperimentConfig, ExperimentResult, calibration_images, prepare_model
from .image_trace import network_from_report
from .neuron import IFNeuron, channel_view
from .selection import split_held_out
from .snn import SpikingNetwork, check_timesteps, running_mean

__all__ = ["rebuild_networks", "ImagePredictions", "predict_images", "predict_all", "LayerTrace", "trace_layer",
           "neuron_order"]


def rebuild_networks(cfg: ExperimentConfig, ann: nn.Module, card: ModelCard,
                   result: ExperimentResult) -> dict[str, SpikingNetwork]:
    """Every method's network of a stored run, rebuilt from its reports (biases, ρ) without recalibrating.

    The biases cover ``result.timesteps`` steps; thresholds from statistics (ReLU; threshold mode max or
    percentile) come from the run's calibration images (drawn, as in the run, from what the held-out selection
    left of the training split).
    """
    device = check_device(cfg.device)
    calib = torch.empty(0)
    if card.activation != "qcfs" or cfg.thresholds in ("max", "percentile"):  # θ from statistics
        train, _ = load_images(card.dataset, "train", cfg.data_dir)
        if cfg.select:
            _, train = split_held_out(train, cfg.val_images, cfg.seed)
        calib = calibration_images(train, cfg.calib_images, cfg.seed, get_info(card.dataset).num_classes)
    _, _, snn = prepare_model(copy.deepcopy(ann), card, device, calib, cfg)
    return {m: network_from_report(snn, result.reports[m]) for m in result.methods}


@dataclass(frozen=True)
class ImagePredictions:
    """``predicted[m]``: ``[T, N]`` class after every step for every evaluation image; ``labels``: ``[N]``."""

    predicted: dict[str, np.ndarray]
    labels: np.ndarray

    def correct(self, method: str, t: int) -> np.ndarray:
        """``[N]`` bool: whether ``method`` is right after ``t`` steps (1-based)."""
        return self.predicted[method][t - 1] == self.labels

    def disagreements(self, before: str, after: str, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Image indices that ``after`` fixes (``before`` wrong, ``after`` right) and breaks, at step ``t``."""
        a, b = self.correct(before, t), self.correct(after, t)
        return np.flatnonzero(~a & b), np.flatnonzero(a & ~b)


@torch.no_grad()
def predict_images(net: SpikingNetwork, data: ImageArrays, timesteps: int, batch_size: int = 200) -> np.ndarray:
    """``[T, N]`` predicted class of every image after every step (one simulation to T, as the run's)."""
    timesteps = check_timesteps(timesteps)
    device = next(net.parameters()).device
    total = timesteps + net.latency
    out = []
    for x, _ in iterate_batches(data, min(batch_size, net.chunk_size(total))):
        logits = running_mean(net.simulate(x.to(device), total)[net.latency :])
        out.append(logits.argmax(-1).cpu())
    return torch.cat(out, dim=1).numpy().astype(np.int32)


def predict_all(networks: dict[str, SpikingNetwork], data: ImageArrays, timesteps: int,
                batch_size: int = 200) -> ImagePredictions:
    return ImagePredictions({m: predict_images(net, data, timesteps, batch_size) for m, net in networks.items()},
                            np.asarray(data.y).astype(np.int32))


@dataclass(frozen=True)
class LayerTrace:
    """A sample of one layer's neurons while one image is simulated.

    Attributes:
        spikes: ``[T, N]`` bool, whether each sampled neuron fired at step t.
        charge: ``[T, N]`` charge before firing ``u[t] / θ`` (fires at ≥ 1).
        ann: ``[N]`` the ANN activation of the same neuron for the same image, clipped to [0, θ], over θ.
        neuron_index: ``[N]`` flat indices into the layer's ``C·H·W`` neurons; ``channel``: ``[N]`` their channels.
    """

    layer: str
    spikes: np.ndarray
    charge: np.ndarray
    ann: np.ndarray
    neuron_index: np.ndarray
    channel: np.ndarray
    layer_size: int

    @property
    def rate(self) -> np.ndarray:
        """``[N]`` spikes per step (in units of θ: what the rate approximates of ``ann``)."""
        return self.spikes.mean(0)

    @property
    def first_spike(self) -> np.ndarray:
        """``[N]`` step (1-based) of each neuron's first spike, 0 for a neuron that never fires."""
        fired = self.spikes.any(0)
        return np.where(fired, self.spikes.argmax(0) + 1, 0)


@torch.no_grad()
def trace_layer(net: SpikingNetwork, ann: nn.Module, x: torch.Tensor, timesteps: int, layer: str, *,
                neurons: int = 32, seed: int = 0) -> LayerTrace:
    """Simulate one image ``x: [C, H, W]`` and record ``neurons`` seeded-random neurons of ``layer``.

    Neither ``net`` nor ``ann`` is modified (the observers belong to this call), so shared models can be traced.
    """
    timesteps = check_timesteps(timesteps)
    if layer not in net.layer_names:
        raise ValueError(f"unknown spiking layer {layer!r}")
    x = x.unsqueeze(0) if x.dim() == 3 else x
    neuron = net.get_submodule("net." + layer)
    chosen: dict[str, torch.Tensor] = {}
    charge, spikes = [], []

    def pick(size: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(size, generator=gen)[: min(neurons, size)].sort().values

    def on_step(n: IFNeuron, t: int, u: torch.Tensor, s: torch.Tensor) -> None:
        if t < net.latency:
            return
        theta = channel_view(n.theta, u.dim()).expand_as(u)[0].reshape(-1)
        if "idx" not in chosen:
            chosen["idx"], chosen["size"] = pick(theta.numel()), torch.tensor(theta.numel())
        idx = chosen["idx"].to(u.device)
        charge.append((u[0].reshape(-1)[idx] / theta[idx]).cpu())
        spikes.append((s[0].reshape(-1)[idx] > 0).cpu())

    device = next(net.parameters()).device
    net.simulate(x.to(device), timesteps + net.latency, hooks={neuron: (on_step,)})
    idx = chosen["idx"]

    seen: dict[str, torch.Tensor] = {}
    observe_activations(ann, x.to(next(ann.parameters()).device),
                        lambda name, out: seen.setdefault("a", out) if name == layer else None)
    a = clip_to_threshold(seen["a"], neuron.theta)[0]  # [C, ...] in [0, θ]
    theta = channel_view(neuron.theta, a.dim() + 1).expand(1, *a.shape)[0].to(a.device)
    ratio = (a / theta).reshape(-1)[idx.to(a.device)]
    per_channel = max(1, int(chosen["size"]) // max(1, a.shape[0]))
    return LayerTrace(layer=layer, spikes=torch.stack(spikes).numpy(), charge=torch.stack(charge).numpy(),
                      ann=ratio.cpu().numpy(), neuron_index=idx.numpy(), channel=(idx // per_channel).numpy(),
                      layer_size=int(chosen["size"]))


def neuron_order(trace: LayerTrace, by: str) -> np.ndarray:
    """Order of the sampled neurons: by ``first spike`` (early first, silent last), ``rate`` or ``ANN activation``
    (largest first); ties keep the neuron order."""
    if by == "first spike":
        first = np.where(trace.first_spike > 0, trace.first_spike, trace.spikes.shape[0] + 1)
        return np.lexsort((-trace.rate, first))
    key = trace.rate if by == "rate" else trace.ann
    return np.argsort(-key, kind="stable")
