"""Tests for ftbc_core.data; every dataset here is a tiny fake built in tmp_path."""

from __future__ import annotations

import gzip
import os
import io
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ftbc_core.data import (
    DATASETS,
    DataError,
    DatasetInfo,
    ImageArrays,
    balanced_indices,
    get_info,
    iterate_batches,
    load_split,
    to_tensor,
    validate_arrays,
)

MNIST = DATASETS["mnist"]
CIFAR = DATASETS["cifar10"]


# ----------------------------------------------------------------------------- fake data builders


def fake_images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def fake_labels(n: int, k: int = 10) -> np.ndarray:
    return (np.arange(n) % k).astype(np.int64)


def write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x=x, y=y)
    return path


class Py2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 ``str`` (BINSTRING), like the original CIFAR-10 files."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_cifar_batch(path: Path, x_nhwc: np.ndarray, y: np.ndarray, protocol: int | str = 2) -> Path:
    """A torchvision-style CIFAR batch: dict of bytes keys, b'data' uint8 [n, 3072] in CHW order.

    ``protocol="legacy"`` mimics the real files: Python 2 strings and numpy 1.x module names.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = x_nhwc.transpose(0, 3, 1, 2).reshape(len(x_nhwc), -1)
    obj = {b"batch_label": b"fake", b"labels": [int(v) for v in y], b"data": flat, b"filenames": [b"a.png"] * len(y)}
    if protocol == "legacy":
        buf = io.BytesIO()
        Py2StylePickler(buf, protocol=2).dump(obj)
        payload = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        assert b"_codecs" not in payload and b"numpy.core.multiarray\n_reconstruct" in payload
        path.write_bytes(payload)
        return path
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def write_cifar_dir(
    folder: Path, split: str, n_per_batch: int = 4, protocol: int | str = 2
) -> tuple[np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for i, name in enumerate(names):
        x, y = fake_images(n_per_batch, (32, 32, 3), seed=i), fake_labels(n_per_batch)
        write_cifar_batch(folder / name, x, y, protocol)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    magic = (0x800 + arr.ndim) if magic is None else magic
    dims = b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return magic.to_bytes(4, "big") + dims + arr.astype(np.uint8).tobytes()


def write_idx(path: Path, payload: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_idx_dir(folder: Path, split: str, n: int = 12, gz: bool = False) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    x, y = fake_images(n, (28, 28)), fake_labels(n)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", idx_bytes(x), gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", idx_bytes(y), gz)
    return x, y


class Evil:
    """Pickling this creates ``marker`` when (and only when) it is unpickled by a naive loader."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvilExec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


# ----------------------------------------------------------------------------- registry


def test_datasets_registry() -> None:
    assert set(DATASETS) == {"cifar10", "mnist", "fashion-mnist", "cifar100", "imagenet"}
    assert CIFAR.image_shape == (32, 32, 3) and MNIST.image_shape == (28, 28, 1)
    assert CIFAR.class_names[0] == "airplane" and CIFAR.class_names[-1] == "truck"
    assert MNIST.class_names == tuple(str(i) for i in range(10))
    fashion = DATASETS["fashion-mnist"]
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[-1] == "Ankle boot"
    assert fashion.mean == (0.2860,) and fashion.std == (0.3530,)
    assert CIFAR.mean == (0.4914, 0.4822, 0.4465) and MNIST.std == (0.3081,)
    for info in (CIFAR, MNIST, fashion):  # cifar100 and imagenet: tests/test_data_folders.py
        assert info.num_classes == len(info.class_names) == 10
        assert len(info.mean) == len(info.std) == info.image_shape[2]


def test_get_info_and_aliases() -> None:
    assert get_info("mnist") is MNIST
    assert get_info("Fashion_MNIST").name == "fashion-mnist"
    with pytest.raises(
        DataError, match=r"unknown dataset 'svhn': known datasets are cifar10, mnist, fashion-mnist, cifar100, imagenet$"
    ):
        get_info("svhn")


# ----------------------------------------------------------------------------- validate_arrays / ImageArrays


