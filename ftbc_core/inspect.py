"""Helpers for looking inside one run: a single image's trajectory, a memory estimate, calibrated networks
rebuilt from a report, and the one-neuron lab. Plain torch/numpy; used by the dashboard, testable without it.

Time convention as everywhere: index t of a ``[T, ...]`` array is the state after t+1 steps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .calibration import CalibrationReport, CosNetwork
from .calibration.base import copy_snn
from .neuron import QCFS, IFNeuron, if_step
from .snn import SpikingNetwork, check_timesteps, running_mean

__all__ = ["ImageTrace", "trace_image", "estimate_memory_bytes", "available_memory_bytes", "network_from_report",
           "NeuronTrace", "simulate_if_neurons", "qcfs_value", "error_parts"]


@dataclass(frozen=True)
class ImageTrace:
    """What one image does in a spiking network, step by step.

    Attributes:
        logits: ``[T, K]`` running mean of the output layer (the SNN's output after t+1 steps).
        probabilities: ``[T, K]`` softmax of ``logits``.
        raster: ``[T, N]`` bool, whether each sampled neuron of ``layer`` fired at step t.
        neuron_index: ``[N]`` flat indices of the sampled neurons into the layer's ``C·H·W`` neurons.
        layer_size: number of neurons of ``layer`` for one image.
        spike_rate: ``[T]`` fraction of all neurons of ``layer`` that fired at step t.
    """

    layer: str
    logits: np.ndarray
    probabilities: np.ndarray
    raster: np.ndarray
    neuron_index: np.ndarray
    layer_size: int
    spike_rate: np.ndarray

    @property
    def predictions(self) -> np.ndarray:
        """``[T]`` predicted class after every step."""
        return self.logits.argmax(1)


@torch.no_grad()
def trace_image(
    net: SpikingNetwork, x: torch.Tensor, timesteps: int, layer: str, *, max_neurons: int = 256, seed: int = 0
) -> ImageTrace:
    """Simulate one image and record its output after every step and a spike raster of one layer.

    The step hook is added to ``net``'s layer for the duration of the call (removed in a ``finally``); pass a
    private copy when the network is shared between threads.

    Args:
        net: a converted (and possibly calibrated) network; COS pre-simulation steps are not recorded.
        x: one image ``[C, H, W]`` or ``[1, C, H, W]`` in [0, 1].
        layer: name of a spiking layer (``net.layer_names``).
        max_neurons: size of the seeded random sample of neurons in the raster.
    """
    timesteps = check_timesteps(timesteps)
    if layer not in net.layer_names:
        raise ValueError(f"unknown spiking layer {layer!r}; choose one of {', '.join(net.layer_names)}")
    x = x.unsqueeze(0) if x.dim() == 3 else x
    if x.shape[0] != 1:
        raise ValueError(f"trace_image takes one image, got a batch of {x.shape[0]}")
    neuron = net.get_submodule("net." + layer)
    latency = net.latency
    rows: list[torch.Tensor] = []
    rates: list[float] = []
    chosen: dict[str, torch.Tensor] = {}

    def hook(_n: IFNeuron, t: int, _u: torch.Tensor, spikes: torch.Tensor) -> None:
        if t < latency:
            return
        fired = spikes[0].reshape(-1) > 0
        if "idx" not in chosen:
            gen = torch.Generator().manual_seed(seed)
            n = fired.numel()
            chosen["idx"] = torch.randperm(n, generator=gen)[: min(max_neurons, n)].sort().values
            chosen["n"] = torch.tensor(n)
        rows.append(fired[chosen["idx"].to(fired.device)].cpu())
        rates.append(float(fired.float().mean()))

    neuron.step_hooks.append(hook)
    try:
        device = next(net.parameters()).device
        per_step = net.simulate(x.to(device), timesteps + latency)[latency:, 0]  # [T, K]
    finally:
        neuron.step_hooks.remove(hook)
    logits = running_mean(per_step.float())
    idx = chosen["idx"]
    return ImageTrace(layer=layer, logits=logits.cpu().numpy(), probabilities=logits.softmax(-1).cpu().numpy(),
                      raster=torch.stack(rows).numpy(), neuron_index=idx.numpy(),
                      layer_size=int(chosen["n"]), spike_rate=np.array(rates))


@torch.no_grad()
def _activation_profile(net: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """One dry forward of a single image: (largest leaf output in bytes, sum of activation outputs, state bytes)."""
    sizes: list[int] = []
    act_sizes: list[int] = []
    snn = net if isinstance(net, SpikingNetwork) else None
    body = snn.net if snn is not None else net

    def hook(module: nn.Module, _i, out) -> None:
        if isinstance(out, torch.Tensor):
            nbytes = out.numel() * 4  # simulations run in float32
            sizes.append(nbytes)
            if isinstance(module, (IFNeuron, QCFS, nn.ReLU)):
                act_sizes.append(nbytes)

    leaves = [m for m in body.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    device = next(body.parameters()).device
    x = torch.zeros(1, *input_shape, device=device)
    was_training = body.training
    body.eval()
    try:
        snn.simulate(x, 1) if snn is not None else body(x)
    finally:
        for h in handles:
            h.remove()
        body.train(was_training)
    state = sum(t.numel() * t.element_size() for t in list(body.parameters()) + list(body.buffers()))
    return max(sizes, default=0), sum(act_sizes), state


def estimate_memory_bytes(
    net: nn.Module,
    input_shape: tuple[int, ...],
    timesteps: int,
    batch: int,
    *,
    live_tensors: int = 4,
    safety: float = 1.5,
) -> int:
    """Estimated peak memory of simulating ``batch`` images for ``timesteps`` steps at once.

    One dry forward of a single image (hooks on every leaf module) measures the largest activation; a
    simulation holds about ``live_tensors`` tensors of that size per image and step (a layer's input, its
    output, the membrane potential and the spike buffer), and a measuring run also keeps every activation
    layer's ANN reference and spike count per image.

        peak ≈ safety · (T · B · live_tensors · largest + B · 2 · Σ activations) + parameters

    Args:
        net: the ANN or its :class:`SpikingNetwork` (hooks are added and removed; pass a copy if shared).
        input_shape: one image, ``(C, H, W)``.
        batch: images simulated together (the chunk size of an evaluation, or a calibration batch).
    """
    timesteps = check_timesteps(timesteps)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    largest, activations, state = _activation_profile(net, tuple(input_shape))
    per_run = timesteps * batch * live_tensors * largest + batch * 2 * activations
    return int(safety * per_run + state)


def available_memory_bytes() -> int:
    """Memory the system can still give (``MemAvailable`` of /proc/meminfo, else total physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def network_from_report(snn: SpikingNetwork, report: CalibrationReport) -> SpikingNetwork:
    """Rebuild a method's network from the uncorrected ``snn`` and the method's report (no recalibration).

    Bias methods get their stored ``[T, C]`` biases back; a method with latency (COS) gets its ρ
    pre-simulation steps. The given ``snn`` is not modified.
    """
    new = copy_snn(snn)
    if report.latency > 0:
        new = CosNetwork(new, report.latency)
    for name, neuron in zip(new.layer_names, new.neurons):
        if name in report.biases:
            neuron.set_bias(torch.from_numpy(np.asarray(report.biases[name], dtype=np.float32)))
    return new


# -- the neuron lab ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NeuronTrace:
    """A few IF neurons over T steps; every array is ``[T, N]``.

    Attributes:
        u: charge before firing, ``v[t-1] + z[t] - b[t]``.
        v: potential after the reset by subtraction.
        spikes: output ``θ`` or 0.
        rate: running mean of the output (what the next layer sees after t+1 steps), same units as z.
    """

    z: np.ndarray
    u: np.ndarray
    v: np.ndarray
    spikes: np.ndarray
    rate: np.ndarray
    theta: float
    v0: float


def simulate_if_neurons(z: np.ndarray, theta: float, v0_fraction: float = 0.5,
                        bias: np.ndarray | None = None) -> NeuronTrace:
    """Run :func:`~ftbc_core.neuron.if_step` on ``z: [T, N]`` input currents with a per-step bias ``[T]``."""
    z_t = torch.as_tensor(np.asarray(z, dtype=np.float64))
    if z_t.dim() != 2:
        raise ValueError(f"z must be [T, N], got shape {tuple(z_t.shape)}")
    if theta <= 0:
        raise ValueError(f"θ must be > 0, got {theta}")
    steps = z_t.shape[0]
    b = torch.zeros(steps, dtype=torch.float64) if bias is None else torch.as_tensor(bias, dtype=torch.float64)
    th = torch.tensor(float(theta), dtype=torch.float64)
    v = torch.full((z_t.shape[1],), v0_fraction * float(theta), dtype=torch.float64)
    us, vs, ss = [], [], []
    for t in range(steps):
        v, s = if_step(v, z_t[t], th, b[t])
        us.append(v + s)
        vs.append(v)
        ss.append(s)
    spikes = torch.stack(ss)
    return NeuronTrace(z=z_t.numpy(), u=torch.stack(us).numpy(), v=torch.stack(vs).numpy(), spikes=spikes.numpy(),
                       rate=running_mean(spikes).numpy(), theta=float(theta), v0=v0_fraction * float(theta))


def qcfs_value(z: float | np.ndarray, theta: float, levels: int) -> Any:
    """The QCFS activation ``θ · clamp(floor(z·L/θ + 1/2) / L, 0, 1)``."""
    return theta * np.clip(np.floor(np.asarray(z) * levels / theta + 0.5) / levels, 0.0, 1.0)


def error_parts(z_mean: float, theta: float, timesteps: int, v0_fraction: float, snn_output: float) -> dict[str, float]:
    """Split ``ReLU(z̄) − SNN output`` into clipping, quantization and unevenness (which includes any bias).

    clipping = ReLU(z̄) − clamp(z̄, 0, θ);  quantization = clamp(z̄, 0, θ) − q_T(z̄) with
    q_T(z̄) = θ · clamp(floor(z̄·T/θ + v0/θ) / T, 0, 1) (the best a T-step IF neuron from v0 can do);
    unevenness = q_T(z̄) − SNN output. The three add up to the total.
    """
    relu = max(z_mean, 0.0)
    clipped = min(relu, theta)
    quantized = theta * float(np.clip(np.floor(z_mean * timesteps / theta + v0_fraction) / timesteps, 0.0, 1.0))
    return {"clipping": relu - clipped, "quantization": clipped - quantized,
            "unevenness": quantized - snn_output, "total": relu - snn_output}
