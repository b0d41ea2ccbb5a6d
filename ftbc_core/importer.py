"""Import ``.pth`` state_dicts written by the public QCFS, COS and FTBC code as FTBC Explorer checkpoints.

The public code saves ``model.state_dict()`` of the networks in :mod:`ftbc_core.public_models` (QCFS and COS:
activation parameters ``...up``; the newer QCFS code that FTBC builds on: ``...thresh``, with the blocks'
output activation named ``act`` instead of ``relu``). The file is read with ``torch.load(weights_only=True)``,
so a pickled payload in it is refused, never run. Every tensor is checked against the architecture before
anything is written; the result is an ordinary ``.safetensors`` + ``.json`` checkpoint with a model card.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .checkpoint import MAX_CHECKPOINT_BYTES, CheckpointError, ModelCard, check_state_dict, save_checkpoint
from .models import build_model
from .public_models import PUBLIC_ARCHS, PUBLIC_NORMALIZATION

__all__ = ["import_checkpoint", "import_model", "SOURCES", "MAX_SOURCE_BYTES"]

MAX_SOURCE_BYTES = 1 << 30
# --from NAME: the code that wrote the file (all three save the same module layout)
SOURCES = {
    "qcfs": "https://github.com/putshua/SNN_conversion_QCFS (QCFS, Bu et al., ICLR 2022)",
    "cos": "https://github.com/hzc1208/ANN2SNN_COS (COS, Hao et al., ICLR 2023)",
    "ftbc": "FTBC code (Wu et al., ECCV 2024), built on https://github.com/putshua/ANN_SNN_QCFS",
}
_IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "imagenet": 224}
_LEVEL_KEYS = ("levels", "L", "l", "t")
_NESTED_KEYS = ("state_dict", "model", "net")


def _line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file")
    size = path.stat().st_size
    if size > MAX_SOURCE_BYTES:
        raise CheckpointError(f"{path} is {size / 2**20:.0f} MiB, over the {MAX_SOURCE_BYTES >> 20} MiB import limit")
    return path.read_bytes()


def _load(data: bytes, path: str) -> tuple[Any, str]:
    """``torch.load`` of a file's bytes (tensors and plain containers only) and the bytes' sha256."""
    if len(data) > MAX_SOURCE_BYTES:
        raise CheckpointError(f"{path} is {len(data) / 2**20:.0f} MiB, over the {MAX_SOURCE_BYTES >> 20} MiB "
                              "import limit")
    digest = hashlib.sha256(data).hexdigest()
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (UnpicklingError, RuntimeError, EOFError, ...: all one-line refusals)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found or "weights only load failed" in str(err).lower():
            what = found.group(1) if found else "a Python object"
            raise CheckpointError(f"{path} holds pickled Python code ({what}), not just tensors; refused without "
                                  "running it") from None
        first = str(err).strip().split(". ")[0]  # torch's messages go on with advice about other failures
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{_line(first) or type(err).__name__}") from None
    return obj, digest


def _state_dict(obj: Any, label: str) -> tuple[dict[str, torch.Tensor], int | None]:
    """The state_dict in ``obj`` (bare or under state_dict/model/net, DataParallel prefix removed) and L if held."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{label} holds a {type(obj).__name__}, not a state_dict (a dict of tensors)")
    levels = None
    for key in _LEVEL_KEYS:
        value = obj.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            levels = value
            break
    for key in _NESTED_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    bad = next((k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if not obj or bad is not None:
        what = "is empty" if not obj else f"has {bad!r:.60} -> {type(obj[bad]).__name__}"
        raise CheckpointError(f"{label} is not a dict of tensors: it {what}")
    tensors = dict(obj)
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors, levels


def _public_keys(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Rename the newer QCFS/FTBC layout (``thresh``, block activation ``act``) to the original one (``up``)."""
    if not any(k == "thresh" or k.endswith(".thresh") for k in tensors):
        return tensors, "up"
    renamed = {}
    for key, value in tensors.items():
        if key.endswith(".act.thresh"):
            key = key[: -len("act.thresh")] + "relu.up"
        elif key.endswith(".thresh"):
            key = key[: -len("thresh")] + "up"
        renamed[key] = value
    return renamed, "thresh"


def _check_fit(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], label: str, what: str) -> None:
    # num_batches_tracked is unused in eval mode and old files may lack it
    check_state_dict(tensors, expected, label, what, optional=("num_batches_tracked",))
    for key, value in tensors.items():
        if key.endswith("running_var") and (value < 0).any():
            raise CheckpointError(f"{label} has a negative BatchNorm running variance in {key}")
        if (key == "up" or key.endswith(".up")) and not (value > 0).all():
            raise CheckpointError(f"{label} has a QCFS threshold up = {value.min().item():g} in {key}; it must be > 0")


def _floats(values: Sequence[float] | None, default: tuple[float, ...], name: str, positive: bool) -> tuple:
    if values is None:
        return tuple(float(v) for v in default)
    out = tuple(float(v) for v in values)
    if len(out) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in out):
        raise CheckpointError(f"--{name} needs 3 finite values{' > 0' if positive else ''}, got {list(values)}")
    return out


def import_checkpoint(
    src: str | Path,
    *,
    source: str = "qcfs",
    arch: str,
    dataset: str,
    levels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    out: str | Path,
    half: bool = False,
    command: str = "",
) -> Path:
    """Convert a public-code ``.pth`` into ``out.safetensors`` + ``out.json``; returns the weights path.

    Args:
        src: the ``.pth``/``.pt`` file (a state_dict, bare or under ``state_dict``/``model``/``net``).
        source: which code wrote it: ``qcfs``, ``cos`` or ``ftbc`` (recorded on the card).
        arch: ``vgg16``, ``resnet18``, ``resnet20``, ``resnet34`` (or with the ``qcfs-`` prefix).
        dataset: ``cifar10``, ``cifar100`` or ``imagenet`` (number of classes, class names, image size).
        levels: the QCFS quantization levels L the model was trained with (the file rarely holds it).
        mean, std: input normalisation; default: the public code's values for ``dataset``.
        half: store float16 weights (needed when float32 would exceed the checkpoint size limit).
        command: the command line, for the card.

    Raises:
        CheckpointError: one line saying why, before anything is written.
    """
    path, out = Path(src), Path(out)
    name = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.name
    model, card = import_model(_read(path), str(path), source=source, arch=arch, dataset=dataset, levels=levels,
                               mean=mean, std=std, name=name, half=half, command=command)
    return save_checkpoint(model, card, out, half=half)


def import_model(
    data: bytes,
    label: str,
    *,
    source: str = "qcfs",
    arch: str,
    dataset: str,
    levels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str = "",
    half: bool = False,
    command: str = "",
) -> tuple[nn.Module, ModelCard]:
    """:func:`import_checkpoint` on a file's bytes (the dashboard's upload), without writing anything.

    Args:
        label: how messages name the file. Other arguments as :func:`import_checkpoint`.

    Returns:
        ``(model in eval mode, card)``.
    """
    from .data import DataError, get_info  # noqa: PLC0415

    if source not in SOURCES:
        raise CheckpointError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    public = arch[len("qcfs-"):] if arch.startswith("qcfs-") else arch
    if public not in PUBLIC_ARCHS:
        raise CheckpointError(f"unknown architecture {arch!r}; choose one of {', '.join(PUBLIC_ARCHS)}")
    key = dataset.strip().lower().replace("-", "") if isinstance(dataset, str) else ""
    if key not in PUBLIC_NORMALIZATION:
        raise CheckpointError(f"unknown dataset {dataset!r}; choose one of {', '.join(PUBLIC_NORMALIZATION)}")
    try:
        info = get_info(key)
    except DataError as err:
        raise CheckpointError(f"dataset {key} is not available here: {err}") from None
    mean_t = _floats(mean, PUBLIC_NORMALIZATION[key][0], "mean", positive=False)
    std_t = _floats(std, PUBLIC_NORMALIZATION[key][1], "std", positive=True)

    path = Path(label)
    obj, digest = _load(data, label)
    tensors, file_levels = _state_dict(obj, label)
    if levels is not None and file_levels is not None and int(levels) != file_levels:
        raise CheckpointError(f"--levels {levels} contradicts the L = {file_levels} stored in {path}")
    levels = file_levels if levels is None else levels
    if levels is None:
        raise CheckpointError(f"{path} does not say its QCFS levels L (the public code keeps L only in the model "
                              "constructor): pass --levels L, the L it was trained with")
    if isinstance(levels, bool) or int(levels) != levels or int(levels) < 1:
        raise CheckpointError(f"QCFS levels L must be an integer >= 1, got {levels!r}")
    levels = int(levels)

    arch_name = f"qcfs-{public}"
    model = build_model(arch_name, "qcfs", levels, info.num_classes, 3, mean_t, std_t)
    expected = {k[len("net."):]: v for k, v in model.state_dict().items() if k.startswith("net.")}
    tensors, layout = _public_keys(tensors)
    _check_fit(tensors, expected, str(path), f"the public {public} with {info.num_classes} classes ({key})")
    nbytes = sum(v.numel() * (2 if half and v.is_floating_point() else v.element_size()) for v in expected.values())
    if nbytes > MAX_CHECKPOINT_BYTES:
        hint = "" if half else "; import it with --half (float16 weights)"
        raise CheckpointError(f"{path} would make a {nbytes / 2**20:.0f} MiB checkpoint, over the "
                              f"{MAX_CHECKPOINT_BYTES >> 20} MiB that checkpoints may have{hint}")
    model.net.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=False)
    model.eval()

    card = ModelCard(
        name=name or f"{arch_name}-{key}", arch=arch_name, activation="qcfs", levels=levels, dataset=key, num_classes=info.num_classes, in_channels=3,
        image_size=_IMAGE_SIZE[key], class_names=tuple(info.class_names), mean=mean_t, std=std_t,
        command=command, date=_dt.date.today().isoformat(),
        notes=(f"Imported from {path.name} (sha256 {digest}), a {public} state_dict written by the {source} code "
               f"({SOURCES[source]}); L = {levels}. Not trained here: no test accuracy recorded."),
        extra={"source": source, "source_code": SOURCES[source], "source_file": path.name, "source_sha256": digest,
               "source_arch": public, "source_layout": layout, "stored_as": "float16" if half else "float32"},
    )
    return model, card