def test_validate_adds_channel_and_casts_labels() -> None:
    data = validate_arrays(fake_images(5, (28, 28)), np.arange(5, dtype=np.uint8), MNIST)
    assert data.x.shape == (5, 28, 28, 1) and data.x.dtype == np.uint8
    assert data.y.dtype == np.int64 and len(data) == 5


@pytest.mark.parametrize(
    ("x", "y", "info", "pattern"),
    [
        (np.zeros((2, 28, 28), np.float32), [0, 1], MNIST, r"mnist: x must have dtype uint8 .*got dtype float32"),
        ([[0]], [0], MNIST, r"x must be a numpy array, got list"),
        (
            np.zeros((2, 32, 32), np.uint8), [0, 1], CIFAR,
            r"cifar10: x must have shape \[N, 32, 32, 3\], got \[2, 32, 32\]",
        ),
        (
            np.zeros((2, 28, 28, 3), np.uint8), [0, 1], MNIST,
            r"x must have shape \[N, 28, 28, 1\] or \[N, 28, 28\], got \[2, 28, 28, 3\]",
        ),
        (np.zeros((0, 28, 28), np.uint8), [], MNIST, r"expected at least one image, got N=0"),
        (np.zeros((2, 28, 28), np.uint8), [0.0, 1.0], MNIST, r"y must be an integer label array, got dtype float64"),
        (np.zeros((2, 28, 28), np.uint8), [0, 1, 2], MNIST, r"y must have shape \[2\] to match x, got \[3\]"),
        (np.zeros((2, 28, 28), np.uint8), [0, 10], MNIST, r"labels must be in \[0, 10\), found values in \[0, 10\]"),
        (np.zeros((2, 28, 28), np.uint8), [-1, 3], MNIST, r"labels must be in \[0, 10\), found values in \[-1, 3\]"),
    ],
)
def test_validate_errors(x, y, info: DatasetInfo, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        validate_arrays(x, y, info)


def test_subset() -> None:
    data = validate_arrays(fake_images(6, (28, 28)), fake_labels(6), MNIST)
    sub = data.subset([4, 1])
    assert len(sub) == 2 and np.array_equal(sub.x, data.x[[4, 1]]) and sub.y.tolist() == [4, 1]
    assert len(data.subset(slice(0, 3))) == 3
    assert len(data.subset(data.y % 2 == 0)) == 3
    assert len(data.subset([])) == 0
    with pytest.raises(DataError, match="1-D"):
        data.subset([[0]])


# ----------------------------------------------------------------------------- npz layout


def test_npz_nested_and_channels(tmp_path: Path) -> None:
    x, y = fake_images(7, (28, 28)), fake_labels(7)
    write_npz(tmp_path / "mnist" / "train.npz", x, y)
    data = load_split("mnist", "train", tmp_path)
    assert data.x.shape == (7, 28, 28, 1) and np.array_equal(data.x[..., 0], x) and data.y.tolist() == y.tolist()
    xc = fake_images(3, (32, 32, 3))
    write_npz(tmp_path / "cifar10" / "test.npz", xc, fake_labels(3))
    assert np.array_equal(load_split("cifar10", "test", str(tmp_path)).x, xc)


@pytest.mark.parametrize("folder", ["fashion-mnist", "fashion_mnist", "fashionmnist"])
def test_npz_fashion_aliases(tmp_path: Path, folder: str) -> None:
    write_npz(tmp_path / folder / "test.npz", fake_images(4, (28, 28)), fake_labels(4))
    assert len(load_split("fashion-mnist", "test", tmp_path)) == 4


def test_npz_data_dir_is_dataset_folder(tmp_path: Path) -> None:
    write_npz(tmp_path / "mnist" / "test.npz", fake_images(3, (28, 28)), fake_labels(3))
    assert len(load_split("mnist", "test", tmp_path / "mnist")) == 3
    # A folder named after MNIST is never read as Fashion-MNIST (same shapes, different classes).
    with pytest.raises(DataError, match="no fashion-mnist test data found.*skipped: it is named after another dataset"):
        load_split("fashion-mnist", "test", tmp_path / "mnist")


def test_npz_preferred_over_torchvision(tmp_path: Path) -> None:
    write_npz(tmp_path / "mnist" / "test.npz", fake_images(3, (28, 28)), fake_labels(3))
    write_idx_dir(tmp_path / "MNIST" / "raw", "test", n=9)
    assert len(load_split("mnist", "test", tmp_path)) == 3


def test_npz_truncated(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "mnist" / "train.npz", fake_images(50, (28, 28)), fake_labels(50))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"cannot read npz file {path} \(corrupt or truncated\?\)"):
        load_split("mnist", "train", tmp_path)


