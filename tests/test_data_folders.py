"""CIFAR-100 (npz and torchvision pickles) and ImageFolder trees (ImageNet layout, read lazily).

Every image here is a real one: the bundled CIFAR-10 evaluation sample, re-labelled over 100 classes for CIFAR-100
and written as PNG/JPEG files (enlarged to ImageNet-like sizes) for the ImageFolder tests.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ftbc_core.imagefolder as imagefolder
from ftbc_core.assets import SAMPLES_DIR
from ftbc_core.data import DATASETS, DataError, get_info, iterate_batches, load_split, to_tensor, validate_arrays
from ftbc_core.imagefolder import LazyImages, image_folder_info, list_image_folder, load_image_folder, resize_size

C100 = DATASETS["cifar100"]
IMAGENET = DATASETS["imagenet"]


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    """The real CIFAR-10 sample, x uint8 [1000, 32, 32, 3], with labels spread over 100 classes: y int64 [1000]."""
    with np.load(SAMPLES_DIR / "cifar10-eval.npz", allow_pickle=False) as f:
        x = f["x"]
    y = np.random.default_rng(0).permutation(np.arange(len(x)) % 100).astype(np.int64)
    assert x.shape == (1000, 32, 32, 3) and np.bincount(y, minlength=100).tolist() == [10] * 100
    return x, y


# ----------------------------------------------------------------------------- CIFAR-100 writers


class Py2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 ``str`` (BINSTRING), like the original CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_cifar100_file(path: Path, x: np.ndarray, y: np.ndarray, protocol: int | str = 2,
                        labels_key: bytes = b"fine_labels") -> Path:
    """torchvision's ``cifar-100-python/{train,test}``: b'data' uint8 [n, 3072] (CHW), fine and coarse labels.

    ``protocol="legacy"`` mimics the real files: Python 2 strings and numpy 1.x module names.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {b"filenames": [f"img_{i}.png".encode() for i in range(len(y))], b"batch_label": b"training batch 1 of 1",
           labels_key: [int(v) for v in y], b"coarse_labels": [int(v) // 5 for v in y],
           b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1)}
    if protocol == "legacy":
        buf = io.BytesIO()
        Py2StylePickler(buf, protocol=2).dump(obj)
        payload = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        assert b"numpy.core.multiarray\n_reconstruct" in payload
        path.write_bytes(payload)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


