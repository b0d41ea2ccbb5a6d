"""The lecture pages driven through their widgets (AppTest, small MNIST model): the walk-through, the compare
page and its presets, the session's runs and the run picker, the one-image page's disagreement lists."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dashboard import runs  # noqa: E402
from dashboard.story import STEPS  # noqa: E402

APP = ROOT / "dashboard" / "app.py"
TINY = {"model": "cnn-mnist", "T": "4", "limit": "20", "batches": "1", "batch_size": "16"}


@pytest.fixture
def at(calls):
    st.cache_data.clear()
    st.cache_resource.clear()
    app = AppTest.from_file(str(APP), default_timeout=180)
    app.query_params.update(TINY)
    app.run()
    assert not app.exception
    return app


def run(app: AppTest) -> AppTest:
    app.button(key="run_button").click().run()
    assert not app.exception, app.exception
    return app


def ok(app: AppTest) -> None:
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]


def charts(app: AppTest) -> int:
    return len(app.get("plotly_chart"))


def test_the_address_sets_the_forms_first_values(calls):
    st.cache_resource.clear()
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.query_params.update({"model": "cnn-mnist", "T": "12", "methods": "none,cos,nonsense", "limit": "x"})
    app.run()
    assert app.selectbox(key="model").value == "cnn-mnist" and app.number_input(key="timesteps").value == 12
    assert app.multiselect(key="methods").value == ["none", "cos"] and app.number_input(key="limit").value == 200


def test_walkthrough_tells_the_run_step_by_step(at, calls):
    at.switch_page("views/walkthrough.py").run()
    assert "press **Run**" in at.info[0].value  # nothing to tell before a run
    run(at)
    result = at.session_state["run"].result
    at.switch_page("views/walkthrough.py").run()
    ok(at)
    assert at.title[0].value == "Lecture walk-through" and at.radio(key="walk_step").value == STEPS[0]
    told = []
    for i, step in enumerate(STEPS):
        if i:
            at.button(key="walk_next").click().run()
        ok(at)
        assert at.radio(key="walk_step").value == step and charts(at) >= 1
        assert at.get("page_link"), f"step {step!r} has no link to its full page"
        told.append(" ".join(m.value for m in at.markdown))
    gap = result.ann_accuracy - result.accuracy["none"][-1]
    assert f"{gap:.1f} points below" in told[1] and "T = 4" in told[1]
    assert "fixes" in told[5] and "breaks" in told[5]
    at.button(key="walk_back").click().run()
    assert at.radio(key="walk_step").value == STEPS[4]
    assert len(calls) == 1


def test_compare_page_overlays_the_sessions_runs(at, calls):
    run(at)
    at.number_input(key="timesteps").set_value(2)
    run(at)
    at.multiselect(key="methods").set_value(["none"])
    run(at)
    assert len(calls) == 2  # T = 2 is read from the T = 4 run
    at.switch_page("views/compare.py").run()
    ok(at)
    assert len(at.multiselect(key="compare_runs").value) == 3 and charts(at) == 2
    table = at.dataframe[0].value
    assert list(table["T"]) == [4, 4, 2, 2, 2] and table["vs first run (points)"].iloc[0] == 0
    at.radio(key="compare_axis").set_value("latency").run()
    at.radio(key="compare_kind").set_value("rel").run()
    at.multiselect(key="compare_methods").set_value(["ftbc"]).run()
    ok(at)
    assert len(at.dataframe[0].value) == 2 and len(calls) == 2


@pytest.mark.parametrize("preset", ["t4-vs-t16", "ftbc-vs-cos"])
def test_presets_run_through_the_form_path(at, calls, preset):
    at.switch_page("views/compare.py").run()
    at.button(key=f"preset_{preset}").click().run()
    ok(at)
    chosen = at.multiselect(key="compare_runs").value
    table = at.dataframe[0].value
    assert len(chosen) == 2 and charts(at) == 2
    if preset == "t4-vs-t16":
        assert len(calls) == 1 and calls[0].timesteps == 16  # T = 4 read from the T = 16 run
        assert sorted(set(table["T"])) == [4, 16]
    else:
        assert at.radio(key="compare_axis").value == "latency"
        assert [(c.methods, c.timesteps) for c in calls] == [(("none", "ftbc"), 4), (("cos",), 2)]
        assert calls[1].method_options == {"cos": {"rho": 2}}  # ρ + T = 4: both answer after 4 steps of the input
        assert list(table["latency"]) == [4, 4, 4] and "accuracy at latency 4 (%)" in table
    done = len(calls)
    at.button(key=f"preset_{preset}").click().run()  # again: everything read from the cache
    assert len(calls) == done and at.multiselect(key="compare_runs").value == chosen


@pytest.mark.slow
def test_relu_vs_qcfs_preset(at, calls):
    at.switch_page("views/compare.py").run()
    at.button(key="preset_relu-vs-qcfs").click().run()
    ok(at)
    assert [c.model for c in calls] == ["resnet20-cifar10-relu", "resnet20-cifar10"]
    assert list(at.dataframe[0].value["run"].str.split(" · ").str[0].unique()) == [c.model for c in calls]


def test_the_session_keeps_six_runs_and_the_picker_shows_any(at, calls):
    for t in (1, 2, 3, 4, 5, 6, 7):
        at.number_input(key="timesteps").set_value(t)
        at.multiselect(key="methods").set_value(["none"])
        run(at)
    kept = at.session_state["runs"]
    assert len(kept) == runs.RUNS_KEPT and [r.result.timesteps for r in kept] == [2, 3, 4, 5, 6, 7]
    assert at.selectbox(key="pick_run").value == kept[-1].label
    at.selectbox(key="pick_run").set_value(kept[0].label).run()
    ok(at)
    assert at.session_state["run"].result.timesteps == 2
    assert list(at.dataframe[0].value.index) == [1, 2]  # the accuracy page shows the picked run
    assert "T = 2" in " ".join(c.value for c in at.sidebar.caption)


def test_one_image_opens_on_an_image_the_correction_fixes(at, calls):
    run(at)
    at.switch_page("views/one_image.py").run()
    ok(at)
    lists = {w.key: w for w in at.pills if w.key in ("fix_pick", "break_pick")}
    first = {k: int(w.options[0].split()[0][1:]) for k, w in lists.items()}  # labels "#12 cat (was dog)"
    assert lists, "neither list of disagreements is shown"
    if "fix_pick" in lists:  # opened on the first image FTBC fixes
        assert at.number_input(key="image_index").value == first["fix_pick"]
    key = "break_pick" if "break_pick" in lists else "fix_pick"
    other = "fix_pick" if key == "break_pick" else "break_pick"
    target = int(lists[key].options[-1].split()[0][1:])
    at.session_state[other] = 0  # as if an image of the other list were open (this sample may show one list only)
    at.pills(key=key).set_value(target).run()
    ok(at)
    assert at.number_input(key="image_index").value == target
    assert at.session_state[other] is None  # one list shows the open image
    assert at.pills(key=key).value is not None
    at.number_input(key="image_index").set_value(0 if target else 1).run()  # another image typed in
    ok(at)
    assert at.pills(key=key).value is None  # clears the list's choice
    at.pills(key=key).set_value(target).run()
    at.slider(key="dis_t").set_value(1).run()  # other lists: the chosen image may no longer be among them
    ok(at)
    assert at.number_input(key="image_index").value == target
    # (the table's values against an independent simulation: tests/test_dashboard_caches.py)
    assert any("ftbc p(true)" in d.value.columns for d in at.dataframe)
    assert charts(at) == 1 and len(at.get("image")) == 1  # the image is a picture, not a chart
    at.radio(key="image_view").set_value("Neurons of one layer").run()
    box = at.selectbox(key="raster_neuron")
    box.select_index(len(box.options) - 1).run()
    at.number_input(key="raster_neurons").set_value(8).run()
    ok(at)
    assert charts(at) == 2 and len(calls) == 1  # the raster and the chosen neuron's charge


def test_the_per_image_pages_read_the_runs_predictions(at, calls, monkeypatch):
    """The disagreement lists come from the predictions the run kept: no second simulation of the evaluation
    images (it cost as much as the run's own simulations, on the cores the pages need)."""
    import ftbc_core.per_image as per_image

    simulated = []
    real = per_image.predict_images
    monkeypatch.setattr(per_image, "predict_images", lambda *a, **k: simulated.append(a) or real(*a, **k))
    run(at)
    result = at.session_state["run"].result
    at.switch_page("views/one_image.py").run()
    ok(at)
    wrong, right = result.predicted["none"][-1] != result.labels, result.predicted["ftbc"][-1] == result.labels
    expected = [int(i) for i in np.flatnonzero(wrong & right)[:16]]
    lists = {w.key: w for w in at.pills}
    shown = [int(o.split()[0][1:]) for o in lists["fix_pick"].options] if "fix_pick" in lists else []
    assert shown == expected
    at.session_state["walk_step"] = STEPS[-1]
    at.switch_page("views/walkthrough.py").run()
    ok(at)
    assert not simulated
