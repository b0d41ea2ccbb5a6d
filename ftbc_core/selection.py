"""Choosing a method's options without looking at the test split: ``ftbc evaluate --select auto``.

The training split is permuted with the experiment's seed; the first ``val_images`` are held out, calibration
images come from the rest. Each option set of the method's grid (the registry's ``selection_grid``) is
calibrated and scored by the mean held-out accuracy over the T asked for (up to ``select_max_t``); the best one
is used for the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .calibration import get_method
from .data import ImageArrays
from .snn import SpikingNetwork

__all__ = ["Trial", "split_held_out", "select_options"]

Simulate = Callable[[SpikingNetwork, ImageArrays, int], np.ndarray]


@dataclass(frozen=True)
class Trial:
    """One option set tried on the held-out images: its options and mean held-out accuracy (percent)."""

    options: dict[str, Any]
    score: float


def split_held_out(train: ImageArrays, val_images: int, seed: int) -> tuple[ImageArrays, ImageArrays]:
    """``(held-out images, calibration pool)``: a seeded permutation of the training split, the first
    ``val_images`` held out (at most half of the split)."""
    if val_images < 1:
        raise ValueError(f"the number of held-out images must be >= 1, got {val_images}")
    if len(train) < 2:
        raise ValueError("option selection needs at least 2 training images (held-out and calibration)")
    n_val = min(val_images, len(train) // 2)
    order = np.random.default_rng(seed).permutation(len(train))
    return train.subset(np.sort(order[:n_val])), train.subset(np.sort(order[n_val:]))


def select_options(method: str, snn: SpikingNetwork, ann: nn.Module, calib: torch.Tensor, held_out: ImageArrays,
                   timesteps: int, select_max_t: int, simulate: Simulate, fixed: dict[str, Any] | None = None
                   ) -> tuple[dict[str, Any], list[Trial]]:
    """The best options of ``method``'s selection grid on ``held_out`` (``({}, [])`` for a method without one).

    Args:
        timesteps: the T the method is calibrated for; held-out accuracy is averaged over t <= select_max_t.
        simulate: ``(net, images, T) -> accuracy [T]`` (the experiment's own simulation).
        fixed: options the user set; grid entries that contradict them are skipped.
    """
    grid = get_method(method).selection_grid
    fixed = fixed or {}
    grid = [g for g in grid if all(fixed.get(k, v) == v for k, v in g.items())] or ([dict(fixed)] if grid else [])
    if not grid:
        return {}, []
    upto = max(1, min(select_max_t, timesteps))
    trials = []
    for opts in grid:
        net, _ = get_method(method).calibrate(snn, ann, calib, timesteps, {**fixed, **opts})
        acc = simulate(net, held_out, timesteps)
        trials.append(Trial({**fixed, **opts}, float(np.mean(acc[:upto]))))
    best = max(trials, key=lambda trial: trial.score)  # the first of equal scores: the grid's order
    return dict(best.options), trials
