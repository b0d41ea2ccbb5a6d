"""Per-image views of a stored run, computed in the dashboard from the run's networks (candidates for the core):
every method's network rebuilt from its report, the prediction of every evaluation image after every step, and
a few neurons of one layer for one image (spikes, charge and the ANN activation they approximate).

Time convention as in the core: index t of a ``[T, ...]`` array is after t+1 steps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ftbc_core.assets import load_images
from ftbc_core.calibration.base import copy_snn
from ftbc_core.checkpoint import ModelCard
from ftbc_core.convert import activation_sites
from ftbc_core.data import ImageArrays, get_info, iterate_batches
from ftbc_core.devices import check_device
from ftbc_core.experiment import ExperimentConfig, ExperimentResult, calibration_images, prepare_model
from ftbc_core.image_trace import network_from_report
from ftbc_core.neuron import IFNeuron, channel_view
from ftbc_core.selection import split_held_out
from ftbc_core.snn import SpikingNetwork, check_timesteps, running_mean


def build_networks(cfg: ExperimentConfig, ann: nn.Module, card: ModelCard,
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
    net = copy_snn(net)  # private: simulating sets per-call state on the layers
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

    Works on private copies of ``net`` and ``ann`` (hooks are added to them), so shared models stay untouched.
    """
    timesteps = check_timesteps(timesteps)
    if layer not in net.layer_names:
        raise ValueError(f"unknown spiking layer {layer!r}")
    net, ann = copy_snn(net), copy.deepcopy(ann).eval()
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

    probe, _ = activation_sites(ann)
    seen: dict[str, torch.Tensor] = {}
    handle = probe.get_submodule(layer).register_forward_hook(lambda _m, _i, out: seen.setdefault("a", out))
    try:
        probe(x.to(next(ann.parameters()).device))
    finally:
        handle.remove()
    a = seen["a"][0].float()
    theta = channel_view(neuron.theta, a.dim() + 1).expand(1, *a.shape)[0]
    ratio = (torch.minimum(a.clamp_min(0), theta) / theta).reshape(-1)[idx.to(a.device)]
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
