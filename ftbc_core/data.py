"""Offline loading of image-classification datasets: CIFAR-10/100, MNIST, Fashion-MNIST and ImageNet.

Nothing is ever downloaded. Inside a user-supplied ``data_dir`` the loader looks for, in order:

1. npz files ``<data_dir>/<name>/<split>.npz`` (or ``<data_dir>/<split>.npz``) holding ``x`` (uint8 NHWC or NHW)
   and ``y``, always read with ``allow_pickle=False``;
2. torchvision's layout: CIFAR-10 batches / CIFAR-100 files (read with a restricted unpickler that can only
   rebuild numpy arrays, so a hostile file cannot run code) or raw MNIST-style idx files, optionally gzipped;
3. for ImageNet, an ImageFolder tree ``<data_dir>[/imagenet]/{train,val}/<class>/<image>``, read lazily
   (see :mod:`ftbc_core.imagefolder`): ``x`` is then a :class:`~ftbc_core.imagefolder.LazyImages` that decodes
   only the images it is indexed with.

Images stay uint8 ``[N, H, W, C]`` until :func:`to_tensor` turns a batch into float ``[B, C, H, W]`` in [0, 1];
models normalise themselves, so no mean/std is applied here.
"""

from __future__ import annotations

import gzip
import importlib
import math
import pickle
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

if TYPE_CHECKING:
    from .imagefolder import LazyImages

__all__ = ["DataError", "DatasetInfo", "DATASETS", "get_info", "ImageArrays", "validate_arrays", "load_split",
           "to_tensor", "balanced_indices", "iterate_batches"]


class DataError(ValueError):
    """Raised for a missing/malformed data folder or bad arrays; the message is one line naming what was expected."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset; ``image_shape`` is (H, W, C), mean/std are per channel on [0, 1] pixels."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        "cifar10", 10, (32, 32, 3),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    ),
    "mnist": DatasetInfo("mnist", 10, (28, 28, 1), tuple(str(i) for i in range(10)), (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 10, (28, 28, 1),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (0.2860,), (0.3530,),
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, (32, 32, 3),
        ("apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
         "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
         "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
         "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
         "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
         "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
         "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
         "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
         "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television",
         "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
         "woman", "worm"),
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    ),
    # ImageNet-1k from an ImageFolder tree; class names are the folder names (WordNet ids), kept on x.classes.
    "imagenet": DatasetInfo("imagenet", 1000, (224, 224, 3), (), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# Lower-case folder names a dataset may live under (first = canonical); also accepted as names by get_info.
_FOLDERS = {
    "cifar10": ("cifar10", "cifar-10"),
    "mnist": ("mnist",),
    "fashion-mnist": ("fashion-mnist", "fashion_mnist", "fashionmnist"),
    "cifar100": ("cifar100", "cifar-100"),
    "imagenet": ("imagenet", "imagenet-1k", "ilsvrc2012"),
}
_TORCHVISION_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "mnist": "MNIST/raw",
                     "fashion-mnist": "FashionMNIST/raw"}
_IMAGE_FOLDER_DATASETS = frozenset({"imagenet"})
_IMAGE_FOLDER_SPLITS = {"train": ("train",), "test": ("val", "test")}
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_MAX_IDX_BYTES = 1 << 31  # refuse absurd idx headers instead of trying to allocate them
_PICKLE_ALLOWED = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol-5 array pickles
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


def _line(err: BaseException) -> str:
    """An exception's message squeezed onto one line."""
    return " ".join(str(err).split()) or type(err).__name__


def get_info(name: str) -> DatasetInfo:
    """Look a dataset up by name (case-insensitive; folder aliases such as ``fashion_mnist`` also work)."""
    key = name.strip().lower() if isinstance(name, str) else ""
    for canonical, aliases in _FOLDERS.items():
        if key in aliases:
            return DATASETS[canonical]
    raise DataError(f"unknown dataset {name!r}: known datasets are {', '.join(DATASETS)}")


def _is_lazy(x: Any) -> bool:
    """True for :class:`~ftbc_core.imagefolder.LazyImages` (imported here, since that module imports this one)."""
    if isinstance(x, np.ndarray):
        return False
    from .imagefolder import LazyImages  # local: imagefolder imports this module

    return isinstance(x, LazyImages)


