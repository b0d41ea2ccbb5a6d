"""What the repository ships: pretrained models in ``pretrained/`` and small real data samples in
``pretrained/samples/`` (so a fresh clone works with no data directory)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, ModelCard, read_card
from .data import DataError, ImageArrays, get_info, load_split, validate_arrays

__all__ = ["PRETRAINED_DIR", "SAMPLES_DIR", "list_pretrained", "resolve_checkpoint", "load_sample", "load_images"]

PRETRAINED_DIR = Path(os.environ.get("FTBC_PRETRAINED_DIR", Path(__file__).resolve().parent.parent / "pretrained"))
SAMPLES_DIR = PRETRAINED_DIR / "samples"
SAMPLE_KINDS = ("calib", "eval")


def list_pretrained(directory: Path | None = None) -> dict[str, ModelCard]:
    """``{name: card}`` of every readable checkpoint shipped in ``pretrained/``, sorted by name."""
    directory = Path(directory or PRETRAINED_DIR)
    cards = {}
    for path in sorted(directory.glob("*.safetensors")):
        try:
            cards[path.stem] = read_card(path)
        except CheckpointError:
            continue
    return cards


def resolve_checkpoint(name_or_path: str | Path, directory: Path | None = None) -> Path:
    """A shipped model's name (``resnet20-cifar10``) or a path -> the ``.safetensors`` path."""
    directory = Path(directory or PRETRAINED_DIR)
    candidate = Path(name_or_path)
    for path in (candidate, candidate.with_name(candidate.name + ".safetensors"),
                 directory / f"{name_or_path}.safetensors"):
        if path.is_file():
            return path
    names = ", ".join(list_pretrained(directory)) or "none"
    raise CheckpointError(f"no model {str(name_or_path)!r}: not a file, and not a shipped model ({names})")


def load_sample(dataset: str, kind: str) -> ImageArrays:
    """The bundled sample: ``calib`` (from the training split) or ``eval`` (from the test split)."""
    if kind not in SAMPLE_KINDS:
        raise DataError(f"sample kind must be one of {SAMPLE_KINDS}, got {kind!r}")
    info = get_info(dataset)
    path = SAMPLES_DIR / f"{dataset}-{kind}.npz"
    if not path.is_file():
        raise DataError(f"no bundled {kind} sample for {dataset} (expected {path})")
    try:
        with np.load(path, allow_pickle=False) as f:
            return validate_arrays(f["x"], f["y"], info)
    except (OSError, ValueError, KeyError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"bundled sample {path} is unreadable ({err})") from None


def load_images(dataset: str, split: str, data_dir: str | Path | None) -> tuple[ImageArrays, str]:
    """Images of a split from ``data_dir``, or the bundled sample when ``data_dir`` is None.

    Returns:
        ``(arrays, description)``, the description saying where the images came from.
    """
    if data_dir is None:
        kind = "calib" if split == "train" else "eval"
        data = load_sample(dataset, kind)
        return data, f"bundled {dataset} {kind} sample ({len(data)} images from the {split} split)"
    data = load_split(dataset, split, data_dir)
    return data, f"{dataset} {split} split from {data_dir} ({len(data)} images)"
