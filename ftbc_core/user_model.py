"""Bring your own model: build an ANN from the user's code (``package.module:factory``) and its safetensors
weights, with a card made from the dataset, so every command can convert, calibrate and evaluate it.

The code runs on the user's machine because they asked for it (it is their code); the weights are read with
safetensors, never unpickled. Nothing here is offered to the dashboard's upload.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from torch import nn

from .checkpoint import MAX_CHECKPOINT_BYTES, CheckpointError, ModelCard, check_state_dict
from .data import get_info
from .models import Normalize

__all__ = ["CUSTOM_ARCH", "load_user_model"]

CUSTOM_ARCH = "custom"


def _factory(spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model-code must be package.module:factory, got {spec!r}")
    if os.getcwd() not in sys.path:  # `ftbc` as a console script does not put the working directory on the path
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--model-code: cannot import {module_name!r} ({err}); run from the folder that holds "
                         "it or add it to PYTHONPATH") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--model-code: {module_name} has no callable {attr!r}")
    return factory


def _load_weights(model: nn.Module, weights: str | Path) -> None:
    path = Path(weights)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"--weights {path} must be a .safetensors file (save it with "
                              "safetensors.torch.save_file(model.state_dict(), PATH); pickles are never read)")
    if not path.is_file():
        raise CheckpointError(f"--weights {path} does not exist")
    if path.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"--weights {path} is larger than {MAX_CHECKPOINT_BYTES // 2**20} MiB")
    try:
        tensors = st_load_bytes(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"--weights {path} is not a valid safetensors file ({str(err).splitlines()[0]})") \
            from None
    expected = model.state_dict()
    check_state_dict(tensors, expected, f"--weights {path}", "the model")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})


def load_user_model(
    spec: str,
    weights: str | Path | None,
    dataset: str,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[nn.Module, ModelCard]:
    """Build ``factory()`` from ``package.module:factory``, load ``weights`` and check it classifies ``dataset``.

    Args:
        mean, std: if given, the model gets a :class:`~ftbc_core.models.Normalize` in front, so it takes [0, 1]
            images like every model here (give your training normalisation); otherwise it gets [0, 1] images.

    Returns:
        ``(model in eval mode, card)``; the card's arch is ``custom``.
    """
    info = get_info(dataset)
    model = _factory(spec)()
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model-code {spec} returned a {type(model).__name__}, not a torch nn.Module")
    if weights is not None:
        _load_weights(model, weights)
    if (mean is None) != (std is None):
        raise ValueError("give both --mean and --std, or neither")
    channels = info.image_shape[2]
    if mean is not None:
        if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
            raise ValueError(f"--mean/--std need {channels} values (std > 0), got {list(mean)} / {list(std)}")
        model = nn.Sequential(Normalize(mean, std), model)
    model = model.float().eval()
    h, w, c = info.image_shape
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, c, h, w))
    except Exception as err:  # the user's forward may raise anything on a wrong input shape
        raise ValueError(f"--model-code {spec} cannot take {info.name} images [1, {c}, {h}, {w}] "
                         f"({' '.join(str(err).split())[:160]})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, info.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"--model-code {spec} gives {shape} on one {info.name} image; {info.name} needs "
                         f"(1, {info.num_classes}) logits")
    card = ModelCard(
        name=spec, arch=CUSTOM_ARCH, activation="relu", levels=0, dataset=info.name, num_classes=info.num_classes,
        in_channels=c, image_size=h, class_names=info.class_names, mean=tuple(mean or (0.0,) * c),
        std=tuple(std or (1.0,) * c), notes=f"user code {spec}, weights {weights}",
        extra={"model_code": spec, "weights": str(weights) if weights else ""})
    return model, card
