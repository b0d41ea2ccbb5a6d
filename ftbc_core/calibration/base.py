"""The interface every correction method implements, and the registry the CLI and dashboard read."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from ..convert import activation_sites
from ..snn import SpikingNetwork

__all__ = ["CalibrationMethod", "CalibrationReport", "METHODS", "register", "get_method", "ann_channel_means",
           "Progress", "check_options"]

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class CalibrationReport:
    """What a method did: its options, time spent, and (for bias methods) the fitted biases.

    Attributes:
        biases: ``{layer name: [T, C]}`` float32 arrays (empty for methods without biases).
        bias_change: per calibration batch, the mean absolute change of all biases it caused (convergence).
        latency: extra steps every input pays before the T counted steps (COS's ρ; 0 otherwise).
    """

    method: str
    options: dict[str, Any]
    seconds: float
    n_images: int
    biases: dict[str, np.ndarray] = field(default_factory=dict)
    bias_change: tuple[float, ...] = ()
    latency: int = 0


class CalibrationMethod:
    """Base class: ``calibrate`` returns a *new* network (the given SNN and ANN are never modified)."""

    name: ClassVar[str]
    label: ClassVar[str]
    description: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}

    def options(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The defaults updated with the overrides this method knows (others are ignored)."""
        opts = dict(self.defaults)
        opts.update({k: v for k, v in (overrides or {}).items() if k in self.defaults and v is not None})
        return check_options(opts)

    def calibrate(
        self,
        snn: SpikingNetwork,
        ann: nn.Module,
        images: torch.Tensor,
        timesteps: int,
        options: dict[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> tuple[SpikingNetwork, CalibrationReport]:
        """Fit the method on calibration ``images`` ``[N, C, H, W]`` (training split) for ``timesteps`` steps."""
        raise NotImplementedError


def check_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Validate the common options; raises ValueError with a clear message."""
    if "alpha" in opts and not (0 < float(opts["alpha"]) <= 10):
        raise ValueError(f"alpha must be in (0, 10], got {opts['alpha']}")
    for key in ("batches", "batch_size", "passes"):
        if key in opts and int(opts[key]) < 1:
            raise ValueError(f"{key.replace('_', ' ')} must be >= 1, got {opts[key]}")
    if "rho" in opts and not 0 <= int(opts["rho"]) <= 64:
        raise ValueError(f"rho must be in [0, 64], got {opts['rho']}")
    return opts


METHODS: dict[str, CalibrationMethod] = {}


def register(cls: type[CalibrationMethod]) -> type[CalibrationMethod]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> CalibrationMethod:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def copy_snn(snn: SpikingNetwork) -> SpikingNetwork:
    """A deep copy with no temporary state (rules, hooks) carried over."""
    new = copy.deepcopy(snn)
    for neuron in new.neurons:
        neuron.step_rule, neuron.step_hooks, neuron.run_shape = None, [], None
    return new


@register
class NoCorrection(CalibrationMethod):
    name = "none"
    label = "no correction"
    description = "The converted SNN as it is (θ from QCFS λ or activation statistics, v0 = θ/2)."
    defaults: dict[str, Any] = {}

    def calibrate(self, snn, ann, images, timesteps, options=None, progress=None):
        return copy_snn(snn), CalibrationReport(self.name, {}, 0.0, 0)


@torch.no_grad()
def ann_channel_means(ann: nn.Module, x: torch.Tensor, thetas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per activation call site, the channel means of the ANN activation clipped to ``[0, θ]`` (what an IF layer
    with threshold θ can express): ``{name: [C]}`` from one hooked forward pass on ``x``."""
    means: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_m, _i, out):
            theta = thetas[name].to(out.device).view(-1, *([1] * (out.dim() - 2)))
            a = torch.minimum(out.float().clamp_min(0), theta)
            means[name] = a.transpose(0, 1).reshape(a.shape[1], -1).mean(1)

        return hook

    was_training = ann.training
    ann.eval()
    probe, sites = activation_sites(ann)
    handles = [probe.get_submodule(s.name).register_forward_hook(hook_for(s.name)) for s in sites]
    try:
        probe(x)
    finally:
        for h in handles:
            h.remove()
        ann.train(was_training)
    return means