class Evil:
    """Unpickling this with a naive loader runs ``touch marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- CIFAR-100


def test_cifar100_info_and_aliases() -> None:
    assert get_info("cifar100") is C100 and get_info("CIFAR-100") is C100 and get_info(" cifar-100 ") is C100
    assert (C100.name, C100.num_classes, C100.image_shape) == ("cifar100", 100, (32, 32, 3))
    names = C100.class_names
    assert len(names) == len(set(names)) == 100 and list(names) == sorted(names)  # fine labels are alphabetical
    assert (names[0], names[1], names[19], names[58], names[99]) == (
        "apple", "aquarium_fish", "cattle", "pickup_truck", "worm")
    assert C100.mean == (0.5071, 0.4865, 0.4409) and C100.std == (0.2673, 0.2564, 0.2762)


@pytest.mark.parametrize("protocol", ["legacy", 2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize(("split", "part"), [("train", slice(0, 600)), ("test", slice(600, 1000))])
def test_cifar100_torchvision_pickles(tmp_path: Path, sample, split: str, part: slice, protocol) -> None:
    x, y = sample[0][part], sample[1][part]
    write_cifar100_file(tmp_path / "cifar-100-python" / split, x, y, protocol)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy.core deprecation warning for the legacy module names
        data = load_split("cifar100", split, tmp_path)
    assert data.x.shape == x.shape and data.x.dtype == np.uint8 and data.x.flags.c_contiguous
    assert np.array_equal(data.x, x) and data.y.dtype == np.int64 and np.array_equal(data.y, y)
    # data_dir may also be the cifar-100-python folder itself
    assert np.array_equal(load_split("cifar100", split, tmp_path / "cifar-100-python").x, x)


@pytest.mark.parametrize("folder", ["cifar100", "cifar-100"])
def test_cifar100_npz(tmp_path: Path, sample, folder: str) -> None:
    x, y = sample
    (tmp_path / folder).mkdir()
    np.savez_compressed(tmp_path / folder / "test.npz", x=x, y=y)
    data = load_split("cifar100", "test", tmp_path)
    assert np.array_equal(data.x, x) and np.array_equal(data.y, y) and len(data) == 1000
    assert sorted(set(data.y.tolist())) == list(range(100))


def test_cifar100_labels_out_of_range_and_wrong_layout(tmp_path: Path, sample) -> None:
    x, y = sample[0][:5], np.array([0, 99, 100, 3, 4])
    path = write_cifar100_file(tmp_path / "cifar-100-python" / "test", x, y)
    with pytest.raises(DataError, match=rf"^{path.parent}: cifar100: labels must be in \[0, 100\), found values "
                                        r"in \[0, 100\]$"):
        load_split("cifar100", "test", tmp_path)
    write_cifar100_file(path, x, -y)
    with pytest.raises(DataError, match=r"labels must be in \[0, 100\), found values in \[-100, 0\]$"):
        load_split("cifar100", "test", tmp_path)
    write_cifar100_file(path, x, y % 10, labels_key=b"labels")  # a CIFAR-10 batch under the CIFAR-100 name
    with pytest.raises(DataError, match=rf"^CIFAR-100 file {path} lacks b'data' or b'fine_labels' \(keys: "):
        load_split("cifar100", "test", tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"^cannot read CIFAR-100 file {path}: "):
        load_split("cifar100", "test", tmp_path)
    # CIFAR-100 labels are out of range for CIFAR-10 (same image shape, so only the class count tells them apart)
    (tmp_path / "cifar10").mkdir()
    np.savez(tmp_path / "cifar10" / "test.npz", x=sample[0], y=sample[1])
    with pytest.raises(DataError, match=r"cifar10: labels must be in \[0, 10\), found values in \[0, 99\]$"):
        load_split("cifar10", "test", tmp_path)


def test_cifar100_folders_of_other_datasets_are_not_read(tmp_path: Path, sample) -> None:
    """A cifar10/ folder holds 10-class data that would pass CIFAR-100's checks: it must never be read as it."""
    x, y10 = sample[0][:20], np.arange(20) % 10
    for folder in ("cifar10", "mnist"):
        (tmp_path / folder).mkdir()
        np.savez(tmp_path / folder / "test.npz", x=x, y=y10)
        write_cifar100_file(tmp_path / folder / "test", x, y10)
        with pytest.raises(DataError, match=r"^no cifar100 test data found in .*skipped: it is named after another "
                                            r"dataset\)$"):
            load_split("cifar100", "test", tmp_path / folder)
    (tmp_path / "cifar100").mkdir()
    np.savez(tmp_path / "cifar100" / "test.npz", x=x, y=y10)
    with pytest.raises(DataError, match="^no cifar10 test data found in"):
        load_split("cifar10", "test", tmp_path / "cifar100")
    assert len(load_split("cifar100", "test", tmp_path / "cifar100")) == 20


def test_cifar100_nothing_found(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_split("cifar100", "train", tmp_path)
    assert str(err.value) == (f"no cifar100 train data found in {tmp_path}: expected {tmp_path}/cifar100/train.npz"
                              f" or {tmp_path}/cifar-100-python/train")


@pytest.mark.parametrize("nested", [False, True])
def test_cifar100_hostile_pickle_is_refused_and_never_runs(tmp_path: Path, nested: bool) -> None:
    marker = tmp_path / "pwned"
    payload = {b"data": Evil(marker), b"fine_labels": [0]} if nested else Evil(marker)
    path = tmp_path / "cifar-100-python" / "test"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError) as err:
        load_split("cifar100", "test", tmp_path)
    assert str(err.value) == f"refusing to unpickle posix.system from {path}: only numpy arrays are allowed"
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the payload is live: a naive loader does run it
    assert marker.exists()


# ----------------------------------------------------------------------------- ImageFolder writers