def test_npz_missing_key_and_npy(tmp_path: Path) -> None:
    path = tmp_path / "mnist" / "train.npz"
    path.parent.mkdir()
    np.savez(path, images=fake_images(2, (28, 28)), y=fake_labels(2))
    with pytest.raises(DataError, match=rf"{path} must contain arrays 'x' and 'y', found \['images', 'y'\]"):
        load_split("mnist", "train", tmp_path)
    with open(path, "wb") as f:
        np.save(f, fake_images(2, (28, 28)))
    with pytest.raises(DataError, match="holds a single .npy array"):
        load_split("mnist", "train", tmp_path)


def test_npz_object_array_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "mnist" / "train.npz"
    path.parent.mkdir()
    np.savez(path, x=np.array([Evil(marker)], dtype=object), y=fake_labels(1))
    with pytest.raises(DataError, match="cannot read npz file"):
        load_split("mnist", "train", tmp_path)
    assert not marker.exists()


def test_npz_bad_arrays_name_the_file(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "mnist" / "train.npz", fake_images(2, (28, 28)), np.array([3, 12]))
    with pytest.raises(DataError, match=rf"^{path}: mnist: labels must be in \[0, 10\)"):
        load_split("mnist", "train", tmp_path)
    write_npz(path, fake_images(2, (28, 28)).astype(np.float32), fake_labels(2))
    with pytest.raises(DataError, match="got dtype float32"):
        load_split("mnist", "train", tmp_path)


# ----------------------------------------------------------------------------- CIFAR-10 pickles


@pytest.mark.parametrize("protocol", ["legacy", 2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_torchvision_layout(tmp_path: Path, split: str, protocol: int | str) -> None:
    x, y = write_cifar_dir(tmp_path / "cifar-10-batches-py", split, protocol=protocol)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy.core deprecation warning for legacy module names
        data = load_split("cifar10", split, tmp_path)
    assert data.x.shape == (len(x), 32, 32, 3) and data.x.flags.c_contiguous
    assert np.array_equal(data.x, x) and np.array_equal(data.y, y)  # CHW-flat -> NHWC round trip


def test_cifar_data_dir_is_batches_folder(tmp_path: Path) -> None:
    x, _ = write_cifar_dir(tmp_path / "cifar-10-batches-py", "test")
    assert np.array_equal(load_split("cifar10", "test", tmp_path / "cifar-10-batches-py").x, x)


def test_cifar_incomplete_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_dir(folder, "train")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=rf"incomplete CIFAR-10 folder {folder}: missing data_batch_3"):
        load_split("cifar10", "train", tmp_path)


@pytest.mark.parametrize("evil_cls", [Evil, EvilExec])
@pytest.mark.parametrize("nested", [False, True])
def test_cifar_malicious_pickle_is_refused(tmp_path: Path, evil_cls: type, nested: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.parent.mkdir()
    payload = {b"data": evil_cls(marker), b"labels": [0]} if nested else evil_cls(marker)
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=2)
    with pytest.raises(DataError, match=rf"refusing to unpickle .* from {path}: only numpy arrays are allowed"):
        load_split("cifar10", "test", tmp_path)
    assert not marker.exists()


def test_cifar_corrupt_and_malformed_batches(tmp_path: Path) -> None:
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_cifar_batch(path, fake_images(3, (32, 32, 3)), fake_labels(3))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"cannot read CIFAR-10 batch {path}"):
        load_split("cifar10", "test", tmp_path)
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, f, protocol=2)
    with pytest.raises(DataError, match=r"lacks b'data' or b'labels'"):
        load_split("cifar10", "test", tmp_path)
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DataError, match=r"b'data' must be uint8 \[n, 3072\], got uint8 \[2, 100\]"):
        load_split("cifar10", "test", tmp_path)
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f, protocol=2)
    with pytest.raises(DataError, match=r"labels must be in \[0, 10\)"):
        load_split("cifar10", "test", tmp_path)


