"""Regression tests of the dashboard's caches, each reproducing a bug seen in a lecture rehearsal.

Each drives the app through its widgets (AppTest) on the small MNIST model and checks what a session is shown
against an independent computation; all four failed on the dashboard before the caches were fixed.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ftbc_core import assets  # noqa: E402
from ftbc_core.assets import load_images  # noqa: E402
from ftbc_core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from ftbc_core.data import to_tensor  # noqa: E402
from ftbc_core.image_trace import network_from_report, trace_image  # noqa: E402
from ftbc_core.snn import to_snn  # noqa: E402

APP = ROOT / "dashboard" / "app.py"
MNIST = ROOT / "pretrained" / "cnn-mnist.safetensors"
TINY = {"timesteps": 4, "limit": 20, "opt.ftbc.batches": 1, "opt.ftbc.batch_size": 16}  # ftbc's own options


def configure(app: AppTest, **values) -> AppTest:
    """Fill in the sidebar form (applied when Run is pressed)."""
    for key, value in values.items():
        if key in ("model",):
            app.selectbox(key=key).set_value(value)
        elif key == "methods":
            app.multiselect(key=key).set_value(value)
        else:
            app.number_input(key=key).set_value(value)
    return app


def run(app: AppTest) -> AppTest:
    app.button(key="run_button").click().run()
    assert not app.exception, app.exception
    return app


@pytest.fixture
def calls(monkeypatch):
    """The experiments actually computed (not read from a cache)."""
    import ftbc_core.experiment as experiment

    seen = []
    real = experiment.run_experiment
    for name in ("dashboard.state", "dashboard.runs"):  # the module that runs experiments, before and after
        try:
            importlib.import_module(name)
        except ImportError:
            pass

    def counting(cfg, **kwargs):
        seen.append(cfg)
        return real(cfg, **kwargs)

    for module in [m for name, m in sys.modules.items() if name.startswith("dashboard") and m is not None]:
        if getattr(module, "run_experiment", None) is real:
            monkeypatch.setattr(module, "run_experiment", counting)
    return seen


def fresh_app() -> AppTest:
    st.cache_data.clear()
    st.cache_resource.clear()
    app = AppTest.from_file(str(APP), default_timeout=120)
    app.run()
    assert not app.exception
    return configure(app, model="cnn-mnist", **TINY)


@pytest.fixture
def at(calls):
    return fresh_app()


def _table_with(app: AppTest, column: str):
    return next(d.value for d in app.dataframe if column in d.value.columns)


def test_networks_cover_the_T_shown_after_the_stored_result_left_the_cache(at):
    """A truncated view (T = 2) of a T = 4 run rebuilt the networks from its 2-step biases while the T = 4
    result was out of the result cache, and cached them under the T = 4 run's key: the full T = 4 view then
    simulated steps 3 and 4 without bias."""
    run(at)
    run(configure(at, timesteps=2))
    st.cache_data.clear()  # the stored T = 4 result leaves the shared result cache (evicted by other sessions)
    at.switch_page("views/one_image.py").run()
    assert not at.exception and not at.error
    at.switch_page("views/accuracy.py").run()
    run(configure(at, timesteps=4))
    result = at.session_state["run"].result
    assert result.timesteps == 4
    ann, _ = load_checkpoint(MNIST)
    images, _ = load_images("mnist", "test", None)
    x = to_tensor(images.x[:20])
    full = network_from_report(to_snn(ann), result.reports["ftbc"])
    cut = network_from_report(to_snn(ann), result.truncated(2).reports["ftbc"])  # what the bug served
    layer = full.layer_names[0]
    p_full = np.stack([trace_image(full, x[i], 4, layer).probabilities[:, images.y[i]] for i in range(20)])
    p_cut = np.stack([trace_image(cut, x[i], 4, layer).probabilities[:, images.y[i]] for i in range(20)])
    index = int(np.abs(p_full - p_cut).max(1).argmax())  # the image where the missing biases show most
    assert np.abs(p_full - p_cut)[index].max() > 1e-3

    at.switch_page("views/one_image.py").run()
    at.number_input(key="image_index").set_value(index).run()
    assert not at.exception and not at.error
    shown = _table_with(at, "ftbc p(true)")["ftbc p(true)"].to_numpy()
    np.testing.assert_allclose(shown, p_full[index], atol=1e-4)


def test_a_retrained_shipped_model_is_not_served_stale(calls, monkeypatch, tmp_path):
    """Shipped models and their results were keyed by name: a checkpoint replaced under the same name kept
    being served (weights and results) until the server restarted."""
    shutil.copy(MNIST, tmp_path / "cnn-mnist.safetensors")
    (tmp_path / "samples").symlink_to(ROOT / "pretrained" / "samples")
    monkeypatch.setattr(assets, "PRETRAINED_DIR", tmp_path)
    monkeypatch.setattr(assets, "SAMPLES_DIR", tmp_path / "samples")
    app = fresh_app()
    run(app)
    first = app.session_state["run"].result
    assert len(calls) == 1

    ann, card = load_checkpoint(MNIST)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in ann.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn_like(p) * p.std())  # "retrained": the same name, other weights
    save_checkpoint(ann, card, tmp_path / "cnn-mnist")
    stamp = os.stat(tmp_path / "cnn-mnist.safetensors").st_mtime_ns + 5_000_000_000
    os.utime(tmp_path / "cnn-mnist.safetensors", ns=(stamp, stamp))
    run(app)
    second = app.session_state["run"].result
    assert len(calls) == 2, "the retrained model's run was read from the cache of the old weights"
    assert second.ann_accuracy != first.ann_accuracy


def _upload_bytes(value, seen: set[int]) -> list[int]:
    """Sizes of the byte strings over 100 kB reachable from a session-state value (checkpoints kept)."""
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, (bytes, bytearray)):
        return [len(value)] if len(value) > 100_000 else []
    if isinstance(value, dict):
        return [n for v in value.values() for n in _upload_bytes(v, seen)]
    if isinstance(value, (list, tuple, set)):
        return [n for v in value for n in _upload_bytes(v, seen)]
    return []


def test_uploads_are_kept_in_a_bounded_store(at, calls, tmp_path):
    """Every uploaded file stayed in the session for its whole life (up to 200 MiB each)."""
    ann, card = load_checkpoint(MNIST)
    configure(at, methods=["none"], timesteps=1, limit=5)
    at.selectbox(key="model").set_value("upload a checkpoint…")
    for i in range(5):
        with torch.no_grad():
            next(ann.parameters()).add_(0.01)  # five different files
        path = save_checkpoint(ann, dataclasses.replace(card, name=f"mnist-{i}"), tmp_path / f"mnist-{i}")
        at.file_uploader(key="upload").set_value((path.name, path.read_bytes(), "application/octet-stream"))
        run(at)
        assert not at.error, [e.value for e in at.error]
    assert len(calls) == 5
    seen: set[int] = set()
    kept = [n for key in list(at.session_state.keys()) for n in _upload_bytes(at.session_state[key], seen)]
    assert len(kept) <= 3, f"{len(kept)} uploaded checkpoints kept in the session"
    at.switch_page("views/one_image.py").run()  # the latest upload is still usable
    assert not at.exception and not at.error


def test_a_truncated_view_does_not_claim_the_longer_runs_timings(at, calls):
    """A T = 2 view read from a stored T = 4 run showed the T = 4 run's calibration and simulation times as
    its own."""
    run(at)
    stored = at.session_state["run"].result
    run(configure(at, timesteps=2))
    assert len(calls) == 1
    caption = " ".join(c.value for c in at.caption)
    assert "read from the stored T = 4 run" in caption, caption
    for m in stored.methods:  # the T = 4 simulation times are labelled as that run's, not as this view's
        sim = f"simulation {stored.seconds[m]:.1f} s"
        if sim in caption:
            assert caption.index(sim) > caption.index("read from the stored T = 4 run")
