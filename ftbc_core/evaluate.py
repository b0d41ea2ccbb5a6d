"""Accuracy of ANNs and SNNs on image arrays (the SNN at every step from one run)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .data import ImageArrays, iterate_batches
from .snn import SpikingNetwork, check_timesteps

__all__ = ["ann_accuracy", "snn_accuracy", "Progress"]

Progress = Callable[[float, str], None]


@torch.no_grad()
def ann_accuracy(model: nn.Module, data: ImageArrays, batch_size: int = 256) -> float:
    """Top-1 accuracy of an ANN in percent (float32)."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    for x, y in iterate_batches(data, batch_size):
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    return 100.0 * correct / len(data)


@torch.no_grad()
def snn_accuracy(
    snn: SpikingNetwork,
    data: ImageArrays,
    timesteps: int,
    *,
    batch_size: int = 256,
    progress: Progress | None = None,
) -> np.ndarray:
    """Top-1 accuracy (percent) after every step: ``[T]``, index t = accuracy with t+1 steps."""
    timesteps = check_timesteps(timesteps)
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    device = next(snn.parameters()).device
    correct = torch.zeros(timesteps, dtype=torch.long)
    done = 0
    for x, y in iterate_batches(data, batch_size):
        out = snn(x.to(device), timesteps)  # [T, B, K]
        correct += (out.argmax(-1).cpu() == y.view(1, -1)).sum(1)
        done += len(y)
        if progress:
            progress(done / len(data), f"simulating T={timesteps}: {done}/{len(data)} images")
    return (100.0 * correct.double() / len(data)).numpy()
