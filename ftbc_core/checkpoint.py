"""Checkpoints: weights in safetensors with the model card (JSON) in its header, and a readable card beside it.

One ``NAME.safetensors`` file is self-contained (it is what users upload); ``NAME.json`` repeats the card for
people. Loading never unpickles anything: safetensors holds only tensors and strings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes
from torch import nn

from .models import ACTIVATIONS, ARCHITECTURES, build_model
from .neuron import QCFS

__all__ = ["CheckpointError", "ModelCard", "save_checkpoint", "load_checkpoint", "read_card", "atomic_write_bytes",
           "check_state_dict"]

FORMAT = "ftbc-explorer/1"
CARD_KEY = "ftbc_card"
MAX_CHECKPOINT_BYTES = 1024 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line saying why."""


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint is and how it was made."""

    name: str
    arch: str
    activation: str
    levels: int
    dataset: str
    num_classes: int
    in_channels: int
    image_size: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    epochs: int = 0
    seed: int = 0
    command: str = ""
    ann_test_accuracy: float | None = None
    date: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"the model card is not valid JSON ({err.msg})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"the model card is not an {FORMAT} card")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in data]
        if missing:
            raise CheckpointError(f"the model card lacks {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in names}
        _check_card_fields(kwargs)
        for key in ("class_names", "mean", "std"):
            kwargs[key] = tuple(kwargs[key])
        card = cls(**kwargs)
        if card.arch not in ARCHITECTURES:
            raise CheckpointError(f"the card names an unknown architecture {card.arch!r}")
        return card

    def build(self) -> nn.Module:
        """An untrained model of this card's architecture."""
        return build_model(self.arch, self.activation, self.levels, self.num_classes, self.in_channels,
                           self.mean, self.std)


