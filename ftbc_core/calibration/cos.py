"""Baseline: COS, calibrating offset spikes (Hao et al., ICLR 2023), in two variants.

``cos``: the published algorithm (replay)
    Checked against the public code (``hzc1208/ANN2SNN_COS``, ``modules.py``, class ``MPLayer``; its ``main.py``
    runs ``presim_len`` = ρ = 4 and reads the accuracy at every step of one ``sim_len``-step run). Layer by
    layer, in forward order, an IF layer receives the whole sequence ``z[1..T]`` that the already calibrated
    layers before it produced. It

    1. pre-simulates ρ steps on the *first ρ frames of that same sequence*, from ``v0 = θ/2``, recording per
       neuron whether it fired, the smallest charge ``u`` (potential before the reset) at its spike steps and
       the largest charge at its quiet steps;
    2. shifts its initial potential per neuron (rule below) and
    3. simulates the T counted steps on ``z[1..T]`` again, from the shifted start; only these go downstream.

    The public code works in units of θ (it divides the input by θ and fires at 1). Its shift rule, written
    in our units (:func:`cos_shifted_start`)::

        fired at least once in the pre-steps and residual v < 0  (one spike too many):
            v0' = v0 − max(1, min_{spike steps} u/θ − 0.999) · θ
        residual v >= θ  (one spike too few; this case wins if both held, which cannot happen):
            v0' = v0 + max(1, 1.001 − max_{quiet steps} u/θ) · θ
        otherwise v0' = v0

    So the shift is at least θ, and larger where one θ would not remove the spike (down) or add one (up). The
    code's sentinels are kept: a neuron with no quiet pre-step counts its largest quiet charge as −1000 θ, so if
    its residual is still >= θ it starts 1001.001 θ up (it then fires at every counted step, about 1000 of
    them). The public code always starts from θ/2; here the base is the layer's ``v0`` (``to_snn``'s default
    is θ/2, the same thing). A stored FTBC bias ``b[t]`` (none after plain conversion) applies to the frame
    it belongs to, in the pre-steps and in the counted steps alike.

    Because the pre-steps replay counted frames, ρ <= T: a shorter run is refused. The counted output at step
    t depends on the frames up to ``max(t, ρ)``: accuracy after t < ρ steps of a run to T >= ρ (what the
    public code prints for T = 1, 2 with ρ = 4) already used ρ frames to choose the shift.

    **Latency convention.** :class:`CosNetwork` has ``latency = ρ``: a forward call runs ``ρ + T`` steps, every
    IF layer emits its ρ *pre-step* spikes first and its T counted spikes after them, and the next IF layer
    replays the counted part of its input only (its first ρ input frames are ignored). The network output
    therefore has the ρ pre-steps first, and ``simulate(x, T + latency)[latency:]`` (what
    :func:`~ftbc_core.experiment.simulate_dataset`, :meth:`SpikingNetwork.forward` and the recorders do) is
    exactly the T counted steps. Step hooks see every emitted frame (pre-steps at ``t < ρ``, counted step k
    at ``t = ρ + k``), so measurements skip the pre-steps as they do for ``cos-causal``. Accuracy is reported
    against T and against ρ + T (the ρ extra steps every input pays in the published accounting; a truly
    streaming layer-by-layer replay would wait ρ steps per layer).

``cos-causal``: lock-step variant (this project's first COS, unchanged)
    The whole network runs ``ρ + T`` steps causally: every layer pre-simulates its first ρ steps on the
    upstream's *uncorrected* pre-step spikes (all layers at once), then restarts from ``v0 ± θ`` (a shift of
    exactly one θ, decided from the residual alone) and runs the T counted steps on the upstream's counted
    spikes. Outputs at step t depend on nothing after t.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from torch import nn

from ..neuron import IFNeuron, channel_view, current_run, if_step
from ..snn import SpikingNetwork, check_timesteps
from .base import CalibrationMethod, CalibrationReport, copy_snn, register

__all__ = ["COS", "COSCausal", "CosNetwork", "CosCausalNetwork", "CosReplayNeuron", "CosRule", "cos_shifted_start",
           "check_rho"]

# The public code's constants, in units of θ (``MPLayer.forward``).
DOWN_MARGIN = 0.999  # a down shift puts the smallest spiking charge just below θ: u/θ − 0.999
UP_MARGIN = 1.001  # an up shift puts the largest quiet charge just above θ: 1.001 − u/θ
NEVER_QUIET = -1000.0  # the largest quiet charge of a neuron that fired at every pre-step


def _replace_module(root: nn.Module, target: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted name ``target`` of ``root`` (the traced graph looks submodules up by name)."""
    parent, _, child = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _empty_like_sequence(z: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised ``[T*B, ...]`` output, channels-last where the 4-d input is (as :class:`IFNeuron` does)."""
    if z.dim() == 4 and not z.is_contiguous() and z.is_contiguous(memory_format=torch.channels_last):
        return torch.empty(shape, dtype=z.dtype, device=z.device, memory_format=torch.channels_last)
    return torch.empty(shape, dtype=z.dtype, device=z.device)


def check_rho(rho: Any, timesteps: int | None = None) -> int:
    """ρ as an int in [0, 64]; with ``timesteps``, also ρ <= T (the replay needs ρ counted frames)."""
    try:
        value = float(rho)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(rho, bool) or not value.is_integer():
        raise ValueError(f"rho must be an integer, got {rho!r}")
    rho = int(value)
    if not 0 <= rho <= 64:
        raise ValueError(f"rho must be in [0, 64], got {rho}")
    if timesteps is not None and rho > timesteps:
        raise ValueError(f"COS replays its ρ pre-steps on the first ρ of the T counted frames, so ρ must be <= T: "
                         f"got ρ = {rho}, T = {timesteps}")
    return rho


def cos_shifted_start(v0: torch.Tensor, residual: torch.Tensor, fired: torch.Tensor, min_spike_u: torch.Tensor,
                      max_quiet_u: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The published COS initial potential after ρ pre-steps (see the module docstring).

    Args:
        v0: the start of the pre-steps, ``[B, C, ...]``.
        residual: the potential after the last pre-step (after its reset).
        fired: bool, the neuron fired at least once in the pre-steps.
        min_spike_u: smallest charge u (before the reset) over the pre-steps where it fired (any value where it
            never fired: unused there).
        max_quiet_u: largest charge over the pre-steps where it did not fire (``NEVER_QUIET·θ`` if none).
        theta: threshold broadcastable to ``v0``.
    """
    one = torch.ones((), dtype=v0.dtype, device=v0.device)
    down = torch.maximum(one, min_spike_u / theta - DOWN_MARGIN) * theta
    up = torch.maximum(one, UP_MARGIN - max_quiet_u / theta) * theta
    start = torch.where(fired & (residual < 0), v0 - down, v0)
    return torch.where(residual >= theta, v0 + up, start)


class CosReplayNeuron(IFNeuron):
    """An IF layer that runs the published COS replay in its forward call (see the module docstring).

    Same buffers (``theta``, ``bias``), name and step hooks as the :class:`IFNeuron` it replaces, so recorders
    and state dicts work unchanged. A call with ``ρ + T`` steps returns ρ pre-step frames, then T counted frames.
    """

    def __init__(self, theta: torch.Tensor, v0_fraction: float = 0.5, name: str = "", rho: int = 4) -> None:
        super().__init__(theta, v0_fraction, name)
        self.rho = check_rho(rho)

    @classmethod
    def from_neuron(cls, neuron: IFNeuron, rho: int) -> "CosReplayNeuron":
        """A replay layer with ``neuron``'s thresholds, biases, v0, name and training flag (buffers copied)."""
        new = cls(neuron.theta.detach().float().cpu(), neuron.v0_fraction, neuron.name, rho)
        new.theta = neuron.theta.detach().clone()
        new.bias = neuron.bias.detach().clone()
        new.train(neuron.training)
        return new

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        rho, run = self.rho, current_run()
        if rho == 0 or run.rule(self) is not None:  # no pre-steps (or a calibration rule in charge): plain IF
            return super().forward(z)
        hooks = run.hooks_of(self)
        z_seq = self.as_sequence(z, run)
        steps, batch = z_seq.shape[:2]
        counted = steps - rho
        if counted < rho:
            raise ValueError(f"layer {self.name!r}: COS replays its ρ = {rho} pre-steps on the first ρ counted "
                             f"frames, so it needs T >= ρ counted steps, got T = {counted}")
        out = _empty_like_sequence(z, (steps * batch, *z_seq.shape[2:]))
        out_seq = out.view(steps, batch, *z_seq.shape[2:])
        frames = z_seq[rho:]  # the counted input z[1..T]; frames 0..rho-1 of z_seq are the upstream's pre-steps
        theta = channel_view(self.theta, frames.dim() - 1)
        v0 = self.initial_potential(frames[0])
        # 1. pre-simulation on the first ρ counted frames
        v = v0.clone()
        fired = torch.zeros(v.shape, dtype=torch.bool, device=v.device)
        min_spike_u = torch.full_like(v, math.inf)
        max_quiet_u = torch.full_like(v, NEVER_QUIET) * theta
        for t in range(rho):
            u = v.add_(frames[t])
            if t < self.bias.shape[0]:
                u.sub_(channel_view(self.bias[t], u.dim()))
            s_t = out_seq[t]
            torch.ge(u, theta, out=s_t)
            spiked = s_t > 0
            fired |= spiked
            torch.minimum(min_spike_u, torch.where(spiked, u, math.inf), out=min_spike_u)
            torch.maximum(max_quiet_u, torch.where(spiked, -math.inf, u), out=max_quiet_u)
            s_t.mul_(theta)
            for hook in hooks:
                hook(self, t, u, s_t)
            v = u.sub_(s_t)
        # 2. the shifted start, 3. the counted steps on the same frames
        v = cos_shifted_start(v0, v, fired, min_spike_u, max_quiet_u, theta)
        del fired, min_spike_u, max_quiet_u
        for k in range(counted):
            u = v.add_(frames[k])
            if k < self.bias.shape[0]:
                u.sub_(channel_view(self.bias[k], u.dim()))
            s_t = out_seq[rho + k]
            torch.ge(u, theta, out=s_t)
            s_t.mul_(theta)
            for hook in hooks:
                hook(self, rho + k, u, s_t)
            v = u.sub_(s_t)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cos_replay_rho={self.rho}"


class CosNetwork(SpikingNetwork):
    """The published COS (replay): every IF layer of ``snn`` is swapped for a :class:`CosReplayNeuron` under the
    same name; ``latency = ρ`` (see the module docstring for what a ``ρ + T``-step call returns).

    ``snn``'s module tree is reused (pass a copy, as :class:`COS` does).
    """

    def __init__(self, snn: SpikingNetwork, rho: int) -> None:
        super().__init__(snn.net, snn.layer_names, snn.max_batch_steps)
        self.rho = self.latency = check_rho(rho)
        for name in self.layer_names:
            _replace_module(self.net, name, CosReplayNeuron.from_neuron(self.net.get_submodule(name), self.rho))
        self.train(snn.training)


class CosRule:
    """Lock-step COS step rule (``cos-causal``): plain IF steps, except that at step ρ the potential restarts
    from a shifted ``v0``."""

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


class CosCausalNetwork(SpikingNetwork):
    """Lock-step COS: a SpikingNetwork with :class:`CosRule` step rules whose ``latency`` is ρ; it runs ρ + T
    steps causally and averages the last T."""

    def __init__(self, snn: SpikingNetwork, rho: int) -> None:
        super().__init__(snn.net, snn.layer_names, snn.max_batch_steps)
        self.rho = self.latency = int(rho)

    def step_rules(self) -> dict[IFNeuron, CosRule]:
        rule = CosRule(self.rho)
        return {neuron: rule for neuron in self.neurons}


@register
class COS(CalibrationMethod):
    name = "cos"
    label = "COS (offset spikes, ρ pre-steps)"
    description = ("Calibrating offset spikes as published: each layer, in forward order, pre-simulates ρ steps "
                   "on the first ρ frames of its calibrated input, shifts every neuron's initial potential where "
                   "the residual shows a spike too many or too few, and replays the T steps from there; ρ ≤ T, "
                   "and every input pays ρ extra steps.")
    defaults: dict[str, Any] = {"rho": 4}

    def calibrate(self, snn, ann, images, timesteps, options=None, progress=None):
        timesteps = check_timesteps(timesteps)
        opts = self.options(options)
        opts["rho"] = check_rho(opts["rho"], timesteps)
        start = time.perf_counter()
        net = CosNetwork(copy_snn(snn), opts["rho"])
        return net, CalibrationReport(self.name, opts, time.perf_counter() - start, 0, latency=opts["rho"])

    def rebuild(self, snn, report):
        return CosNetwork(copy_snn(snn), report.latency)


@register
class COSCausal(CalibrationMethod):
    name = "cos-causal"
    label = "COS lock-step (causal variant)"
    description = ("Not the published COS: all layers run their ρ pre-steps at once on the upstream's uncorrected "
                   "pre-step spikes (lock-step, causal), then restart from v0 ± θ and run the T counted steps on "
                   "new frames; the published COS replays each layer's calibrated input instead.")
    defaults: dict[str, Any] = {"rho": 4}

    def calibrate(self, snn, ann, images, timesteps, options=None, progress=None):
        check_timesteps(timesteps)
        opts = self.options(options)
        opts["rho"] = check_rho(opts["rho"])
        start = time.perf_counter()
        net = CosCausalNetwork(copy_snn(snn), opts["rho"])
        return net, CalibrationReport(self.name, opts, time.perf_counter() - start, 0, latency=opts["rho"])

    def rebuild(self, snn, report):
        return CosCausalNetwork(copy_snn(snn), report.latency)
