"""ImageFolder trees (ImageNet, Imagenette, ...): one sub-folder per class holding JPEG/PNG images, read lazily.

Listing a split only walks the folders (``os.scandir``/``os.walk``); no image is opened until it is indexed.
:class:`LazyImages` then behaves like a uint8 array ``[N, H, W, C]``: indexing it with an int, a slice or an
index array decodes just those images, with the public ImageNet preprocessing (torchvision's ``ImageFolder`` +
``Resize(round(size / 0.875))`` + ``CenterCrop(size)`` on PIL images): RGB, shorter side resized with
antialiased bilinear interpolation, centre crop.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from .data import DataError, DatasetInfo, ImageArrays, validate_arrays

__all__ = ["IMAGE_EXTENSIONS", "LazyImages", "decode_image", "resize_size", "find_classes", "list_image_folder",
           "image_folder_info", "load_image_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_DECODE_THREADS = min(8, os.cpu_count() or 1)  # PIL releases the GIL while decoding and resizing
_LAYOUT = "one sub-folder per class holding its images"


def _line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def resize_size(size: int) -> int:
    """Shorter side before the centre crop, as in the public ImageNet code: 256 for 224."""
    return round(size / 0.875)


def decode_image(path: str, size: int) -> np.ndarray:
    """Read one image file as RGB, resize its shorter side to ``resize_size(size)``, crop the centre.

    Matches torchvision's ``pil_loader`` + ``Resize`` (bilinear, antialiased) + ``CenterCrop``.

    Returns:
        uint8 [size, size, 3].
    """
    from PIL import Image  # local: only ImageFolder data needs Pillow

    try:
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short = resize_size(size)
        new_long = int(new_short * long / short)  # truncated, as torchvision does
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        img = img.crop((left, top, left + size, top + size))
        out = np.asarray(img, dtype=np.uint8)
    except Exception as e:  # PIL fails in many ways: UnidentifiedImageError, OSError (truncated), SyntaxError, ...
        raise DataError(f"cannot decode image {path}: {_line(e)}") from None
    return out


class LazyImages:
    """uint8 images ``[N, H, W, 3]`` decoded from files only when indexed (a read-only, array-like view).

    Args:
        root: folder the relative paths start from.
        files: relative paths (str or bytes), one per image.
        size: output height and width of every image.
        classes: the class-folder names, in label order.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, root: str | Path, files: Sequence[str | bytes] | np.ndarray, size: int,
                 classes: Sequence[str] = ()) -> None:
        self.root = os.fspath(root)
        arr = np.asarray(files)
        self._files = arr if arr.dtype.kind == "S" else np.array([os.fsencode(f) for f in files], dtype=bytes)
        if self._files.ndim != 1:
            raise DataError(f"LazyImages needs a 1-D list of files, got shape {list(self._files.shape)}")
        self.size = int(size)
        self.classes = tuple(classes)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self._files), self.size, self.size, 3)

    def __len__(self) -> int:
        return len(self._files)

    def __repr__(self) -> str:
        return f"LazyImages({self.root!r}, {len(self)} images, {self.size}x{self.size})"

    def path(self, i: int) -> str:
        """File of image ``i``."""
        return os.path.join(self.root, os.fsdecode(self._files[i]))

    def _positions(self, key: Any) -> np.ndarray:
        """An int, slice, 1-D integer array or boolean mask -> int64 positions [M] (checked, non-negative)."""
        if isinstance(key, slice):
            return np.arange(len(self))[key]
        idx = np.asarray(key)
        if idx.ndim != 1 or not (idx.dtype == bool or np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise IndexError(f"LazyImages takes an int, a slice or a 1-D integer/boolean index, got {key!r:.80}")
        if idx.dtype == bool:
            if idx.shape[0] != len(self):
                raise IndexError(f"boolean index of length {idx.shape[0]} for {len(self)} images")
            return np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} images: {int(idx.min())}..{int(idx.max())}")
        return np.where(idx < 0, idx + len(self), idx)

    def __getitem__(self, key: Any) -> np.ndarray:
        """Decode the selected images: an int gives uint8 [H, W, 3]; a slice or index array gives [M, H, W, 3]."""
        if isinstance(key, Integral):
            if not -len(self) <= int(key) < len(self):
                raise IndexError(f"index {int(key)} out of range for {len(self)} images")
            return decode_image(self.path(int(key)), self.size)
        paths = [self.path(int(i)) for i in self._positions(key)]
        out = np.empty((len(paths), self.size, self.size, 3), dtype=np.uint8)
        if len(paths) > 1 and _DECODE_THREADS > 1:
            with ThreadPoolExecutor(min(_DECODE_THREADS, len(paths))) as pool:
                for k, img in enumerate(pool.map(decode_image, paths, [self.size] * len(paths))):
                    out[k] = img
        else:
            for k, p in enumerate(paths):
                out[k] = decode_image(p, self.size)
        return out

    def subset(self, key: Any) -> LazyImages:
        """The selected images, still lazy (nothing is decoded)."""
        return LazyImages(self.root, self._files[self._positions(key)], self.size, self.classes)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """Decode every image (``np.asarray(lazy)``): only sensible for small folders."""
        x = self[slice(None)]
        return x if dtype is None else x.astype(dtype)


