"""The one-neuron lab: a few IF neurons on given input currents, the QCFS function, and the split of one
neuron's error into clipping, quantization and unevenness. Plain numpy out; used by the dashboard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .neuron import if_step
from .snn import running_mean

__all__ = ["NeuronTrace", "simulate_if_neurons", "qcfs_value", "error_parts"]


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
