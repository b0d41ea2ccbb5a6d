"""--select auto: options chosen on held-out training images, never on the test split."""

import numpy as np
import pytest

from ftbc_core.calibration import METHODS
from ftbc_core.data import ImageArrays
from ftbc_core.experiment import ExperimentConfig, run_experiment
from ftbc_core.selection import select_options, split_held_out


def _arrays(n: int) -> ImageArrays:
    x = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(4, 1).repeat(4, 2)
    return ImageArrays(x, np.arange(n, dtype=np.int64) % 10)


def test_held_out_and_calibration_pool_split_the_training_images():
    train = _arrays(100)
    held, pool = split_held_out(train, 30, seed=3)
    ids_held, ids_pool = set(held.x[:, 0, 0, 0].tolist()), set(pool.x[:, 0, 0, 0].tolist())
    assert len(ids_held) == 30 and len(ids_pool) == 70 and not ids_held & ids_pool
    assert ids_held | ids_pool == set(range(100))
    again, _ = split_held_out(train, 30, seed=3)
    assert np.array_equal(again.x, held.x)  # reproducible
    assert len(split_held_out(train, 500, seed=0)[0]) == 50  # at most half is held out
    with pytest.raises(ValueError, match="held-out images must be >= 1"):
        split_held_out(train, 0, seed=0)


def test_the_best_held_out_score_wins(monkeypatch, tiny_cnn, mnist_like):
    from ftbc_core.snn import to_snn

    grid = ({"alpha": 0.1, "batches": 1}, {"alpha": 0.5, "batches": 1}, {"alpha": 0.2, "batches": 1})
    monkeypatch.setattr(type(METHODS["ftbc-alpha"]), "selection_grid", grid)
    scores = {0.1: 40.0, 0.5: 70.0, 0.2: 55.0}
    seen_alpha = []

    def simulate(net, data, steps):  # a stand-in scorer: the held-out accuracy of the α just calibrated
        return np.full(steps, scores[seen_alpha[-1]])

    original = METHODS["ftbc-alpha"].calibrate

    def calibrate(snn, ann, images, steps, options=None, progress=None):
        seen_alpha.append(options["alpha"])
        return original(snn, ann, images, steps, options, progress)

    monkeypatch.setattr(METHODS["ftbc-alpha"], "calibrate", calibrate)
    chosen, trials = select_options("ftbc-alpha", to_snn(tiny_cnn), tiny_cnn, mnist_like, _arrays(4), 3, 16,
                                    simulate)
    assert chosen == {"alpha": 0.5, "batches": 1} and [t.score for t in trials] == [40.0, 70.0, 55.0]
    # an option the user fixed keeps its value: only grid entries that agree with it are tried
    chosen, trials = select_options("ftbc-alpha", to_snn(tiny_cnn), tiny_cnn, mnist_like, _arrays(4), 3, 16,
                                    simulate, fixed={"alpha": 0.2})
    assert chosen["alpha"] == 0.2 and len(trials) == 1
    # a method without a grid has nothing to choose
    assert select_options("none", to_snn(tiny_cnn), tiny_cnn, mnist_like, _arrays(4), 3, 16, simulate) == ({}, [])


def test_run_experiment_selects_on_held_out_training_images(monkeypatch):
    grid = ({"alpha": 0.05, "batches": 1, "batch_size": 16}, {"alpha": 0.5, "batches": 1, "batch_size": 16})
    monkeypatch.setattr(type(METHODS["ftbc-alpha"]), "selection_grid", grid)
    cfg = ExperimentConfig("cnn-mnist", timesteps=2, methods=("none", "ftbc-alpha"), limit=40, calib_images=64,
                           select=True, val_images=50, select_max_t=2)
    result = run_experiment(cfg)
    trials = result.selection["ftbc-alpha"]
    assert [t.options["alpha"] for t in trials] == [0.05, 0.5]
    best = max(trials, key=lambda t: t.score).options
    assert {k: result.reports["ftbc-alpha"].options[k] for k in best} == best
    assert "none" not in result.selection
    payload = result.to_json_dict()
    assert [t["options"]["alpha"] for t in payload["selection"]["ftbc-alpha"]] == [0.05, 0.5]
