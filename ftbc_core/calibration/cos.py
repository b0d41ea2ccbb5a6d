"""Baseline: COS offset-spike calibration (Hao et al., ICLR 2023).

COS, per input and per neuron: each IF layer first runs ρ pre-simulation steps from ``v0 = θ/2``. A residual
potential below 0 after them means one spike too many, one at or above θ one too few; the layer then restarts
from ``v0 = θ/2 − θ`` or ``θ/2 + θ`` (else θ/2) and runs the T counted steps. Upstream layers emit their
pre-simulation spikes first, so every input pays ρ extra steps of latency; only the last T steps are averaged.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..neuron import IFNeuron, channel_view, if_step
from ..snn import SpikingNetwork
from .base import CalibrationMethod, CalibrationReport, copy_snn, register

__all__ = ["COS", "CosNetwork", "CosRule"]


class CosRule:
    """Step rule: plain IF steps, except that at step ρ the potential restarts from a shifted ``v0``."""

    def __init__(self, rho: int) -> None:
        self.rho = int(rho)

    def __call__(self, neuron: IFNeuron, t: int, v: torch.Tensor, z_t: torch.Tensor, out: torch.Tensor):
        theta = channel_view(neuron.theta, v.dim())
        if t == self.rho and self.rho > 0:
            shift = theta * ((v >= theta).to(v.dtype) - (v < 0).to(v.dtype))
            v = neuron.v0_fraction * theta + shift
        v_next, spikes = if_step(v, z_t, theta, neuron.bias_at(t - self.rho if t >= self.rho else 10**9, v.dim()))
        out.copy_(spikes)
        return v_next


class CosNetwork(SpikingNetwork):
    """A SpikingNetwork with COS step rules whose ``latency`` is ρ: it runs ρ + T steps and averages the last T."""

    def __init__(self, snn: SpikingNetwork, rho: int) -> None:
        super().__init__(snn.net, snn.layer_names, snn.max_batch_steps)
        self.rho = self.latency = int(rho)
        for neuron in self.neurons:
            neuron.step_rule = CosRule(self.rho)


@register
class COS(CalibrationMethod):
    name = "cos"
    label = "COS (offset spikes, ρ pre-steps)"
    description = ("Calibrating offset spikes: ρ pre-simulation steps, then the initial potential of every neuron "
                   "is shifted by ±θ where the residual potential shows one spike too many or too few.")
    defaults: dict[str, Any] = {"rho": 4}

    def calibrate(self, snn, ann, images, timesteps, options=None, progress=None):
        opts = self.options(options)
        start = time.perf_counter()
        net = CosNetwork(copy_snn(snn), opts["rho"])
        return net, CalibrationReport(self.name, opts, time.perf_counter() - start, 0, latency=opts["rho"])
