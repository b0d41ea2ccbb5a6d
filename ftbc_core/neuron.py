"""Activations and spiking neurons.

Time convention (used everywhere in ftbc_core): time-first. A spiking layer sees its input either as a
flattened sequence ``[T*B, ...]`` (the output of stateless layers that ran on the whole sequence at once) or,
for the first spiking layer of a static image, as ``[B, ...]`` (the same current at every step, computed once).
It always returns ``[T*B, ...]``.

Integrate-and-fire with reset by subtraction (../docs in the README), per step t = 1..T::

    u[t] = v[t-1] + z[t] - b[t]        charge (b = FTBC time bias, 0 without correction)
    s[t] = θ · H(u[t] - θ)              fire (H(0) = 1)
    v[t] = u[t] - s[t]                  reset by subtraction
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import torch
from torch import nn

__all__ = ["QCFS", "IFNeuron", "if_step", "channel_view", "StepHook", "StepRule", "Run", "running", "current_run",
           "qcfs_reference"]


class _FloorSTE(torch.autograd.Function):
    """floor() whose gradient is passed straight through."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D401
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def qcfs_reference(z: torch.Tensor, lam: torch.Tensor, levels: int) -> torch.Tensor:
    """QCFS written op by op with autograd (straight-through floor): the definition :class:`_QCFSFunction`
    is tested against."""
    x = torch.clamp(z / lam, 0.0, 1.0)
    return _FloorSTE.apply(x * levels + 0.5) / levels * lam


class _QCFSFunction(torch.autograd.Function):
    """QCFS forward and its straight-through gradient in few passes over memory (training speed).

    Same values as :func:`qcfs_reference` (the same float32 operations in the same order); gradients, with
    ``x = z/λ`` and ``q = floor(clamp(x, 0, 1)·L + 1/2)/L``: ``∂a/∂z = 1[0 < x < 1]`` and
    ``∂a/∂λ = q − x·1[0 < x < 1]``, exactly what autograd gives for the reference.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, lam: torch.Tensor, levels: int) -> torch.Tensor:  # noqa: D401
        x = z / lam
        out = torch.clamp(x, 0.0, 1.0).mul_(levels).add_(0.5).floor_().div_(levels)
        ctx.save_for_backward(x, out)
        ctx.lam_shape = lam.shape
        return out * lam

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, q = ctx.saved_tensors
        inside = (x > 0) & (x < 1)  # torch.clamp's gradient is 0 on the bounds
        grad_z = grad * inside if ctx.needs_input_grad[0] else None
        grad_lam = None
        if ctx.needs_input_grad[1]:
            grad_lam = torch.sum(grad * torch.where(inside, q - x, q)).reshape(ctx.lam_shape)
        return grad_z, grad_lam, None


class QCFS(nn.Module):
    """Quantization-clip-floor-shift activation (Bu et al., ICLR 2022).

    ``a = λ · clamp(floor(z·L/λ + 1/2) / L, 0, 1)`` with a trainable threshold λ (one per layer) and L levels.
    Computed in float32 even under autocast, so the quantization boundaries are exact.
    """

    def __init__(self, levels: int = 4, init_threshold: float = 8.0) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"QCFS levels must be >= 1, got {levels}")
        self.levels = int(levels)
        self.threshold = nn.Parameter(torch.tensor(float(init_threshold)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _QCFSFunction.apply(z.float(), self.threshold.float(), self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


def channel_view(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape per-channel values ``[C]`` (or ``[1]``) to broadcast against a per-step tensor ``[B, C, ...]``."""
    return values.view(-1, *([1] * (ndim - 2)))


