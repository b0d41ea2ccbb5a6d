"""Accuracy of an ANN on image arrays (the SNN's, at every step, comes from ``experiment.simulate_dataset``)."""

from __future__ import annotations

import torch
from torch import nn

from .data import ImageArrays, iterate_batches

__all__ = ["ann_accuracy"]


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
