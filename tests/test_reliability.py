"""Reliability and safety under bad input, faults and load (the issue's checklist; the table in tests/README.md says
which test checks what). Hostile checkpoints and data folders are also covered by test_checkpoint.py and
test_data.py, the fuzzing by test_fuzz.py.

Everything runs on the shipped cnn-mnist with tiny settings, or on nets of a few neurons, in well under a minute.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pickle
import sys
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from safetensors.torch import save as st_save_bytes
from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException
from streamlit.runtime.scriptrunner_utils.script_requests import RerunData
from streamlit.testing.v1 import AppTest
from torch import nn

import ftbc_core.calibration.ftbc as ftbc_module
from ftbc_core import checkpoint, experiment
from ftbc_core.assets import list_pretrained
from ftbc_core.calibration import METHODS, fit_biases, get_method
from ftbc_core.checkpoint import CheckpointError, load_checkpoint, read_card, save_checkpoint
from ftbc_core.cli import main
from ftbc_core.neuron import current_run
from ftbc_core.data import ImageArrays
from ftbc_core.biases import apply_biases, read_biases
from ftbc_core.calibration.base import selectable_methods
from ftbc_core.evaluate import ann_accuracy
from ftbc_core.experiment import ExperimentConfig, calibrate_and_save, run_experiment, simulate_dataset
from ftbc_core.models import build_model
from ftbc_core.neuron import QCFS
from ftbc_core.snn import MAX_TIMESTEPS, to_snn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from dashboard import caches, models, runs  # noqa: E402

APP = str(ROOT / "dashboard" / "app.py")
MODEL = ROOT / "pretrained" / "cnn-mnist.safetensors"
CARD = json.loads((ROOT / "pretrained" / "cnn-mnist.json").read_text())
TINY = {"timesteps": 3, "limit": 10, "batches": 1, "batch_size": 8}  # dashboard form defaults for these tests
QUICK = ["--calib-batches", "1", "--calib-batch-size", "8", "--limit", "10"]
UPLOAD_LIMIT = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"] * 2**20


def cli(capsys, *args: str) -> tuple[int, str]:
    """Run ``ftbc ARGS --threads 1``; returns the exit code and the last line on stderr (never a traceback)."""
    code = main([*args, "--threads", "1"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    return code, lines[-1] if lines else ""


def write_mnist(root: Path, n_train: int, n_test: int, *, dtype=np.uint8, shape=(28, 28)) -> Path:
    """A fake MNIST folder in the npz layout (labels 0, 1, 2, ...)."""
    (root / "mnist").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, *shape)).astype(dtype)
        np.savez(root / "mnist" / f"{split}.npz", x=x, y=(np.arange(n) % 10).astype(np.int64))
    return root


def leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes still lying around."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# == checkpoints and uploads ====================================================================================
def _checkpoint_bytes(card: dict, tensors: dict[str, torch.Tensor]) -> bytes:
    return st_save_bytes(tensors, metadata={"ftbc_card": json.dumps(card)})


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    model, _ = load_checkpoint(MODEL)
    return {k: v.clone().contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_infinite_weights_are_refused(weights, tmp_path, value):
    bad = dict(weights)
    bad["classifier.0.weight"] = bad["classifier.0.weight"].clone()
    bad["classifier.0.weight"][3, 7] = value
    data = _checkpoint_bytes(CARD, bad)
    (tmp_path / "inf.safetensors").write_bytes(data)
    for source in (data, tmp_path / "inf.safetensors"):
        with pytest.raises(CheckpointError, match="NaN or infinite values in classifier.0.weight"):
            load_checkpoint(source)


@pytest.mark.parametrize("lam", [0.0, -0.5])
def test_non_positive_qcfs_threshold_is_refused(weights, lam):
    bad = dict(weights)
    bad["features.5.threshold"] = torch.tensor(lam)
    with pytest.raises(CheckpointError, match=r"QCFS threshold λ = -?0(\.5)? in features.5; it must be > 0"):
        load_checkpoint(_checkpoint_bytes(CARD, bad))


@pytest.mark.parametrize("field,value", [
    ("class_names", 5), ("levels", "four"), ("levels", None), ("num_classes", -1), ("num_classes", 1.5),
    ("mean", 5), ("std", [0.0]), ("arch", ["cnn"]), ("activation", "tanh"), ("extra", 5), ("in_channels", True),
])
def test_malformed_card_fields_are_one_line_errors(weights, field, value):
    with pytest.raises(CheckpointError, match=f"the model card's {field} must be "):
        load_checkpoint(_checkpoint_bytes({**CARD, field: value}, weights))


@pytest.mark.parametrize("meta", [5, [1], "text", None])
def test_metadata_that_is_not_an_object_means_no_card(tmp_path, meta):
    header = json.dumps({"__metadata__": meta}).encode()
    data = len(header).to_bytes(8, "little") + header
    with pytest.raises(CheckpointError, match="has no FTBC model card"):
        load_checkpoint(data)
    (tmp_path / "odd.safetensors").write_bytes(data)
    (tmp_path / "good.safetensors").symlink_to(MODEL)
    with pytest.raises(CheckpointError, match="has no FTBC model card"):
        read_card(tmp_path / "odd.safetensors")
    assert list(list_pretrained(tmp_path)) == ["good"]  # the odd file is skipped, the listing still works


def test_non_checkpoint_files_up_to_the_upload_limit(tmp_path):
    """Streamlit accepts uploads up to server.maxUploadSize; every kind of junk of that size is a quick message."""
    limit = UPLOAD_LIMIT
    path = tmp_path / "big.safetensors"
    path.write_bytes((limit - 8).to_bytes(8, "little") + b"{" + b"\xff" * (limit - 9))  # a header of ~200 MiB
    cases = {"zeros": lambda: bytes(limit), "ones": lambda: b"\xff" * limit, "frame": path.read_bytes,
             "frame on disk": lambda: path}
    for name, make in cases.items():  # one at a time: at most a few copies of the limit in memory
        source = make()
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        assert size == limit, name
        with pytest.raises(CheckpointError, match="is not a safetensors checkpoint"):
            load_checkpoint(source)
        del source
    huge = tmp_path / "huge.safetensors"
    with open(huge, "wb") as f:  # sparse: nothing is written, and the loader must not read it
        f.truncate(checkpoint.MAX_CHECKPOINT_BYTES + 1)
    with pytest.raises(CheckpointError, match="is larger than 1024 MiB"):
        load_checkpoint(huge)


# == dashboard helpers ==========================================================================================
@pytest.fixture
def new_app(monkeypatch, calls):
    """A factory of fresh dashboard sessions (the caches are cleared once per test)."""
    st.cache_data.clear()
    st.cache_resource.clear()

    def make() -> AppTest:
        app = AppTest.from_file(APP, default_timeout=120)
        app.query_params.update({"model": "cnn-mnist", "T": str(TINY["timesteps"]),
                                 **{k: str(v) for k, v in TINY.items() if k != "timesteps"}})
        app.run()
        assert not app.exception
        return app

    return make


def press_run(app: AppTest) -> AppTest:
    app.button(key="run_button").click().run()
    assert not app.exception, app.exception
    return app


def errors(app: AppTest) -> list[str]:
    return [e.value for e in app.error]


def test_dashboard_refuses_a_malicious_pickle_and_an_upload_at_the_limit(new_app, calls, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    app = new_app()
    app.selectbox(key="model").set_value(models.UPLOAD)
    uploads = {"evil.safetensors": pickle.dumps({"state_dict": Payload()}), "big.safetensors": b"\xff" * UPLOAD_LIMIT}
    for name, data in uploads.items():
        app.file_uploader(key="upload").set_value((name, data, "application/octet-stream"))
        press_run(app)
        assert errors(app) == [f"Cannot use {name}: the uploaded file is not a safetensors checkpoint "
                               "(or it is truncated)"]
    assert not marker.exists() and not calls and "run" not in app.session_state


# == inputs: T ==================================================================================================
BAD_T = [0, -1, MAX_TIMESTEPS + 1]


@pytest.mark.parametrize("timesteps", BAD_T)
def test_bad_timesteps_through_the_python_api(tiny_cnn, mnist_like, tmp_path, timesteps):
    snn = to_snn(tiny_cnn)
    data = ImageArrays(np.zeros((2, 28, 28, 1), np.uint8), np.zeros(2, np.int64))
    message = f"T must be between 1 and {MAX_TIMESTEPS}, got {timesteps}"
    attempts = [lambda: fit_biases(snn, tiny_cnn, mnist_like, timesteps),
                lambda: simulate_dataset(snn, tiny_cnn, data, timesteps),
                lambda: run_experiment(ExperimentConfig("cnn-mnist", timesteps=timesteps)),
                lambda: calibrate_and_save("cnn-mnist", data_dir=None, timesteps=timesteps, out=str(tmp_path / "b"))]
    attempts += [lambda m=m: get_method(m).calibrate(snn, tiny_cnn, mnist_like, timesteps, {"batches": 1})
                 for m in selectable_methods() if "batches" in METHODS[m].defaults]  # the others copy the network
    for attempt in attempts:
        with pytest.raises(ValueError, match=message):
            attempt()
    with pytest.raises(ValueError, match="must be an integer"):
        run_experiment(ExperimentConfig("cnn-mnist", timesteps=2.5))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command,value", [("evaluate", "0"), ("evaluate", "-3"), ("evaluate", "1,4097"),
                                           ("calibrate", "4097")])
def test_bad_timesteps_through_the_cli(capsys, command, value):
    code, last = cli(capsys, command, "--model", "cnn-mnist", "--timesteps", value)
    assert code == 2 and last.startswith(f"ftbc {command}: error: the number of time steps T must be between 1 and "
                                         f"{MAX_TIMESTEPS}")


def test_zero_timesteps_for_calibrate_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--model", "cnn-mnist", "--timesteps", "0"])
    assert exit_info.value.code == 2 and "--timesteps: must be >= 1, got 0" in capsys.readouterr().err


def _start_run_script(timesteps: int) -> None:
    """A one-off dashboard script: start a run with a configuration the form cannot produce."""
    from dashboard import models, runs
    from ftbc_core.experiment import ExperimentConfig as Config

    options = {"alpha": 0.5, "batches": 1, "batch_size": 8, "rho": 4, "seed": 0}
    runs.start_run(Config("cnn-mnist", timesteps=timesteps, limit=5, method_options=options),
                   models.shipped_ref("cnn-mnist"))


@pytest.mark.parametrize("timesteps", [0, MAX_TIMESTEPS + 1])
def test_bad_timesteps_through_the_dashboard(new_app, calls, timesteps):
    app = AppTest.from_function(_start_run_script, args=(timesteps,), default_timeout=60)
    app.run()
    assert not app.exception
    assert errors(app) == [f"the number of time steps T must be between 1 and {MAX_TIMESTEPS}, got {timesteps}"]
    assert "run" not in app.session_state  # refused by the core before any work: nothing kept
    calls.clear()
    form = new_app()  # and the form itself only offers 1..64
    for value in (0, 65):
        form.number_input(key="timesteps").set_value(value)
        press_run(form)
        assert form.number_input(key="timesteps").value == TINY["timesteps"]
    assert [c.timesteps for c in calls] == [TINY["timesteps"]]


# == inputs: memory =============================================================================================
@pytest.fixture
def no_simulation(monkeypatch):
    """Make any calibration or simulation fail loudly (memory refusals must happen before them), on a machine
    with 16 GiB free whatever this one has."""
    def refuse(*_a, **_k):
        raise AssertionError("the run was not refused before simulating")

    monkeypatch.setattr(ftbc_module, "fit_biases", refuse)
    monkeypatch.setattr(experiment, "simulate", refuse)
    monkeypatch.setattr(experiment, "load_images", refuse)
    monkeypatch.setattr(experiment, "available_memory_bytes", lambda: 16 * 2**30)


def test_memory_estimate_refuses_a_huge_T(no_simulation):
    model, card = load_checkpoint(MODEL)
    with pytest.raises(ValueError, match=r"this run would need about 1\d\d\.\d GiB, more than 80% of the 16.0 GiB "
                       "available: lower T or the"):
        experiment.check_memory(model, card, [(4, 8), (MAX_TIMESTEPS, 64)])  # ~150 GiB for cnn-mnist
    experiment.check_memory(model, card, [(4, 8), (64, 64)])  # the largest the dashboard offers passes


@pytest.mark.parametrize("args,little_memory", [
    (["calibrate", "--timesteps", "4096"], False),
    (["evaluate", "--timesteps", "4096", "--methods", "ftbc"], False),
    (["evaluate", "--timesteps", "1,2,64", "--methods", "none,ftbc-exact", "--limit", "5"], True),
])
def test_cli_refuses_runs_too_large_for_memory(capsys, monkeypatch, no_simulation, args, little_memory):
    if little_memory:  # a modest T, on a machine with (pretend) 8 MiB left
        monkeypatch.setattr(experiment, "available_memory_bytes", lambda: 8 * 2**20)
    code, last = cli(capsys, *args, "--model", "cnn-mnist")
    assert code == 2 and "would need about" in last and "lower T or the (calibration) batch size" in last


# == inputs: datasets ===========================================================================================
def test_empty_datasets_are_clear_errors(tiny_cnn, tmp_path, capsys):
    empty = ImageArrays(np.zeros((0, 28, 28, 1), np.uint8), np.zeros(0, np.int64))
    snn = to_snn(tiny_cnn)
    for attempt, message in [(lambda: simulate_dataset(snn, tiny_cnn, empty, 2), "cannot evaluate on an empty"),
                             (lambda: ann_accuracy(tiny_cnn, empty), "cannot evaluate on an empty"),
                             (lambda: fit_biases(snn, tiny_cnn, torch.zeros(0, 1, 28, 28), 2), "at least one image"),
                             (lambda: calibrate_and_save("cnn-mnist", data_dir=None, timesteps=2, calib_images=0),
                              "calib_images must be >= 1")]:
        with pytest.raises(ValueError, match=message):
            attempt()
    data = write_mnist(tmp_path / "data", 0, 0)
    out = tmp_path / "b.safetensors"
    for command in (["evaluate", "--timesteps", "2"], ["calibrate", "--timesteps", "2", "--out", str(out)]):
        code, last = cli(capsys, *command, "--model", "cnn-mnist", "--data-dir", str(data))
        assert code == 2 and last.endswith("mnist: expected at least one image, got N=0")
    assert not out.exists()


def test_single_image_datasets_evaluate_and_calibrate(tmp_path, capsys):
    data = write_mnist(tmp_path / "data", 1, 1)
    result = tmp_path / "r.json"
    code, _ = cli(capsys, "evaluate", "--model", "cnn-mnist", "--data-dir", str(data), "--timesteps", "1,4",
                  "--methods", ",".join(selectable_methods()), "--json", str(result), "--calib-batch-size", "4")
    assert code == 0
    payload = json.loads(result.read_text())
    assert payload["n_images"] == 1 and len(payload["rows"]) == 2 * len(selectable_methods())
    assert {r["accuracy"] for r in payload["rows"]} <= {0.0, 100.0}
    snn = to_snn(load_checkpoint(MODEL)[0])
    for method in ("ftbc", "ftbc-exact", "ftbc-layer"):
        out = tmp_path / f"{method}.safetensors"
        code, _ = cli(capsys, "calibrate", "--model", "cnn-mnist", "--data-dir", str(data), "--timesteps", "3",
                      "--method", method, "--out", str(out))
        assert code == 0
        tensors, _ = read_biases(out)  # refuses non-finite biases
        apply_biases(snn, tensors, 3, (1, 28, 28))
        assert all(n.bias.shape[0] == 3 for n in snn.neurons)


@pytest.mark.parametrize("problem,message", [
    ("float images", "x must have dtype uint8 (pixels 0..255), got dtype float32"),
    ("cifar-shaped images", "mnist: x must have shape [N, 28, 28, 1] or [N, 28, 28], got [4, 32, 32, 3]"),
    ("truncated file", "cannot read npz file"),
    ("no train split", "no mnist train data found"),
])
def test_bad_data_folders_through_the_cli(tmp_path, capsys, problem, message):
    root = tmp_path / "data"
    if problem == "float images":
        write_mnist(root, 4, 4, dtype=np.float32)
    elif problem == "cifar-shaped images":
        write_mnist(root, 4, 4, shape=(32, 32, 3))
    else:
        write_mnist(root, 4, 4)
        train = root / "mnist" / "train.npz"
        if problem == "truncated file":
            train.write_bytes(train.read_bytes()[:100])
        else:
            train.unlink()
    code, last = cli(capsys, "calibrate", "--model", "cnn-mnist", "--data-dir", str(root), "--timesteps", "2",
                     "--out", str(tmp_path / "b.safetensors"))
    assert code == 2 and message in last
    assert not (tmp_path / "b.safetensors").exists()


def test_models_that_do_not_fit_their_dataset_are_clear_errors(tmp_path, capsys):
    model, card = load_checkpoint(MODEL)
    cases = {
        "cifar": (model, dataclasses.replace(card, dataset="cifar10", image_size=32),
                  "model 'cnn-mnist' takes 1-channel images, but cifar10 images have 3 channel(s)"),
        "seven": (build_model("cnn", "qcfs", 4, num_classes=7, mean=card.mean, std=card.std),
                  dataclasses.replace(card, num_classes=7, class_names=tuple("0123456")),
                  "model 'cnn-mnist' has 7 classes, but mnist has 10"),
    }
    for name, (ann, bad_card, message) in cases.items():
        path = save_checkpoint(ann, bad_card, tmp_path / name)
        for command in (["evaluate", "--timesteps", "2", "--limit", "5"], ["calibrate", "--timesteps", "2"]):
            code, last = cli(capsys, *command, "--model", str(path))
            assert code == 2 and last.endswith(message), last


def test_wrong_image_shape_to_the_snn_is_an_error_and_leaves_it_usable(tiny_cnn, mnist_like):
    snn = to_snn(tiny_cnn)
    x = mnist_like[:3]
    with torch.no_grad():
        before = snn(x, 4)
        with pytest.raises(RuntimeError, match="channels"):
            snn(torch.rand(3, 3, 28, 28), 4)
        with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
            snn(torch.rand(3, 1, 32, 32), 4)
        with pytest.raises(RuntimeError, match="type"):
            snn(x.double(), 4)
        with pytest.raises(RuntimeError, match="outside"):  # the failed calls left no run behind
            current_run()
        torch.testing.assert_close(snn(x, 4), before, rtol=0, atol=0)


def test_uint8_images_to_the_snn_are_refused(tiny_cnn, mnist_like):
    with pytest.raises(TypeError, match="float images in \\[0, 1\\], got dtype torch.uint8"):
        with torch.no_grad():
            to_snn(tiny_cnn)((mnist_like[:2] * 255).to(torch.uint8), 2)


# == inputs: α, batches, ρ ======================================================================================
BAD_VALUES = {"alpha": [0, -1, float("nan"), float("inf"), 1e6], "batches": [0, -2], "batch_size": [0],
              "passes": [0], "rho": [-1, 65]}
MESSAGES = {"alpha": r"alpha must be in \(0, 10\]", "batches": "batches must be >= 1",
            "batch_size": "batch size must be >= 1", "passes": "passes must be >= 1",
            "rho": r"rho must be in \[0, 64\]"}


@pytest.mark.parametrize("method", selectable_methods())
def test_bad_options_for_every_method(tiny_cnn, mnist_like, method):
    snn = to_snn(tiny_cnn)
    keys = [k for k in METHODS[method].defaults if k in BAD_VALUES]
    for key in keys:
        for value in BAD_VALUES[key]:
            with pytest.raises(ValueError, match=MESSAGES[key]):
                get_method(method).calibrate(snn, tiny_cnn, mnist_like, 3, {key: value})
            cfg = ExperimentConfig("no-such-model", timesteps=3, methods=(method,), method_options={key: value})
            with pytest.raises(ValueError, match=MESSAGES[key]):  # before the model is even looked up
                run_experiment(cfg)
    assert keys or method == "none"  # every other method has options to check
    for key, values in BAD_VALUES.items():  # the function behind the bias methods checks its own arguments
        if key != "rho":
            with pytest.raises(ValueError, match=MESSAGES[key]):
                fit_biases(snn, tiny_cnn, mnist_like, 3, **{key: values[0]})


@pytest.mark.parametrize("args,message", [
    (["evaluate", "--methods", "none,ftbc", "--alpha", "0"], "alpha must be in (0, 10], got 0.0"),
    (["evaluate", "--methods", "none,ftbc-exact", "--alpha", "0.5"], "--alpha applies to none of the chosen methods"),
    (["evaluate", "--methods", "ftbc", "--alpha", "nan"], "alpha must be in (0, 10], got nan"),
    (["evaluate", "--methods", "ftbc-layer", "--alpha", "1e6"], "alpha must be in (0, 10], got 1000000.0"),
    (["evaluate", "--methods", "none,ftbc", "--calib-batches", "0"], "batches must be >= 1, got 0"),
    (["evaluate", "--methods", "cos", "--rho", "65"], "rho must be in [0, 64], got 65"),
    (["calibrate", "--method", "ftbc-exact", "--calib-batches", "0"], "batches must be >= 1, got 0"),
    (["calibrate", "--method", "ftbc", "--alpha", "-0.1"], "alpha must be in (0, 10], got -0.1"),
])
def test_bad_options_through_the_cli(capsys, no_simulation, args, message):
    code, last = cli(capsys, *args, "--model", "cnn-mnist", "--timesteps", "2")
    assert code == 2 and message in last and "\n" not in last


# == faults while writing results ===============================================================================
CALIBRATE = ["calibrate", "--model", "cnn-mnist", "--timesteps", "2", "--calib-batches", "1", "--calib-batch-size",
             "8"]


@pytest.mark.parametrize("fault,code,message", [
    (OSError(errno.ENOSPC, "No space left on device"), 2, "No space left on device"),
    (KeyboardInterrupt(), 130, "ftbc calibrate: interrupted"),
])
def test_a_failed_write_leaves_no_partial_file(tmp_path, capsys, monkeypatch, fault, code, message):
    out = tmp_path / "biases.safetensors"
    out.write_bytes(b"the previous complete file")

    def failing_fsync(_fd):
        raise fault

    monkeypatch.setattr(os, "fsync", failing_fsync)  # atomic_write_bytes: after the data went to the temp file
    got, last = cli(capsys, *CALIBRATE, "--out", str(out))
    assert got == code and message in last
    assert out.read_bytes() == b"the previous complete file" and not leftovers(tmp_path)
    fresh = tmp_path / "fresh.safetensors"
    assert cli(capsys, *CALIBRATE, "--out", str(fresh))[0] == code
    assert not fresh.exists() and not leftovers(tmp_path)


def test_a_failed_evaluation_writes_no_json(tmp_path, capsys, monkeypatch):
    real = experiment.simulate
    seen = []

    def crash_on_second_method(*args, **kwargs):
        seen.append(1)
        if len(seen) == 2:
            raise ValueError("simulated failure in the second method")
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment, "simulate", crash_on_second_method)
    result = tmp_path / "r.json"
    code, last = cli(capsys, "evaluate", "--model", "cnn-mnist", "--timesteps", "2", "--methods", "none,ftbc",
                     "--json", str(result), "--csv", str(tmp_path / "r.csv"), *QUICK)
    assert code == 2 and last == "ftbc evaluate: error: simulated failure in the second method"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    folder = tmp_path / "a-folder"
    folder.mkdir()
    monkeypatch.setattr(experiment, "simulate", real)
    code, last = cli(capsys, "evaluate", "--model", "cnn-mnist", "--timesteps", "2", "--methods", "none",
                     "--json", str(folder), "--limit", "5")
    assert code == 2 and "Is a directory" in last and not list(folder.iterdir()) and not leftovers(tmp_path)


def test_save_checkpoint_failure_leaves_no_file(tmp_path, monkeypatch, tiny_cnn):
    card = read_card(MODEL)

    def failing_replace(_src, _dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output error"):
        save_checkpoint(tiny_cnn, card, tmp_path / "model")
    assert not list(tmp_path.iterdir())


# == numerics: layers that never fire, always fire, constant channels, dead layers ===============================
def _tiny_ann(case: str) -> nn.Module:
    """conv-QCFS-conv-QCFS-pool-linear-QCFS-linear on 1x6x6 images; layer "3" (the second QCFS) is the one under
    test, except for ``dead input`` (layer "1")."""
    torch.manual_seed(0)
    lam = 1e6 if case == "huge threshold" else 1.0
    ann = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), QCFS(4, 1.0), nn.Conv2d(3, 4, 3, padding=1), QCFS(4, lam),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 6), QCFS(4, 1.0), nn.Linear(6, 5))
    conv = ann[2]
    with torch.no_grad():
        if case == "never fires":  # inputs are spikes >= 0: negative weights and bias keep z < 0
            conv.weight.copy_(-conv.weight.abs())
            conv.bias.fill_(-1.0)
        elif case == "always fires":  # z = 50 >> θ = 1
            conv.weight.zero_()
            conv.bias.fill_(50.0)
        elif case == "constant channel":  # channel 0 gets z = 0.3 everywhere, always
            conv.weight[0].zero_()
            conv.bias[0] = 0.3
        elif case == "dead layer":
            conv.weight.zero_()
            conv.bias.zero_()
        elif case == "dead input":
            ann[0].weight.zero_()
            ann[0].bias.zero_()
    return ann.eval()


def _spikes(net, layer: str, x: torch.Tensor, steps: int) -> torch.Tensor:
    """``[T, B, ...]`` spikes of one layer."""
    seen = []
    neuron = net.net.get_submodule(layer)
    hook = lambda _n, t, _u, s: seen.append(s.clone()) if t >= net.latency else None  # noqa: E731
    with torch.no_grad():
        net.simulate(x, steps + net.latency, hooks={neuron: (hook,)})
    return torch.stack(seen)


@pytest.mark.parametrize("case", ["never fires", "huge threshold", "always fires", "constant channel", "dead layer",
                                  "dead input"])
@pytest.mark.parametrize("method", selectable_methods())
def test_degenerate_layers_give_finite_biases(case, method):
    ann = _tiny_ann(case)
    x = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    layer = "1" if case == "dead input" else "3"
    with torch.no_grad():
        act = ann[: int(layer) + 1](x)  # the ANN activation of the layer under test
    theta = float(ann[int(layer)].threshold.detach())
    if case == "always fires":
        assert bool((act == theta).all())
    elif case != "constant channel":
        assert bool((act == 0).all())
    opts = {k: v for k, v in {"batches": 2, "batch_size": 8, "alpha": 10}.items() if k in METHODS[method].defaults}
    net, report = get_method(method).calibrate(to_snn(ann), ann, x, 6, opts)
    for neuron in net.neurons:
        assert bool(torch.isfinite(neuron.bias).all()), neuron.name
        assert np.isfinite(report.biases.get(neuron.name, np.zeros(1))).all()
    with torch.no_grad():
        assert bool(torch.isfinite(net(x, 6)).all())
    spikes = _spikes(net, layer, x, 6)
    if case == "always fires":
        assert bool((spikes == theta).all())  # every neuron, every step: the ANN is saturated too
    elif case != "constant channel":
        assert bool((spikes == 0).all())  # nothing to correct: no spurious spikes
        if method in ("ftbc", "ftbc-layer"):
            assert bool((net.net.get_submodule(layer).bias == 0).all())
    else:  # the 0.3 input of channel 0 is identical for all its neurons: at each step all or none fire
        rate = spikes[:, :, 0].mean(dim=(1, 2, 3)) / theta
        assert bool(((rate == 0) | (rate == 1)).all())
        if method == "ftbc-exact":  # ... and the exact root picks the one nearer the ANN's 0.25 (it used to fire all)
            assert float(act[:, 0].mean()) == 0.25 and bool((rate == 0).all())


def test_non_finite_activations_are_an_error_not_nan_biases():
    ann = _tiny_ann("dead layer")  # z = 0 exactly, and λ = 0: the ANN computes 0/0
    with torch.no_grad():
        ann[3].threshold.fill_(0.0)
    x = torch.rand(8, 1, 6, 6)
    # λ = 0 is no threshold: refused when converting, before any calibration can make NaN biases
    with pytest.raises(ValueError, match=r"layer '3': the QCFS threshold λ must be finite and > 0"):
        to_snn(ann)
    huge = _tiny_ann("plain")
    with torch.no_grad():
        huge[0].weight.fill_(3e38)
        huge[0].bias.fill_(3e38)  # the SNN's input currents overflow to inf
    with pytest.raises(ValueError, match="calibration gave NaN or infinite biases in layer '1'"):
        get_method("ftbc-exact").calibrate(to_snn(huge), huge, x, 4, {"batches": 2})


# == load: concurrent and interrupted dashboard sessions ========================================================
def _summary(app: AppTest) -> dict:
    """What a session shows: per method the accuracy after every step and the biases."""
    result = app.session_state["run"].result
    return {"ann": result.ann_accuracy, "methods": result.methods,
            **{m: (result.accuracy[m].tolist(), {k: v.tolist() for k, v in result.reports[m].biases.items()})
               for m in result.methods}}


def _configure(app: AppTest, which: str) -> AppTest:
    if which == "a":
        app.multiselect(key="methods").set_value(["none", "ftbc-exact"])
        app.number_input(key="timesteps").set_value(2)
    else:
        app.multiselect(key="methods").set_value(["ftbc-layer", "cos"])
        app.number_input(key="opt.cos.rho").set_value(2)  # published COS replays its ρ pre-steps: ρ <= T = 3
    return app


def test_two_sessions_at_once_give_the_results_of_each_alone(new_app, calls, monkeypatch):
    alone = {}
    for which in ("a", "b"):
        st.cache_data.clear()
        alone[which] = _summary(press_run(_configure(new_app(), which)))
    st.cache_data.clear()
    apps = {w: _configure(new_app(), w) for w in ("a", "b")}
    meet = threading.Barrier(2, timeout=60)  # both sessions are inside their experiment at the same time
    real = runs.run_experiment

    def meeting(cfg, progress=None, **kwargs):
        met = []

        def report(fraction, message):
            if not met and fraction > 0:  # first progress inside the run (after loading data)
                met.append(meet.wait())
            progress(fraction, message)

        return real(cfg, progress=report, **kwargs)

    monkeypatch.setattr(runs, "run_experiment", meeting)
    failures = []

    def click(app):
        try:
            app.button(key="run_button").click().run()
        except BaseException as err:  # noqa: BLE001  (reported below)
            failures.append(err)

    threads = [threading.Thread(target=click, args=(app,)) for app in apps.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures and not meet.broken
    for which, app in apps.items():
        assert not app.exception and not errors(app)
        assert _summary(app) == alone[which]
    assert len(calls) == 4  # 2 alone + 2 together, none read from the cache


@pytest.mark.parametrize("interrupt", [StopException(), RerunException(RerunData()), RuntimeError("simulated crash")],
                         ids=["browser closed", "rerun clicked", "crash"])
def test_an_interrupted_run_leaves_the_app_usable(new_app, calls, monkeypatch, interrupt):
    real = runs.run_experiment
    fired = []

    def interrupted_once(cfg, progress=None, **kwargs):
        def report(fraction, message):
            progress(fraction, message)
            if not fired and "FTBC calibration batch 1/2" in message:  # in the middle of calibrating ftbc
                fired.append(message)
                raise interrupt

        return real(cfg, progress=report, **kwargs)

    monkeypatch.setattr(runs, "run_experiment", interrupted_once)
    app = new_app()
    app.number_input(key="opt.ftbc.batches").set_value(2)
    press_run(app)
    assert fired and "run" not in app.session_state
    if isinstance(interrupt, RuntimeError):
        assert errors(app) == ["The experiment failed: RuntimeError: simulated crash"]
    else:
        assert not errors(app)
    app.run()  # the browser comes back / the rerun happens: the page is usable and asks for a run
    assert not app.exception and "press **Run**" in app.info[0].value
    press_run(app)
    assert not errors(app) and len(calls) == 2
    cfg = app.session_state["run"].config
    reference = experiment.run_experiment(cfg)  # the same experiment, never interrupted
    result = app.session_state["run"].result
    for m in cfg.methods:
        np.testing.assert_array_equal(result.accuracy[m], reference.accuracy[m])
        for name, bias in reference.reports[m].biases.items():
            np.testing.assert_array_equal(result.reports[m].biases[name], bias)
    cached, _ = caches.load_shipped("cnn-mnist", models.shipped_ref("cnn-mnist").digest)  # the shared model was not touched by the broken run
    fresh, _ = load_checkpoint(MODEL)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in cached.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in cached.modules())
