"""One image through a spiking network, step by step (the dashboard's one-image page), and a method's network
rebuilt from its report. Time convention as everywhere: index t of a ``[T, ...]`` array is after t+1 steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .calibration import CalibrationReport, get_method
from .neuron import IFNeuron
from .snn import SpikingNetwork, check_timesteps, running_mean

__all__ = ["ImageTrace", "trace_image", "network_from_report"]


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

    device = next(net.parameters()).device
    per_step = net.simulate(x.to(device), timesteps + latency, hooks={neuron: (hook,)})[latency:, 0]  # [T, K]
    logits = running_mean(per_step.float())
    idx = chosen["idx"]
    return ImageTrace(layer=layer, logits=logits.cpu().numpy(), probabilities=logits.softmax(-1).cpu().numpy(),
                      raster=torch.stack(rows).numpy(), neuron_index=idx.numpy(),
                      layer_size=int(chosen["n"]), spike_rate=np.array(rates))


def network_from_report(snn: SpikingNetwork, report: CalibrationReport) -> SpikingNetwork:
    """Rebuild a method's network from the uncorrected ``snn`` and the method's report (no recalibration):
    each method knows how (:meth:`~ftbc_core.calibration.CalibrationMethod.rebuild`). ``snn`` is not modified."""
    return get_method(report.method).rebuild(snn, report)
