"""The dashboard driven through its widgets with streamlit's AppTest, on the small MNIST model and a tiny run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dashboard import runs  # noqa: E402
from dashboard.models import UPLOAD  # noqa: E402

APP = ROOT / "dashboard" / "app.py"
TINY = {"model": "cnn-mnist", "T": 4, "limit": 20, "batches": 1, "batch_size": 16}  # the page address's fields


def open_app(**address) -> AppTest:
    """A fresh app (empty caches) opened on a page address with these fields (``?model=...&T=...``)."""
    st.cache_data.clear()
    st.cache_resource.clear()
    app = AppTest.from_file(str(APP), default_timeout=120)
    app.query_params.update({k: str(v) for k, v in address.items() if v is not None})
    app.run()
    assert not app.exception
    return app


@pytest.fixture
def at(calls):
    return open_app(**TINY)


def run(app: AppTest) -> AppTest:
    app.button(key="run_button").click().run()
    assert not app.exception
    return app


def errors(app: AppTest) -> list[str]:
    return [e.value for e in app.error]


def charts(app: AppTest) -> int:
    return len(app.get("plotly_chart"))


def test_fresh_start_asks_for_a_run(at):
    assert at.title[0].value == "Accuracy vs time step"
    assert "press **Run**" in at.info[0].value
    assert at.selectbox(key="model").value == "cnn-mnist"
    assert at.number_input(key="timesteps").value == 4 and at.multiselect(key="methods").value == ["none", "ftbc"]
    assert at.selectbox(key="device").options[0] == "cpu"


def test_every_page_after_a_run(at, calls):
    run(at)
    assert len(calls) == 1 and calls[0].record and calls[0].timesteps == 4
    assert calls[0].record_images == 20  # the default (64) capped at the evaluation images
    assert not errors(at) and charts(at) == 1
    table = at.dataframe[0].value
    assert list(table.index) == [1, 2, 3, 4] and {"ANN", "none", "ftbc"} <= set(table.columns)
    assert [m.label for m in at.metric][0] == "ANN"

    at.switch_page("views/layers.py").run()
    assert at.title[0].value == "Which layers need most correction" and charts(at) == 3
    at.radio(key="layers_kind").set_value("offset").run()
    at.radio(key="heat_quantity").set_value("bias").run()
    at.toggle(key="layers_sort").set_value(False).run()
    assert not at.exception and len(at.dataframe[0].value) == 4

    at.switch_page("views/biases.py").run()
    assert at.title[0].value == "Bias trajectories" and charts(at) == 2
    at.selectbox(key="bias_layer").set_value("features.5").run()
    at.multiselect(key="bias_channels_features.5").set_value([0, 1]).run()
    assert not at.exception and charts(at) == 2

    at.switch_page("views/membrane.py").run()
    assert at.title[0].value == "Membrane potentials" and charts(at) == 1
    at.slider(key="membrane_t").set_value(3).run()
    assert at.dataframe[0].value["t"].tolist() == [3, 3]
    at.toggle(key="membrane_animate").set_value(True).run()
    assert not at.exception

    at.switch_page("views/one_image.py").run()
    assert at.title[0].value == "One image" and charts(at) == 1 and len(at.get("image")) == 1  # image, probability
    at.number_input(key="image_index").set_value(7).run()
    at.radio(key="image_view").set_value("Neurons of one layer").run()
    assert charts(at) == 2 and not at.get("image")  # raster, one neuron's charge
    at.selectbox(key="image_layer").set_value("classifier.1").run()
    at.radio(key="raster_method").set_value("ftbc").run()
    at.radio(key="raster_order").set_value("rate").run()
    assert not at.exception and not errors(at)

    at.switch_page("views/walkthrough.py").run()
    assert at.title[0].value == "Lecture walk-through" and charts(at) == 1 and not at.exception

    at.switch_page("views/compare.py").run()
    assert at.title[0].value == "Compare runs" and charts(at) == 2 and not at.exception

    at.switch_page("views/accuracy.py").run()
    assert at.title[0].value == "Accuracy vs time step" and not at.exception
    assert len(calls) == 1  # nothing shown on the pages recomputed the experiment


def test_neuron_lab_needs_no_model(at, calls):
    at.switch_page("views/neuron_lab.py").run()
    assert at.title[0].value == "Neuron lab" and charts(at) == 1 and not calls
    at.slider(key="lab_z").set_value(1.5).run()
    clip = next(m for m in at.metric if m.label == "clipping error")
    assert clip.value == "+0.500"
    at.slider(key="lab_neurons").set_value(3)
    at.slider(key="lab_jitter").set_value(0.3).run()
    at.radio(key="lab_schedule").set_value("decaying b/t")
    at.slider(key="lab_bias").set_value(0.1).run()
    assert not at.exception and at.dataframe[0].value.shape[0] == 8


def test_a_smaller_T_reads_the_stored_run(at, calls):
    run(at)
    at.number_input(key="timesteps").set_value(2)
    run(at)
    assert len(calls) == 1
    assert list(at.dataframe[0].value.index) == [1, 2]
    assert at.session_state["run"].result.timesteps == 2
    at.number_input(key="timesteps").set_value(4)
    run(at)
    assert len(calls) == 1  # the T = 4 run is still cached


def test_cos_offers_the_latency_axis(at):
    at.multiselect(key="methods").set_value(["none", "cos"])
    run(at)
    at.radio(key="acc_axis").set_value("latency").run()
    assert not at.exception and not errors(at)


def test_bad_upload_is_a_message(at, calls):
    at.selectbox(key="model").set_value(UPLOAD)
    garbage = ("model.safetensors", b"not a checkpoint at all", "application/octet-stream")
    at.file_uploader(key="upload").set_value(garbage)
    run(at)
    assert errors(at) and errors(at)[0].startswith("Cannot use model.safetensors: the uploaded file is not")
    assert not calls and "run" not in at.session_state


def test_upload_of_a_real_checkpoint_runs(at, calls):
    data = (ROOT / "pretrained" / "cnn-mnist.safetensors").read_bytes()
    at.selectbox(key="model").set_value(UPLOAD)
    at.file_uploader(key="upload").set_value(("mine.safetensors", data, "application/octet-stream"))
    run(at)
    assert not errors(at) and len(calls) == 1 and calls[0].model.startswith("upload:")
    at.switch_page("views/one_image.py").run()
    assert not at.exception and charts(at) == 1 and len(at.get("image")) == 1
    at.radio(key="image_view").set_value("Neurons of one layer").run()
    assert not at.exception and charts(at) == 2


def test_missing_data_folder_is_a_message(at, calls, tmp_path):
    at.radio(key="data_source").set_value("data folder")
    at.text_input(key="data_dir").input(str(tmp_path / "nowhere"))
    run(at)
    assert errors(at) == [f"data directory {tmp_path / 'nowhere'} does not exist"]
    assert "run" not in at.session_state


def test_a_run_too_large_for_memory_is_refused(at, calls, monkeypatch):
    # the core's memory policy at the app's share (25 %), before any data is loaded: one line, no run kept
    from ftbc_core import experiment

    monkeypatch.setattr(experiment, "available_memory_bytes", lambda: 10 * 2**20)
    monkeypatch.setattr(experiment, "load_images", lambda *a, **k: pytest.fail("data loaded for a refused run"))
    run(at)
    assert errors(at) and "would need about" in errors(at)[0] and "more than 25%" in errors(at)[0]
    assert [c.memory_fraction for c in calls] == [0.25] and "run" not in at.session_state


def test_resnet20_is_the_default_when_shipped(at, calls, monkeypatch, tmp_path):
    """With a (here untrained) resnet20-cifar10 in pretrained/, it is the default and RGB images work."""
    import dataclasses

    import torch

    from ftbc_core import assets
    from ftbc_core.checkpoint import read_card, save_checkpoint
    from ftbc_core.models import build_model

    torch.manual_seed(0)
    mnist = read_card(ROOT / "pretrained" / "cnn-mnist.safetensors")
    card = dataclasses.replace(mnist, name="resnet20-cifar10", arch="resnet20", dataset="cifar10", in_channels=3,
                               image_size=32, class_names=tuple(f"class {k}" for k in range(10)),
                               mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    save_checkpoint(build_model("resnet20", "qcfs", 4, 10, 3, card.mean, card.std, init_threshold=2.0), card,
                    tmp_path / "resnet20-cifar10")
    (tmp_path / "cnn-mnist.safetensors").symlink_to(ROOT / "pretrained" / "cnn-mnist.safetensors")
    (tmp_path / "samples").symlink_to(ROOT / "pretrained" / "samples")
    monkeypatch.setattr(assets, "PRETRAINED_DIR", tmp_path)
    monkeypatch.setattr(assets, "SAMPLES_DIR", tmp_path / "samples")
    app = open_app(**{**TINY, "T": 2, "limit": 6, "batch_size": 4, "model": None})
    assert app.selectbox(key="model").value == "resnet20-cifar10"
    run(app)
    assert not errors(app) and calls[-1].model == "resnet20-cifar10"
    app.switch_page("views/one_image.py").run()
    assert not app.exception and charts(app) == 1 and app.get("image")[0].proto.imgs[0].url  # an RGB picture


def test_data_that_does_not_fit_the_model_is_a_message(at, calls, tmp_path):
    import numpy as np

    rgb = np.zeros((5, 32, 32, 3), np.uint8)  # CIFAR-shaped images for the MNIST model
    for split in ("train", "test"):
        np.savez(tmp_path / f"{split}.npz", x=rgb, y=np.zeros(5, np.int64))
    at.radio(key="data_source").set_value("data folder")
    at.text_input(key="data_dir").input(str(tmp_path))
    run(at)
    assert len(errors(at)) == 1 and "mnist: x must have shape [N, 28, 28, 1]" in errors(at)[0]
    assert "run" not in at.session_state


def test_a_model_without_a_bundled_sample_asks_for_a_data_folder(at, calls, tmp_path):
    import dataclasses

    from ftbc_core.checkpoint import load_checkpoint, save_checkpoint

    ann, card = load_checkpoint(ROOT / "pretrained" / "cnn-mnist.safetensors")
    path = save_checkpoint(ann, dataclasses.replace(card, name="cnn-fashion", dataset="fashion-mnist"),
                           tmp_path / "cnn-fashion")
    at.selectbox(key="model").set_value(UPLOAD)
    at.file_uploader(key="upload").set_value(("cnn-fashion.safetensors", path.read_bytes(), "application/octet-stream"))
    run(at)
    assert len(errors(at)) == 1 and "no bundled" in errors(at)[0] and "data folder" in errors(at)[0]


def test_two_sessions_do_not_disturb_each_other(at, calls):
    other = AppTest.from_file(str(APP), default_timeout=120)
    other.query_params.update({k: str(v) for k, v in TINY.items()})
    other.run()
    other.multiselect(key="methods").set_value(["none"])
    other.number_input(key="timesteps").set_value(3)
    run(other)
    run(at)
    assert at.session_state["run"].result.methods == ("none", "ftbc") and at.session_state["run"].result.timesteps == 4
    assert other.session_state["run"].result.methods == ("none",) and other.session_state["run"].result.timesteps == 3
    other.switch_page("views/biases.py").run()
    assert "add FTBC" in other.info[0].value
    at.switch_page("views/biases.py").run()
    assert not at.info and charts(at) == 2


def test_charts_measured_on_fewer_images_say_so(at, calls):
    at.number_input(key="record_images").set_value(5)
    at.number_input(key="timesteps").set_value(16)
    run(at)
    assert calls[-1].record_images == 5 and not errors(at)
    caption = " ".join(c.value for c in at.sidebar.caption)
    # T = 16: chunks of 128 / 16 = 8 images, so the first whole chunk is measured
    assert ", 20 images" in caption and "charts measured on the first 8" in caption


def test_progress_updates_are_throttled(monkeypatch):
    clock = iter([0.0, 0.1, 0.2, 0.3, 0.35, 0.4])
    monkeypatch.setattr(runs.time, "perf_counter", lambda: next(clock))
    shown = []

    class Bar:
        def progress(self, value, text):
            shown.append((value, text))

    update = runs.throttled(Bar(), interval=0.25)
    for i, f in enumerate([0.1, 0.2, 0.3, 0.4, 0.5, 1.0]):
        update(f, f"step {i}")
    assert shown == [(0.1, "step 0"), (0.4, "step 3"), (1.0, "step 5")]  # t = 0, 0.3 and the end


def test_upload_of_a_public_pth_goes_through_the_import_path(at, calls, tmp_path):
    import torch

    from test_import import reference

    src = tmp_path / "resnet20_cifar10.pth"
    torch.save(reference("resnet20", "cifar10", 4, 0, torch.rand(8, 3, 32, 32)).state_dict(), src)
    at.selectbox(key="model").set_value(UPLOAD)
    at.file_uploader(key="upload").set_value(("resnet20_cifar10.pth", src.read_bytes(), "application/octet-stream"))
    at.selectbox(key="pth_arch").set_value("resnet20")
    at.selectbox(key="pth_dataset").set_value("cifar10")
    at.number_input(key="pth_levels").set_value(4)
    at.number_input(key="limit").set_value(20)
    at.number_input(key="record_images").set_value(20)
    run(at)
    assert not at.exception and not errors(at) and len(calls) == 1
    assert at.session_state["run"].result.model_name == "resnet20_cifar10 (imported)"
    # a .pth of another architecture is a one-line message, not a run
    at.selectbox(key="pth_arch").set_value("vgg16")
    run(at)
    assert errors(at) and errors(at)[0].startswith("Cannot use resnet20_cifar10.pth: resnet20_cifar10.pth does not fit")