def find_classes(folder: Path) -> list[str]:
    """Sorted names of the class sub-folders of ``folder`` (hidden ``.name`` folders are skipped)."""
    try:
        with os.scandir(folder) as it:
            entries = [(e.name, e.is_dir()) for e in it]
    except OSError as e:
        raise DataError(f"cannot list {folder}: {_line(e)}") from None
    classes = sorted(name for name, is_dir in entries if is_dir and not name.startswith("."))
    if not classes:
        files = sum(not is_dir for _, is_dir in entries)
        raise DataError(f"{folder} is not an image-folder dataset: expected {_LAYOUT}, found no sub-folders "
                        f"({files} file(s))")
    return classes


def _class_files(folder: Path, cls: str) -> list[str]:
    """Image files under ``folder/cls`` (recursively, sorted as torchvision does), relative to ``folder``."""
    files = []
    for dirpath, _, names in sorted(os.walk(folder / cls, followlinks=True)):
        rel = os.path.relpath(dirpath, folder)
        files += [os.path.join(rel, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise DataError(f"empty class folder {folder / cls}: expected at least one image "
                        f"({', '.join(IMAGE_EXTENSIONS)})")
    return files


def list_image_folder(folder: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """List a split folder without opening any image.

    Returns:
        ``(classes, files, y)``: class names in label order, image paths relative to ``folder`` [N] and
        int64 labels [N] (label = position of the class folder in sorted order, as torchvision's ImageFolder).
    """
    folder = Path(folder)
    classes = find_classes(folder)
    files: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        found = _class_files(folder, cls)
        files += found
        labels += [label] * len(found)
    return classes, files, np.asarray(labels, dtype=np.int64)


def image_folder_info(folder: str | Path, size: int = 224, name: str = "imagefolder") -> DatasetInfo:
    """A DatasetInfo whose classes are the class folders of ``folder`` (ImageNet mean/std, RGB size x size)."""
    classes = tuple(find_classes(Path(folder)))
    return DatasetInfo(name, len(classes), (size, size, 3), classes, IMAGENET_MEAN, IMAGENET_STD)


def load_image_folder(folder: str | Path, info: DatasetInfo) -> ImageArrays:
    """A split folder of class sub-folders as lazy ImageArrays: x LazyImages [N, H, W, 3], y int64 [N].

    The number of class folders must equal ``info.num_classes``; images are decoded at ``info.image_shape``.
    """
    folder = Path(folder)
    h, w, c = info.image_shape
    if h != w or c != 3:
        raise DataError(f"{info.name}: image-folder data needs a square RGB image shape, got {info.image_shape}")
    classes, files, y = list_image_folder(folder)
    if len(classes) != info.num_classes:
        raise DataError(f"{folder} has {len(classes)} class folders but {info.name} has {info.num_classes} classes")
    x = LazyImages(folder, files, h, classes)
    try:
        return validate_arrays(x, y, info)
    except DataError as e:
        raise DataError(f"{folder}: {e}") from None