# (width, height, PIL mode, extension) of the images of each class, in the order they are written
LAYOUT = {
    "n02_dog": [(40, 30, "RGB", "png"), (30, 44, "RGB", "jpg"), (256, 300, "RGB", "png"), (300, 200, "L", "png")],
    "n01_cat": [(64, 64, "RGB", "JPEG"), (50, 40, "RGBA", "png"), (400, 256, "RGB", "png"), (33, 35, "P", "png")],
    "Zebra": [(256, 256, "RGB", "png"), (120, 90, "RGB", "jpeg"), (48, 260, "RGB", "PNG"), (224, 300, "RGB", "jpg")],
}
SORTED_CLASSES = ["Zebra", "n01_cat", "n02_dog"]  # code-point order, as torchvision's ImageFolder


def enlarge(img: np.ndarray, w: int, h: int, mode: str) -> Image.Image:
    """A real 32x32 image resized to (w, h) and converted to ``mode``."""
    pil = Image.fromarray(img).resize((w, h), Image.Resampling.BICUBIC)
    return pil.convert(mode, palette=Image.Palette.ADAPTIVE) if mode == "P" else pil.convert(mode)


def write_tree(split_dir: Path, images: np.ndarray, layout: dict = LAYOUT) -> dict[str, list[Path]]:
    """Class folders of image files made from ``images`` [n, 32, 32, 3]; returns the files written per class."""
    written, k = {}, 0
    for cls, specs in layout.items():
        (split_dir / cls).mkdir(parents=True)
        written[cls] = []
        for i, (w, h, mode, ext) in enumerate(specs):
            path = split_dir / cls / f"img{i:02d}.{ext}"
            enlarge(images[k], w, h, mode).save(path, quality=90) if ext.lower() in ("jpg", "jpeg") \
                else enlarge(images[k], w, h, mode).save(path)
            written[cls].append(path)
            k += 1
    return written


@pytest.fixture
def tree(tmp_path: Path, sample) -> Path:
    split_dir = tmp_path / "imagefolder" / "val"
    write_tree(split_dir, sample[0][:12])
    (split_dir / "n01_cat" / "notes.txt").write_text("not an image")  # ignored, like torchvision
    return split_dir


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Every image the lazy arrays decode, in call order."""
    calls: list[str] = []
    real = imagefolder.decode_image

    def counting(path: str, size: int) -> np.ndarray:
        calls.append(os.path.basename(os.path.dirname(path)) + "/" + os.path.basename(path))
        return real(path, size)

    monkeypatch.setattr(imagefolder, "decode_image", counting)
    return calls


def reference(split_dir: Path, size: int = 224) -> tuple[np.ndarray, list[int], list[str]]:
    """Independent result: torchvision's ImageFolder + Resize + CenterCrop on PIL images."""
    datasets = pytest.importorskip("torchvision.datasets")
    transforms = pytest.importorskip("torchvision.transforms")
    ds = datasets.ImageFolder(str(split_dir), transform=transforms.Compose(
        [transforms.Resize(resize_size(size)), transforms.CenterCrop(size)]))
    x = np.stack([np.asarray(ds[i][0]) for i in range(len(ds))])
    return x, list(ds.targets), list(ds.classes)


# ----------------------------------------------------------------------------- ImageFolder


def test_listing_is_sorted_and_decodes_nothing(tree: Path, decodes: list[str]) -> None:
    classes, files, y = list_image_folder(tree)
    assert classes == SORTED_CLASSES and y.dtype == np.int64 and y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert files[:2] == ["Zebra/img00.png", "Zebra/img01.jpeg"] and files[-1] == "n02_dog/img03.png"
    info = image_folder_info(tree)
    assert (info.name, info.num_classes, info.image_shape, info.class_names) == (
        "imagefolder", 3, (224, 224, 3), tuple(SORTED_CLASSES))
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    data = load_image_folder(tree, info)
    assert isinstance(data.x, LazyImages) and data.x.classes == tuple(SORTED_CLASSES)
    assert data.x.shape == (12, 224, 224, 3) and data.x.dtype == np.uint8 and data.x.ndim == 4 and len(data) == 12
    assert data.x.path(5) == str(tree / "n01_cat" / "img01.png")
    assert decodes == []