def if_step(
    v: torch.Tensor, z: torch.Tensor, theta: torch.Tensor, bias_t: torch.Tensor | float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One integrate-and-fire step with reset by subtraction.

    Args:
        v: membrane potential after the previous step, ``[B, C, ...]``.
        z: input current of this step, same shape.
        theta: threshold, broadcastable to ``v`` (see :func:`channel_view`).
        bias_t: time bias of this step, broadcastable to ``v``.

    Returns:
        ``(v_next, spikes)`` with ``spikes = θ·H(u - θ)``, ``u = v + z - bias_t`` and ``v_next = u - spikes``.
    """
    u = v + z - bias_t
    spikes = (u >= theta).to(u.dtype) * theta
    return u - spikes, spikes


def _memory_format(z: torch.Tensor) -> torch.memory_format | None:
    """``channels_last`` for a 4-d channels-last input (not also contiguous), else None (contiguous)."""
    if z.dim() == 4 and not z.is_contiguous() and z.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return None


class StepHook(Protocol):
    """Observer called after every step: ``hook(neuron, t, u, spikes)`` with ``u`` the charge before firing."""

    def __call__(self, neuron: "IFNeuron", t: int, u: torch.Tensor, spikes: torch.Tensor) -> None: ...


# (neuron, t, v_prev, z_t, out) -> v_next, the step's spikes written into ``out``; lets calibration methods decide a
# step themselves. The rule owns ``v_prev`` (it may update it in place) but must not modify ``z_t``.
StepRule = Callable[["IFNeuron", int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Run:
    """One forward call of a spiking network: its ``(T, B)`` and, per IF layer, who decides or observes the steps.

    Attributes:
        timesteps, batch: the steps simulated and the images in the call.
        rules: ``{layer: rule}`` for layers whose steps a calibration method decides (:data:`StepRule`).
        hooks: ``{layer: observers}`` called after every step of that layer (:class:`StepHook`).

    Callers pass rules and hooks to :meth:`~ftbc_core.snn.SpikingNetwork.simulate`, which makes the run current
    for that call only (:func:`running`); the layers read it with :func:`current_run`. Nothing is stored on a
    layer, so a cached network is never left with another caller's rule or observer.
    """

    timesteps: int
    batch: int
    rules: Mapping["IFNeuron", "StepRule"] = field(default_factory=dict)
    hooks: Mapping["IFNeuron", Sequence["StepHook"]] = field(default_factory=dict)

    def rule(self, neuron: "IFNeuron") -> "StepRule | None":
        return self.rules.get(neuron)

    def hooks_of(self, neuron: "IFNeuron") -> Sequence["StepHook"]:
        return self.hooks.get(neuron, ())


# The run of the forward call in progress, in this thread (the traced graph passes tensors only).
_RUN: contextvars.ContextVar[Run | None] = contextvars.ContextVar("ftbc_run", default=None)


@contextlib.contextmanager
def running(run: Run) -> Iterator[Run]:
    """Make ``run`` current for the forward call inside this context (restores the previous one after)."""
    token = _RUN.set(run)
    try:
        yield run
    finally:
        _RUN.reset(token)


def current_run() -> Run:
    """The run of the forward call in progress; an error outside one (the number of steps is unknown)."""
    run = _RUN.get()
    if run is None:
        raise RuntimeError("IFNeuron called outside SpikingNetwork.simulate/forward (the number of steps is unknown)")
    return run


class IFNeuron(nn.Module):
    """A layer of integrate-and-fire neurons, the spiking replacement of one QCFS/ReLU activation.

    Buffers (saved in ``state_dict`` and moved by ``.to()``):
        theta: ``[C]`` or ``[1]`` thresholds.
        bias: ``[T_b, C]`` per-step, per-channel FTBC biases (``T_b = 0`` until calibrated; steps ``t >= T_b``
            use no bias).

    The number of steps, the batch size, and any step rule or observers come from the :class:`Run` of the
    forward call in progress; nothing survives between calls (the membrane state is local).
    """

    def __init__(self, theta: torch.Tensor, v0_fraction: float = 0.5, name: str = "") -> None:
        super().__init__()
        theta = torch.as_tensor(theta, dtype=torch.float32).reshape(-1).clone()
        if not torch.all(torch.isfinite(theta)) or torch.any(theta <= 0):
            raise ValueError(f"thresholds must be finite and > 0 (layer {name!r}), got {theta.tolist()[:4]}")
        self.register_buffer("theta", theta)
        self.register_buffer("bias", torch.zeros(0, 1))
        self.v0_fraction = float(v0_fraction)
        self.name = name

    # -- parameters --------------------------------------------------------------------------------------
    def set_bias(self, bias: torch.Tensor) -> None:
        """Replace the FTBC biases with ``bias: [T_b, C]`` (C = 1 for a layer-wise bias)."""
        if bias.dim() != 2:
            raise ValueError(f"bias must be [T, C], got shape {tuple(bias.shape)}")
        self.bias = bias.detach().to(device=self.theta.device, dtype=torch.float32).clone()

    def bias_at(self, t: int, ndim: int) -> torch.Tensor | float:
        """The bias of step ``t`` (0-based), broadcastable to a ``ndim``-dimensional per-step tensor."""
        if t >= self.bias.shape[0]:
            return 0.0
        return channel_view(self.bias[t], ndim)

    def initial_potential(self, like: torch.Tensor) -> torch.Tensor:
        """``v[0]``: ``v0_fraction · θ``, shaped like one step.

        A new tensor with the memory format of ``like``.
        """
        v = torch.empty_like(like)
        v.copy_((self.v0_fraction * channel_view(self.theta, like.dim())).expand_as(like))
        return v

    # -- simulation ----------------------------------------------------------------------------------------
    def as_sequence(self, z: torch.Tensor, run: Run | None = None) -> torch.Tensor:
        """View the input as ``[T, B, ...]`` (``(T, B)`` of ``run``, by default the current one); a static
        ``[B, ...]`` input is expanded without copying."""
        run = run or current_run()
        steps, batch = run.timesteps, run.batch
        if z.shape[0] == steps * batch:
            return z.view(steps, batch, *z.shape[1:])
        if z.shape[0] == batch:
            return z.unsqueeze(0).expand(steps, *z.shape)
        raise RuntimeError(f"layer {self.name!r}: input batch {z.shape[0]} is neither B={batch} nor T*B={steps * batch}")

    def step(self, t: int, v: torch.Tensor, z_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``t`` with the stored bias (the rule calibration methods fall back to)."""
        return if_step(v, z_t, channel_view(self.theta, z_t.dim()), self.bias_at(t, z_t.dim()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Run all steps. ``z``: ``[T*B, C, ...]`` or static ``[B, C, ...]``; returns spikes ``[T*B, C, ...]``.

        The output keeps the memory format of the input (channels-last stays channels-last for the next conv).
        """
        run = current_run()
        z_seq = self.as_sequence(z, run)
        steps, batch = z_seq.shape[:2]
        fmt = _memory_format(z)
        out = torch.empty((steps * batch, *z_seq.shape[2:]), dtype=z_seq.dtype, device=z_seq.device,
                          **({"memory_format": fmt} if fmt is not None else {}))
        out_seq = out.view(steps, batch, *z_seq.shape[2:])
        v = self.initial_potential(z_seq[0])
        rule, hooks = run.rule(self), run.hooks_of(self)
        if rule is None:
            self._run_plain(v, z_seq, out_seq, hooks)
            return out
        for t in range(steps):
            v = rule(self, t, v, z_seq[t], out_seq[t])
            if hooks:
                u = v + out_seq[t]
                for hook in hooks:
                    hook(self, t, u, out_seq[t])
        return out

    def _run_plain(self, v: torch.Tensor, z_seq: torch.Tensor, out_seq: torch.Tensor,
                   hooks: Sequence[StepHook]) -> None:
        """:func:`if_step` for every step, in place and without temporaries (same operations, same rounding).

        Step hooks see the exact charge ``u`` (the potential before the reset, read-only) and the step's spikes.
        """
        theta = channel_view(self.theta, v.dim())
        for t in range(z_seq.shape[0]):
            v.add_(z_seq[t])  # u = v + z - b
            if t < self.bias.shape[0]:
                v.sub_(channel_view(self.bias[t], v.dim()))
            s_t = out_seq[t]
            torch.ge(v, theta, out=s_t)  # H(u - θ) as 0.0 / 1.0
            s_t.mul_(theta)  # s = θ·H(u - θ)
            for hook in hooks:
                hook(self, t, v, s_t)  # v holds u here
            v.sub_(s_t)  # v = u - s

    def extra_repr(self) -> str:
        per = "channel" if self.theta.numel() > 1 else "layer"
        return f"name={self.name!r}, theta=per-{per}, v0={self.v0_fraction}·θ, bias_steps={self.bias.shape[0]}"