def _check_card_fields(data: dict[str, Any]) -> None:
    """Raise CheckpointError unless every card field present has the type (and range) the code relies on."""

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v: Any) -> bool:
        return (is_int(v) or isinstance(v, float)) and math.isfinite(v)

    checks = {
        "name": (lambda v: isinstance(v, str), "a string"),
        "arch": (lambda v: isinstance(v, str), "a string"),
        "activation": (lambda v: v in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
        "dataset": (lambda v: isinstance(v, str), "a string"),
        # QCFS needs L >= 1; a ReLU model has no levels and its card says 0 (what ftbc train writes)
        "levels": (lambda v: is_int(v) and v >= (1 if data.get("activation") == "qcfs" else 0),
                   "an integer >= 1 for QCFS (0 for ReLU)"),
        "num_classes": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        "in_channels": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        "image_size": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        "class_names": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of strings"),
        "mean": (lambda v: isinstance(v, list) and all(is_number(m) for m in v), "a list of finite numbers"),
        "std": (lambda v: isinstance(v, list) and all(is_number(m) and m > 0 for m in v),
                "a list of finite numbers > 0"),
        "epochs": (is_int, "an integer"),
        "seed": (is_int, "an integer"),
        "ann_test_accuracy": (lambda v: v is None or is_number(v), "a number or null"),
        "command": (lambda v: isinstance(v, str), "a string"),
        "date": (lambda v: isinstance(v, str), "a string"),
        "notes": (lambda v: isinstance(v, str), "a string"),
        "extra": (lambda v: isinstance(v, dict), "a JSON object"),
    }
    for key, (ok, what) in checks.items():
        if key in data and not ok(data[key]):
            raise CheckpointError(f"the model card's {key} must be {what}, got {data[key]!r:.60}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content, never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _weights_path(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")


def save_checkpoint(model: nn.Module, card: ModelCard, path: str | Path, *, half: bool = False) -> Path:
    """Save ``model``'s state_dict and ``card`` to ``path(.safetensors)`` and ``.json``; returns the weights path.

    Args:
        half: store floating-point weights as float16 (loading converts back to float32).
    """
    target = _weights_path(path)
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        if half and value.is_floating_point():
            value = value.half()
        tensors[key] = value
    data = st_save_bytes(tensors, metadata={CARD_KEY: card.to_json()})
    atomic_write_bytes(target, data)
    atomic_write_bytes(target.with_suffix(".json"), (card.to_json() + "\n").encode())
    return target


def _parse(data: bytes, label: str) -> tuple[dict[str, torch.Tensor], ModelCard]:
    if len(data) < 8:
        raise CheckpointError(f"{label} is not a checkpoint: it is empty or too short ({len(data)} bytes)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len <= 0 or header_len > len(data) - 8 or data[8:9] != b"{":
        raise CheckpointError(f"{label} is not a safetensors checkpoint (or it is truncated)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{label} is not a safetensors checkpoint: its header is not JSON") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get(CARD_KEY), str):
        raise CheckpointError(f"{label} is a safetensors file but has no FTBC model card (not made by ftbc train?)")
    card = ModelCard.from_json(meta[CARD_KEY])
    try:
        tensors = st_load_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{label} is truncated or corrupt ({str(err).splitlines()[0]})") from None
    return tensors, card


def check_state_dict(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], label: str, what: str,
                     optional: tuple[str, ...] = ()) -> None:
    """Raise CheckpointError (one line) unless ``tensors`` has exactly ``expected``'s keys (those ending in one of
    ``optional`` may be absent) with the same shapes, floating point where expected is, and finite values.

    Args:
        label: how the message names the file; what: what it must fit (``a resnet20 model with 10 classes``).
    """
    missing = [k for k in expected if k not in tensors and not (optional and k.endswith(optional))]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CheckpointError(f"{label} does not fit {what}: {first} ({len(missing)} missing, {len(unexpected)} "
                              f"unexpected of {len(tensors)} tensors)")
    for key, value in tensors.items():
        ref = expected[key]
        if tuple(value.shape) != tuple(ref.shape):
            raise CheckpointError(f"{label} does not fit {what}: {key} has shape {tuple(value.shape)}, expected "
                                  f"{tuple(ref.shape)}")
        if ref.is_floating_point():
            if not value.is_floating_point():
                raise CheckpointError(f"{label}: {key} has dtype {value.dtype}, expected floating point")
            if not torch.isfinite(value).all():
                raise CheckpointError(f"{label} has NaN or infinite values in {key}")


def _load_into(model: nn.Module, tensors: dict[str, torch.Tensor], label: str, card: ModelCard) -> None:
    expected = model.state_dict()
    check_state_dict(tensors, expected, label, f"a {card.arch} ({card.activation}) model with {card.num_classes} "
                     "classes")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    for name, module in model.named_modules():
        lam = float(module.threshold.detach()) if isinstance(module, QCFS) else 1.0
        if not lam > 0:  # λ = 0 makes the ANN divide 0 by 0; conversion needs θ = λ > 0
            raise CheckpointError(f"{label} has a QCFS threshold λ = {lam:g} in {name}; it must be > 0")


def load_checkpoint(
    source: str | Path | bytes,
    *,
    arch: str | None = None,
    dataset: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelCard]:
    """Load a checkpoint written by :func:`save_checkpoint` (a path, or the file's bytes for uploads).

    Args:
        arch: if given, the checkpoint must be of this architecture.
        dataset: if given, the checkpoint must have been trained on this dataset.

    Returns:
        ``(model in eval mode on device, card)``.

    Raises:
        CheckpointError: with a one-line reason for anything that is not a valid, matching checkpoint.
    """
    if isinstance(source, (bytes, bytearray)):
        data, label = bytes(source), "the uploaded file"
    else:
        path = Path(source)
        if not path.exists() and _weights_path(path).exists():
            path = _weights_path(path)
        label = str(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {label} does not exist")
        if path.stat().st_size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{label} is larger than {MAX_CHECKPOINT_BYTES // 2**20} MiB; not a checkpoint of ours")
        data = path.read_bytes()
    tensors, card = _parse(data, label)
    if arch is not None and card.arch != arch:
        raise CheckpointError(f"{label} holds a {card.arch}, not a {arch}")
    if dataset is not None and card.dataset != dataset:
        raise CheckpointError(f"{label} was trained on {card.dataset}, not {dataset}")
    try:
        model = card.build()
    except (ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{label}: {err}") from None
    _load_into(model, tensors, label, card)
    return model.to(device).eval(), card


def read_card(path: str | Path) -> ModelCard:
    """The card of a checkpoint without loading its weights."""
    path = _weights_path(path) if not Path(path).exists() else Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a checkpoint: it is empty or too short")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > 100_000_000:
            raise CheckpointError(f"{path} is not a safetensors checkpoint")
        header = f.read(n)
    try:
        meta = json.loads(header).get("__metadata__") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise CheckpointError(f"{path} is not a safetensors checkpoint: its header is not JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get(CARD_KEY), str):
        raise CheckpointError(f"{path} has no FTBC model card")
    return ModelCard.from_json(meta[CARD_KEY])