@dataclass(frozen=True, eq=False)
class ImageArrays:
    """A split: ``x`` uint8 [N, H, W, C] (a numpy array, or LazyImages decoding on indexing), ``y`` int64 [N]."""

    x: np.ndarray | LazyImages
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray | Sequence[int] | slice) -> ImageArrays:
        """Examples selected by a 1-D index array, boolean mask or slice: x [M, H, W, C], y [M]."""
        if not isinstance(idx, slice):
            idx = np.asarray(idx)
            if idx.ndim != 1:
                raise DataError(f"subset index must be 1-D, got shape {list(idx.shape)}")
            if idx.size == 0:
                idx = idx.astype(np.int64)
        x = self.x.subset(idx) if _is_lazy(self.x) else self.x[idx]  # lazy images stay lazy: nothing decoded
        return ImageArrays(x, self.y[idx])


def validate_arrays(x: Any, y: Any, info: DatasetInfo) -> ImageArrays:
    """Check ``x`` uint8 [N, H, W, C] (or [N, H, W] when C == 1) and integer labels ``y`` [N] against ``info``.

    ``x`` may be LazyImages: then only its shape metadata is checked, no image is decoded.

    Returns:
        ImageArrays with a C axis always present and ``y`` as int64.
    """
    h, w, c = info.image_shape
    lazy = _is_lazy(x)
    if not (lazy or isinstance(x, np.ndarray)):
        raise DataError(f"{info.name}: x must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.uint8:
        raise DataError(f"{info.name}: x must have dtype uint8 (pixels 0..255), got dtype {x.dtype}")
    shape = list(x.shape)
    if x.ndim == 3 and c == 1:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != info.image_shape:
        alt = f" or [N, {h}, {w}]" if c == 1 else ""
        raise DataError(f"{info.name}: x must have shape [N, {h}, {w}, {c}]{alt}, got {shape}")
    if x.shape[0] < 1:
        raise DataError(f"{info.name}: expected at least one image, got N=0")
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{info.name}: y must be an integer label array, got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{info.name}: y must have shape [{x.shape[0]}] to match x, got {list(y.shape)}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= info.num_classes:
        raise DataError(f"{info.name}: labels must be in [0, {info.num_classes}), found values in [{lo}, {hi}]")
    return ImageArrays(x if lazy else np.ascontiguousarray(x), y.astype(np.int64))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays; any other global raises DataError before it is loaded."""

    def __init__(self, file: BinaryIO, source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name} from {self.source}: only numpy arrays are allowed")
        # Prefer numpy 2's private module names (avoids the numpy.core deprecation shim), fall back for numpy 1.
        candidates = [module.replace("numpy.core.", "numpy._core."), module.replace("numpy._core.", "numpy.core.")]
        for mod in dict.fromkeys(candidates):
            try:
                return getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError):
                continue
        raise DataError(f"cannot resolve {module}.{name} needed by {self.source}")


def _read_cifar_batch(
    path: Path, labels_key: str = "labels", kind: str = "CIFAR-10 batch"
) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python pickle (a CIFAR-10 batch, or with ``labels_key="fine_labels"`` a CIFAR-100 file).

    Returns:
        (x uint8 [n, 32, 32, 3], y [n]).
    """
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:  # a corrupt pickle can fail in many ways (UnpicklingError, EOFError, TypeError, ...)
        raise DataError(f"cannot read {kind} {path}: {_line(e)}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{kind} {path} must hold a dict with b'data' and b'{labels_key}', got {type(obj).__name__}")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(labels_key.encode(), obj.get(labels_key))
    if data is None or labels is None:
        raise DataError(f"{kind} {path} lacks b'data' or b'{labels_key}' (keys: {sorted(map(repr, obj))})")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{kind} {path}: b'data' must be uint8 [n, 3072], got {got}")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), np.asarray(labels)


def _load_cifar_dir(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """CIFAR-10 python batches in ``folder``; None if none of the split's files are there."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    present = [folder / n for n in names if (folder / n).is_file()]
    if not present:
        return None
    if len(present) < len(names):
        missing = [n for n in names if not (folder / n).is_file()]
        raise DataError(f"incomplete CIFAR-10 folder {folder}: missing {', '.join(missing)}")
    xs, ys = zip(*(_read_cifar_batch(p) for p in present))
    return np.concatenate(xs), np.concatenate(ys)


def _load_cifar100_dir(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """torchvision's ``cifar-100-python/{train,test}`` file in ``folder`` (fine labels); None if it is not there."""
    path = folder / split
    return _read_cifar_batch(path, "fine_labels", "CIFAR-100 file") if path.is_file() else None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse a uint8 idx file (magic 0x0000080<ndim>, big-endian uint32 dims, raw bytes); gzip if ``.gz``."""
    expected = 0x800 + ndim
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) != 4 or int.from_bytes(head, "big") != expected:
                raise DataError(f"bad idx magic in {path}: expected 0x{expected:08x}, got 0x{head.hex() or 'EMPTY'}")
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) != 4 * ndim:
                raise DataError(f"truncated idx header in {path}: expected {ndim} dimension(s)")
            dims = tuple(int.from_bytes(raw_dims[i:i + 4], "big") for i in range(0, 4 * ndim, 4))
            count = math.prod(dims)
            if count > _MAX_IDX_BYTES:
                raise DataError(f"implausible idx shape {list(dims)} in {path}")
            data = f.read(count + 1)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read idx file {path}: {_line(e)}") from None
    if len(data) != count:
        size = f"more than {count}" if len(data) > count else str(len(data))
        raise DataError(f"wrong size for idx file {path}: header shape {list(dims)} needs {count} bytes, found {size}")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims).copy()


def _find_file(folder: Path, stem: str) -> Path | None:
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def _load_idx_dir(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """MNIST-style idx image + label files in ``folder``; None if neither is there."""
    stems = (f"{_IDX_PREFIX[split]}-images-idx3-ubyte", f"{_IDX_PREFIX[split]}-labels-idx1-ubyte")
    images, labels = (_find_file(folder, s) for s in stems)
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        found, lost = (images, stems[1]) if labels is None else (labels, stems[0])
        raise DataError(f"found {found} but not its partner {folder / lost}[.gz]")
    return _read_idx(images, 3), _read_idx(labels, 1)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of an npz archive, never unpickling anything."""
    try:
        archive = np.load(path, allow_pickle=False)
        if isinstance(archive, np.ndarray):
            raise DataError(f"{path} holds a single .npy array: expected an npz archive with arrays 'x' and 'y'")
        with archive:
            if "x" not in archive.files or "y" not in archive.files:
                raise DataError(f"{path} must contain arrays 'x' and 'y', found {archive.files}")
            return archive["x"], archive["y"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"cannot read npz file {path} (corrupt or truncated?): {_line(e)}") from None


def _dir_of_other_dataset(folder: Path, name: str) -> bool:
    """True if ``folder`` (or, for ``.../raw``, its parent) is named after a different dataset."""
    folder = folder.resolve()
    label = (folder.parent.name if folder.name.lower() == "raw" else folder.name).lower()
    return any(label in aliases for other, aliases in _FOLDERS.items() if other != name)


def load_split(name: str, split: str, data_dir: str | Path) -> ImageArrays:
    """Load the ``"train"`` or ``"test"`` split of ``name`` from ``data_dir`` (no downloads).

    Tries ``<data_dir>/<name>/<split>.npz`` (any alias folder), then ``<data_dir>/<split>.npz``, then the
    torchvision layout (CIFAR-10 batches, ``cifar-100-python/<split>`` or idx files), or for ImageNet the
    ImageFolder tree ``<data_dir>[/imagenet]/{train | val or test}/<class>/<image>``. ``data_dir`` itself counts
    as the dataset folder unless it is named after another dataset (so an ``mnist/`` folder is never read as
    Fashion-MNIST).

    Returns:
        ImageArrays: x uint8 [N, H, W, C], y int64 [N], validated against ``get_info(name)``; for an ImageFolder
        tree x is LazyImages (images decoded when indexed).
    """
    info = get_info(name)
    if split not in _IDX_PREFIX:
        raise DataError(f"unknown split {split!r}: expected 'train' or 'test'")
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DataError(f"data directory {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data directory {root} is not a directory")
    root_is_dataset = not _dir_of_other_dataset(root, info.name)

    candidates = [root / folder / f"{split}.npz" for folder in _FOLDERS[info.name]]
    candidates += [root / f"{split}.npz"] if root_is_dataset else []
    for path in candidates:
        if path.is_file():
            return _validated(_load_npz(path), path, info)

    if info.name in _IMAGE_FOLDER_DATASETS:
        return _load_image_folder_split(root, info, split, root_is_dataset)
    tv_dir = root / _TORCHVISION_DIRS[info.name]
    if info.name == "cifar10":
        folders, loader = [tv_dir], _load_cifar_dir
        files = "data_batch_1..5" if split == "train" else "test_batch"
    elif info.name == "cifar100":
        folders, loader, files = [tv_dir], _load_cifar100_dir, split
    else:
        folders, loader = [tv_dir] + [root / f for f in _FOLDERS[info.name]], _load_idx_dir
        files = f"{_IDX_PREFIX[split]}-{{images-idx3,labels-idx1}}-ubyte[.gz]"
    folders += [root] if root_is_dataset else []
    for folder in folders:
        if folder.is_dir():
            arrays = loader(folder, split)
            if arrays is not None:
                return _validated(arrays, folder, info)
    npz_hint = root / _FOLDERS[info.name][0] / f"{split}.npz"
    note = "" if root_is_dataset else f" (files directly in {root} are skipped: it is named after another dataset)"
    raise DataError(f"no {info.name} {split} data found in {root}: expected {npz_hint} or {tv_dir}/{files}{note}")


def _load_image_folder_split(root: Path, info: DatasetInfo, split: str, root_is_dataset: bool) -> ImageArrays:
    """The first of ``<root>/<alias>/<split folder>`` and ``<root>/<split folder>`` that exists, read lazily."""
    from .imagefolder import load_image_folder  # local: imagefolder imports this module

    names = _IMAGE_FOLDER_SPLITS[split]
    parents = [root / folder for folder in _FOLDERS[info.name]] + ([root] if root_is_dataset else [])
    for parent in parents:
        for name in names:
            if (parent / name).is_dir():
                return load_image_folder(parent / name, info)
    npz_hint = root / _FOLDERS[info.name][0] / f"{split}.npz"
    tree = f"{root / _FOLDERS[info.name][0] / names[0]}/<class>/<image>"
    also = f" (or {names[1]}/ instead of {names[0]}/)" if len(names) > 1 else ""
    note = "" if root_is_dataset else f" (folders directly in {root} are skipped: it is named after another dataset)"
    raise DataError(f"no {info.name} {split} data found in {root}: expected {npz_hint} or an image-folder tree "
                    f"{tree}{also}, one sub-folder per class{note}")


def _validated(arrays: tuple[np.ndarray, np.ndarray], source: Path, info: DatasetInfo) -> ImageArrays:
    try:
        return validate_arrays(arrays[0], arrays[1], info)
    except DataError as e:
        raise DataError(f"{source}: {e}") from None


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 images [N, H, W, C] -> contiguous float32 [N, C, H, W] in [0, 1] (not normalised)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"to_tensor expects uint8 images [N, H, W, C], got {got}")
    if not (x.flags.writeable and x.flags.c_contiguous):
        x = np.array(x, order="C")  # torch.from_numpy warns on read-only and rejects negative strides
    chw = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # permute while still uint8 (4x less copying)
    return chw.to(torch.float32).div_(255.0)


def balanced_indices(y: np.ndarray, n: int, seed: int, num_classes: int) -> np.ndarray:
    """Reproducible class-balanced choice of ``n`` indices into labels ``y`` [N].

    Each class gets ``n // num_classes`` examples, the first ``n % num_classes`` classes one more; drawn without
    replacement with ``np.random.default_rng(seed)``.

    Returns:
        int64 [n], sorted ascending.
    """
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"balanced_indices expects 1-D integer labels, got {y.dtype} {list(y.shape)}")
    if num_classes < 1 or n < 0:
        raise DataError(f"balanced_indices needs num_classes >= 1 and n >= 0, got {num_classes} and {n}")
    rng = np.random.default_rng(seed)
    per, extra = divmod(n, num_classes)
    chosen = []
    for c in range(num_classes):
        want = per + (1 if c < extra else 0)
        pool = np.flatnonzero(y == c)
        if pool.size < want:
            raise DataError(f"class {c} has only {pool.size} examples, {want} needed for a balanced set of {n}")
        chosen.append(rng.choice(pool, size=want, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def iterate_batches(
    data: ImageArrays, batch_size: int, *, shuffle: bool = False, seed: int = 0, limit: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x float32 [B, C, H, W] in [0, 1], y int64 [B]) batches; the last one may be smaller.

    ``shuffle`` permutes with ``np.random.default_rng(seed)``; ``limit`` keeps only the first ``limit`` images
    (after shuffling).
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0 or None, got {limit}")
    total = len(data) if limit is None else min(limit, len(data))
    order = np.random.default_rng(seed).permutation(len(data))[:total] if shuffle else None
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        idx = slice(start, stop) if order is None else order[start:stop]
        yield to_tensor(data.x[idx]), torch.tensor(data.y[idx], dtype=torch.int64)
