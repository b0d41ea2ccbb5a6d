"""How much memory a simulation needs (estimated from one dry forward) and how much the machine has."""

from __future__ import annotations

import os

import torch
from torch import nn

from .neuron import QCFS, IFNeuron
from .snn import SpikingNetwork, check_timesteps

__all__ = ["estimate_memory_bytes", "available_memory_bytes"]


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