def test_pixels_and_labels_match_torchvision(tree: Path, decodes: list[str]) -> None:
    data = load_image_folder(tree, image_folder_info(tree))
    expected_x, expected_y, expected_classes = reference(tree)
    assert expected_classes == SORTED_CLASSES and data.y.tolist() == expected_y
    x = data.x[:]
    assert x.shape == (12, 224, 224, 3) and x.dtype == np.uint8
    assert np.array_equal(x, expected_x)  # PNG and JPEG alike, grey/RGBA/palette converted to RGB
    assert len(decodes) == 12 and len(set(decodes)) == 12  # each image decoded once (in worker threads)
    grey, palette = x[11], x[7]  # n02_dog/img03.png (mode L), n01_cat/img03.png (mode P)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])
    assert not np.array_equal(palette[..., 0], palette[..., 1])  # the palette image is in colour


def test_exact_crop_without_resizing(tmp_path: Path, sample) -> None:
    """Images whose shorter side is already 256 are only cropped: compare with plain numpy slicing."""
    split_dir = tmp_path / "val"
    layout = {"a": [(256, 300, "RGB", "png")], "b": [(400, 256, "RGB", "png")], "c": [(256, 256, "RGB", "png")]}
    files = write_tree(split_dir, sample[0][20:23], layout)
    data = load_image_folder(split_dir, image_folder_info(split_dir))
    src = [np.asarray(Image.open(files[c][0])) for c in "abc"]
    assert [s.shape for s in src] == [(300, 256, 3), (256, 400, 3), (256, 256, 3)]
    # top = round((300 - 224) / 2) = 38, left = round((256 - 224) / 2) = 16; left = round(176 / 2) = 88
    for got, want in zip(data.x[[0, 1, 2]], [src[0][38:262, 16:240], src[1][16:240, 88:312], src[2][16:240, 16:240]]):
        assert np.array_equal(got, want)
    small = load_image_folder(split_dir, image_folder_info(split_dir, size=32))  # any size: 32 -> resize to 37
    assert resize_size(32) == 37 and resize_size(224) == 256 and small.x[0].shape == (32, 32, 3)
    assert np.array_equal(small.x[[0, 1, 2]], reference(split_dir, size=32)[0])


def test_lazy_indexing_decodes_only_what_is_asked(tree: Path, decodes: list[str]) -> None:
    data = load_image_folder(tree, image_folder_info(tree))
    first = data.x[5]
    assert first.shape == (224, 224, 3) and decodes == ["n01_cat/img01.png"]
    assert np.array_equal(data.x[np.int64(-7)], first) and len(decodes) == 2
    batch = data.x[np.array([5, 0])]
    assert batch.shape == (2, 224, 224, 3) and np.array_equal(batch[0], first) and len(decodes) == 4
    assert data.x[2:4].shape == (2, 224, 224, 3) and data.x[::-5].shape == (3, 224, 224, 3) and len(decodes) == 9
    assert data.x[data.y == 2].shape == (4, 224, 224, 3) and len(decodes) == 13
    assert data.x[[]].shape == (0, 224, 224, 3) and data.x[12:].shape == (0, 224, 224, 3) and len(decodes) == 13
    for bad in (12, -13, [0, 12], np.zeros((1, 1), np.int64), [0.5], np.ones(3, bool)):
        with pytest.raises(IndexError):
            data.x[bad]
    assert len(decodes) == 13


