"""Training augmentation (``ftbc train``): Cutout paints one clipped square per image with the fill pixel."""

import numpy as np
import pytest
import torch

from ftbc_core.cli import main
from ftbc_core.train import augment_batch

FILL = (125, 123, 114)


def _holes(cutout: int, n: int = 256) -> np.ndarray:
    x = torch.full((n, 3, 32, 32), 7, dtype=torch.uint8)  # 7 is no fill value: every changed pixel is a hole
    out = augment_batch(x, 0, False, torch.Generator().manual_seed(0), cutout, FILL).numpy()
    holes = out != 7
    for c, value in enumerate(FILL):  # every hole pixel holds its channel's fill, and all channels agree
        assert (out[:, c][holes[:, c]] == value).all()
    assert (holes == holes[:, :1]).all()
    return holes[:, 0]


def test_cutout_is_one_clipped_square_per_image():
    holes = _holes(16)
    rows, cols = holes.any(2), holes.any(1)
    # an axis-aligned rectangle: the hole is exactly its rows x its columns, each side contiguous
    assert (holes == (rows[:, :, None] & cols[:, None, :])).all()
    for side in (rows.sum(1), cols.sum(1)):
        assert side.min() >= 8 and side.max() == 16  # clipped at the border to half its side at most
    for r in rows:
        idx = np.flatnonzero(r)
        assert idx[-1] - idx[0] + 1 == len(idx)
    assert holes.any(0).all()  # every pixel can be cut out (the centre is anywhere in the image)


def test_cutout_off_changes_nothing():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    out = augment_batch(x, 0, False, torch.Generator().manual_seed(0), 0, FILL)
    assert torch.equal(out, x)


@pytest.mark.parametrize("value", ["-1", "40"])
def test_cutout_out_of_range_is_refused_in_one_line(tmp_path, capsys, value):
    code = main(["train", "--arch", "cnn", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out",
                 str(tmp_path / "m"), "--epochs", "1", "--cutout", value])
    err = capsys.readouterr().err
    assert code == 2 and "cutout" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m.safetensors").exists()