# ----------------------------------------------------------------------------- idx files


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("name", "sub"), [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")])
def test_idx_torchvision_layout(tmp_path: Path, gz: bool, name: str, sub: str) -> None:
    for split in ("train", "test"):
        x, y = write_idx_dir(tmp_path / sub, split, n=10 if split == "train" else 5, gz=gz)
        data = load_split(name, split, tmp_path)
        assert data.x.shape == (len(x), 28, 28, 1) and np.array_equal(data.x[..., 0], x)
        assert data.y.dtype == np.int64 and np.array_equal(data.y, y)


def test_idx_in_data_dir_itself_debian_style(tmp_path: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    x, _ = write_idx_dir(folder, "test", gz=True)
    assert np.array_equal(load_split("fashion-mnist", "test", folder).x[..., 0], x)
    assert len(load_split("fashion-mnist", "test", tmp_path)) == len(x)  # <data_dir>/fashion-mnist/ also works
    with pytest.raises(DataError, match="no mnist test data found"):
        load_split("mnist", "test", folder)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_bad_magic(tmp_path: Path, gz: bool) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_idx_dir(raw, "train")
    path = write_idx(raw / "train-images-idx3-ubyte", idx_bytes(fake_images(2, (28, 28)), magic=0x0D03), gz)
    if gz:
        (raw / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match=rf"bad idx magic in {path}: expected 0x00000803, got 0x00000d03"):
        load_split("mnist", "train", tmp_path)


def test_idx_labels_bad_magic(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_idx_dir(raw, "test")
    write_idx(raw / "t10k-labels-idx1-ubyte", idx_bytes(fake_images(2, (28, 28))), gz=False)
    with pytest.raises(DataError, match=r"bad idx magic .*t10k-labels-idx1-ubyte: expected 0x00000801, got 0x00000803"):
        load_split("mnist", "test", tmp_path)


def test_idx_wrong_size_and_corrupt_gzip(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_idx_dir(raw, "train")
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    expected = rf"wrong size for idx file {path}: header shape \[12, 28, 28\] needs 9408 bytes, found 9398$"
    with pytest.raises(DataError, match=expected):
        load_split("mnist", "train", tmp_path)
    path.write_bytes(path.read_bytes() + b"\0" * 20)
    with pytest.raises(DataError, match="needs 9408 bytes, found more than 9408$"):
        load_split("mnist", "train", tmp_path)
    path.unlink()
    gz_path = raw / "train-images-idx3-ubyte.gz"
    gz_path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=rf"cannot read idx file {gz_path}"):
        load_split("mnist", "train", tmp_path)


def test_idx_missing_partner(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_idx_dir(raw, "test")
    (raw / "t10k-labels-idx1-ubyte").unlink()
    expected = r"found .*t10k-images-idx3-ubyte but not its partner .*t10k-labels-idx1-ubyte\[\.gz\]"
    with pytest.raises(DataError, match=expected):
        load_split("mnist", "test", tmp_path)


def test_idx_label_count_mismatch(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_idx_dir(raw, "test", n=6)
    write_idx(raw / "t10k-labels-idx1-ubyte", idx_bytes(fake_labels(5)), gz=False)
    with pytest.raises(DataError, match=r"y must have shape \[6\] to match x, got \[5\]"):
        load_split("mnist", "test", tmp_path)


# ----------------------------------------------------------------------------- load_split errors


def test_missing_and_non_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"data directory {tmp_path / 'nope'} does not exist"):
        load_split("mnist", "train", tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is not a directory"):
        load_split("mnist", "train", tmp_path / "file")


def test_nothing_found_names_expected_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_split("cifar10", "train", tmp_path)
    assert str(err.value) == (
        f"no cifar10 train data found in {tmp_path}: expected {tmp_path}/cifar10/train.npz"
        f" or {tmp_path}/cifar-10-batches-py/data_batch_1..5"
    )
    with pytest.raises(DataError) as err:
        load_split("fashion-mnist", "test", tmp_path)
    assert str(err.value) == (
        f"no fashion-mnist test data found in {tmp_path}: expected {tmp_path}/fashion-mnist/test.npz"
        f" or {tmp_path}/FashionMNIST/raw/t10k-{{images-idx3,labels-idx1}}-ubyte[.gz]"
    )
    assert "\n" not in str(err.value)


def test_bad_split_and_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown split 'val': expected 'train' or 'test'"):
        load_split("mnist", "val", tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'svhn'"):
        load_split("svhn", "train", tmp_path)


# ----------------------------------------------------------------------------- tensors and sampling


def test_to_tensor() -> None:
    x = fake_images(3, (5, 4, 3))
    x[0, 0, 0] = [0, 128, 255]
    t = to_tensor(x)
    assert t.shape == (3, 3, 5, 4) and t.dtype == torch.float32 and t.is_contiguous()
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert t[0, :, 0, 0].tolist() == pytest.approx([0.0, 128 / 255, 1.0])
    assert torch.equal(t, torch.from_numpy(x.astype(np.float32) / 255).permute(0, 3, 1, 2))
    x.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert to_tensor(x).shape == (3, 3, 5, 4)
    assert to_tensor(x[::-1]).shape == (3, 3, 5, 4)  # negative strides are fine
    with pytest.raises(DataError, match=r"to_tensor expects uint8 images \[N, H, W, C\], got float32"):
        to_tensor(x.astype(np.float32))
    with pytest.raises(DataError, match="got uint8 \\[5, 4, 3\\]"):
        to_tensor(x[0])


def test_balanced_indices() -> None:
    y = np.repeat(np.arange(10), 20)
    np.random.default_rng(1).shuffle(y)
    idx = balanced_indices(y, 53, seed=0, num_classes=10)
    assert idx.dtype == np.int64 and len(idx) == 53 and len(set(idx.tolist())) == 53
    assert np.all(np.diff(idx) > 0)
    counts = np.bincount(y[idx], minlength=10)
    assert counts.tolist() == [6, 6, 6] + [5] * 7
    assert np.array_equal(idx, balanced_indices(y, 53, seed=0, num_classes=10))
    assert not np.array_equal(idx, balanced_indices(y, 53, seed=1, num_classes=10))
    assert len(balanced_indices(y, 0, seed=0, num_classes=10)) == 0
    with pytest.raises(DataError, match="class 0 has only 20 examples, 21 needed for a balanced set of 210"):
        balanced_indices(y, 210, seed=0, num_classes=10)
    with pytest.raises(DataError, match="1-D integer labels"):
        balanced_indices(y.astype(float), 10, seed=0, num_classes=10)


def test_iterate_batches() -> None:
    data = validate_arrays(fake_images(10, (28, 28)), fake_labels(10), MNIST)
    batches = list(iterate_batches(data, 4))
    assert [len(yb) for _, yb in batches] == [4, 4, 2]
    xb, yb = batches[0]
    assert xb.shape == (4, 1, 28, 28) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.arange(10))

    shuffled = list(iterate_batches(data, 3, shuffle=True, seed=5))
    labels = torch.cat([b[1] for b in shuffled])
    assert sorted(labels.tolist()) == list(range(10)) and labels.tolist() != list(range(10))
    again = torch.cat([b[1] for b in iterate_batches(data, 3, shuffle=True, seed=5)])
    assert torch.equal(labels, again)
    for xb, yb in shuffled:  # images stay paired with their labels
        for img, lab in zip(xb, yb):
            assert torch.equal(img, to_tensor(data.x[int(lab)][None])[0])

    limited = list(iterate_batches(data, 4, shuffle=True, seed=5, limit=7))
    assert torch.equal(torch.cat([b[1] for b in limited]), labels[:7])
    assert sum(len(b[1]) for b in iterate_batches(data, 4, limit=100)) == 10
    assert list(iterate_batches(data, 4, limit=0)) == []
    with pytest.raises(DataError, match="batch_size must be >= 1"):
        next(iterate_batches(data, 0))