def test_subset_pickle_and_pipeline_stay_lazy(tree: Path, decodes: list[str]) -> None:
    data = load_image_folder(tree, image_folder_info(tree))
    sub = data.subset([9, 2, 4])
    assert isinstance(sub.x, LazyImages) and sub.x.shape == (3, 224, 224, 3) and sub.y.tolist() == [2, 0, 1]
    assert isinstance(data.subset(slice(0, 5)).x, LazyImages) and len(data.subset(data.y == 1)) == 4
    assert isinstance(sub.subset(np.array([], np.int64)).x, LazyImages) and len(sub.subset([])) == 0
    again = pickle.loads(pickle.dumps(sub))
    assert isinstance(again.x, LazyImages) and again.y.tolist() == [2, 0, 1] and decodes == []
    assert np.array_equal(again.x[:], data.x[[9, 2, 4]])
    assert sorted(decodes) == sorted(["n02_dog/img01.jpg", "Zebra/img02.PNG", "n01_cat/img00.JPEG"] * 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.x = None  # type: ignore[misc]

    decodes.clear()
    xb, yb = next(iterate_batches(data, 5, shuffle=True, seed=3))
    assert xb.shape == (5, 3, 224, 224) and xb.dtype == torch.float32 and len(decodes) == 5
    assert sum(len(b[1]) for b in iterate_batches(data, 5)) == 12 and len(decodes) == 17
    assert torch.equal(to_tensor(data.x[[0]]), next(iterate_batches(data, 1))[0])

    from ftbc_core.experiment import calibration_images

    decodes.clear()
    calib = calibration_images(data, 6, seed=0, num_classes=3)
    assert calib.shape == (6, 3, 224, 224) and len(decodes) == 6
    assert sorted(d.split("/")[0] for d in decodes) == ["Zebra"] * 2 + ["n01_cat"] * 2 + ["n02_dog"] * 2


def test_validate_lazy_checks_metadata_only(tree: Path, decodes: list[str]) -> None:
    x = LazyImages(tree, list_image_folder(tree)[1], 224)
    with pytest.raises(DataError, match=r"^cifar10: x must have shape \[N, 32, 32, 3\], got \[12, 224, 224, 3\]$"):
        validate_arrays(x, np.zeros(12, np.int64), DATASETS["cifar10"])
    with pytest.raises(DataError, match=r"^imagenet: y must have shape \[12\] to match x, got \[3\]$"):
        validate_arrays(x, np.zeros(3, np.int64), IMAGENET)
    with pytest.raises(DataError, match=r"^imagenet: labels must be in \[0, 1000\), found values in \[0, 1000\]$"):
        validate_arrays(x, np.r_[np.zeros(11, np.int64), 1000], IMAGENET)
    with pytest.raises(DataError, match=r"^imagenet: expected at least one image, got N=0$"):
        validate_arrays(x.subset([]), np.zeros(0, np.int64), IMAGENET)
    assert validate_arrays(x, np.arange(12), IMAGENET).x is x and decodes == []


# ----------------------------------------------------------------------------- ImageNet through load_split


def imagenet_tree(split_dir: Path, png: Path, n: int = 1000) -> list[str]:
    """``n`` class folders, each with one (hard-linked) copy of ``png``; returns the class names."""
    names = [f"n{7 * k:08d}" for k in range(n)][::-1]  # created in reverse order: labels must not follow it
    for name in names:
        (split_dir / name).mkdir(parents=True)
        os.link(png, split_dir / name / f"{name}_1.png")
    return sorted(names)


@pytest.mark.parametrize(("where", "split", "folder"), [
    ("imagenet", "test", "val"), ("imagenet", "test", "test"), ("imagenet", "train", "train"),
    ("", "test", "val"), ("ilsvrc2012", "train", "train"),
])
def test_imagenet_load_split(tmp_path: Path, sample, decodes: list[str], where: str, split: str,
                             folder: str) -> None:
    png = tmp_path / "one.png"
    enlarge(sample[0][0], 300, 256, "RGB").save(png)
    classes = imagenet_tree(tmp_path / "data" / where / folder, png)
    data = load_split("imagenet", split, tmp_path / "data")
    assert isinstance(data.x, LazyImages) and data.x.shape == (1000, 224, 224, 3) and data.x.classes == tuple(classes)
    assert data.y.tolist() == list(range(1000)) and decodes == []
    assert data.x.path(999) == str(tmp_path / "data" / where / folder / classes[999] / f"{classes[999]}_1.png")
    pair = data.x[[0, 999]]
    assert np.array_equal(pair[0], pair[1]) and np.array_equal(pair[0], np.asarray(Image.open(png))[16:240, 38:262])
    assert len(decodes) == 2


def test_imagenet_val_preferred_and_class_count(tmp_path: Path, sample) -> None:
    split_dir = tmp_path / "imagenet" / "val"
    write_tree(split_dir, sample[0][:12])
    with pytest.raises(DataError) as err:
        load_split("imagenet", "test", tmp_path)
    assert str(err.value) == f"{split_dir} has 3 class folders but imagenet has 1000 classes"


def test_imagenet_nothing_found_and_other_datasets_folders(tmp_path: Path, sample) -> None:
    with pytest.raises(DataError) as err:
        load_split("imagenet", "test", tmp_path)
    assert str(err.value) == (
        f"no imagenet test data found in {tmp_path}: expected {tmp_path}/imagenet/test.npz or an image-folder tree "
        f"{tmp_path}/imagenet/val/<class>/<image> (or test/ instead of val/), one sub-folder per class")
    with pytest.raises(DataError, match=rf"expected .* or an image-folder tree {tmp_path}/imagenet/train/<class>/"
                                        r"<image>, one sub-folder per class$"):
        load_split("imagenet", "train", tmp_path)
    png = tmp_path / "one.png"
    enlarge(sample[0][0], 256, 256, "RGB").save(png)
    imagenet_tree(tmp_path / "mnist" / "val", png)  # an ImageNet-like tree inside a folder named after MNIST
    with pytest.raises(DataError, match=r"^no imagenet test data found in .*/mnist: .*\(folders directly in .*/mnist "
                                        r"are skipped: it is named after another dataset\)$"):
        load_split("imagenet", "test", tmp_path / "mnist")
    with pytest.raises(DataError, match="^no cifar10 test data found"):  # and class folders are not CIFAR data
        load_split("cifar10", "test", tmp_path / "mnist")


# ----------------------------------------------------------------------------- ImageFolder errors


def test_flat_folder_is_not_a_dataset(tmp_path: Path, sample) -> None:
    """Raw ImageNet val (50000 JPEGs, no class folders) must say which layout was expected."""
    split_dir = tmp_path / "imagenet" / "val"
    split_dir.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(sample[0][i]).save(split_dir / f"ILSVRC2012_val_{i:08d}.JPEG")
    with pytest.raises(DataError) as err:
        load_split("imagenet", "test", tmp_path)
    assert str(err.value) == (f"{split_dir} is not an image-folder dataset: expected one sub-folder per class holding "
                              f"its images, found no sub-folders (3 file(s))")
    with pytest.raises(DataError, match=rf"^cannot list {tmp_path / 'nope'}: "):
        image_folder_info(tmp_path / "nope")


def test_empty_class_folder(tree: Path) -> None:
    (tree / "n03_empty" / "sub").mkdir(parents=True)
    (tree / "n03_empty" / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as err:
        load_image_folder(tree, image_folder_info(tree))
    assert str(err.value).startswith(f"empty class folder {tree / 'n03_empty'}: expected at least one image (.jpg, ")
    assert "\n" not in str(err.value)


def test_hidden_folders_are_not_classes(tree: Path) -> None:
    (tree / ".ipynb_checkpoints").mkdir()
    (tree / ".cache" / "x").mkdir(parents=True)
    assert list_image_folder(tree)[0] == SORTED_CLASSES and image_folder_info(tree).num_classes == 3


def test_nested_images_are_found(tree: Path, sample) -> None:
    nested = tree / "n01_cat" / "more"
    nested.mkdir()
    Image.fromarray(sample[0][50]).save(nested / "deep.png")
    classes, files, y = list_image_folder(tree)
    assert "n01_cat/more/deep.png" in files and y[files.index("n01_cat/more/deep.png")] == 1
    assert reference(tree)[1] == y.tolist()  # torchvision walks sub-folders too


@pytest.mark.parametrize("damage", ["garbage", "truncated-png", "truncated-jpeg", "empty"])
def test_corrupt_image_is_named_when_decoded(tree: Path, damage: str) -> None:
    path = {"truncated-jpeg": tree / "n02_dog" / "img01.jpg"}.get(damage, tree / "n02_dog" / "img02.png")
    raw = path.read_bytes()
    path.write_bytes({"garbage": b"this is not an image at all" * 10, "empty": b""}.get(damage, raw[: len(raw) // 2]))
    data = load_image_folder(tree, image_folder_info(tree))  # listing never opens an image
    index = list_image_folder(tree)[1].index(str(path.relative_to(tree)))
    assert data.x[[0, 1, 2]].shape == (3, 224, 224, 3)
    for key in (index, [0, index, 3], slice(None)):  # alone, and inside a (threaded) batch
        with pytest.raises(DataError) as err:
            data.x[key]
        assert str(err.value).startswith(f"cannot decode image {path}: ") and "\n" not in str(err.value)


def test_non_square_or_grey_info_is_refused(tree: Path) -> None:
    info = image_folder_info(tree)
    with pytest.raises(DataError, match=r"^imagefolder: image-folder data needs a square RGB image shape, got "
                                        r"\(224, 200, 3\)$"):
        load_image_folder(tree, dataclasses.replace(info, image_shape=(224, 200, 3)))
