"""The sidebar's controls built from the core: each method's options from the registry (a method registered in
the core gets its widgets), the conversion settings, the held-out selection, the bias upload, and the bias
page's convergence curve (AppTest, small MNIST model, runs of a few seconds)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_tensors

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dashboard import bias_files, figures  # noqa: E402
from ftbc_core.biases import read_biases  # noqa: E402
from ftbc_core.calibration import METHODS  # noqa: E402
from ftbc_core.calibration.base import (CalibrationMethod, CalibrationReport, OptionSpec, copy_snn,  # noqa: E402
                                        nonconvergence, register)
from ftbc_core.experiment import calibrate_and_save  # noqa: E402
from test_dashboard import TINY, charts, errors, open_app, run  # noqa: E402

TWO_STEPS = {**TINY, "T": 2}


def values(app, key: str):
    return app.number_input(key=key).value


# -- each method's options ---------------------------------------------------------------------------------------
def test_each_method_gets_its_own_options(calls):
    at = open_app(**TWO_STEPS, methods="none,ftbc,ftbc-layer")
    # each method starts from its own defaults (ftbc-layer's α is 0.1, not ftbc's 0.5); the address's shared
    # batches=1&batch_size=16 (an older link) went to every method that has them
    assert values(at, "opt.ftbc.alpha") == 0.5 and values(at, "opt.ftbc-layer.alpha") == 0.1
    assert values(at, "opt.ftbc.batches") == 1 and values(at, "opt.ftbc-official.batch_size") == 16
    assert not [w for w in at.number_input if w.key == "opt.ftbc.seed"]  # the run's seed is not a method option
    at.number_input(key="opt.ftbc.alpha").set_value(0.3)
    at.number_input(key="opt.ftbc-layer.alpha").set_value(0.2)
    at.number_input(key="opt.ftbc-layer.batches").set_value(2)
    run(at)
    assert not errors(at) and len(calls) == 1
    assert calls[0].method_options == {"ftbc": {"alpha": 0.3, "batches": 1, "batch_size": 16},
                                       "ftbc-layer": {"alpha": 0.2, "batches": 2, "batch_size": 16}}
    reports = at.session_state["run"].result.reports
    assert reports["ftbc"].options["alpha"] == 0.3 and reports["ftbc-layer"].options["alpha"] == 0.2
    assert reports["ftbc"].options["batches"] == 1 and reports["ftbc-layer"].options["batches"] == 2
    assert len(reports["ftbc-layer"].bias_change) == 2


def test_the_address_sets_per_method_options_and_the_conversion(calls):
    at = open_app(**TWO_STEPS, **{"alpha": 0.3, "ftbc-layer.alpha": 0.05, "ftbc-official.reference_levels": 4,
                                  "cos.rho": 99, "v0": 0.25, "thresholds": "percentile", "select": 1,
                                  "val_images": 50})
    assert values(at, "opt.ftbc.alpha") == 0.3 and values(at, "opt.ftbc-official.alpha") == 0.3
    assert values(at, "opt.ftbc-layer.alpha") == 0.05  # the per-method field wins over the shared one
    assert at.selectbox(key="opt.ftbc-official.reference_levels").value == 4
    assert values(at, "opt.cos.rho") == 4  # out of range (ρ <= 64): ignored
    assert at.radio(key="v0_mode").value == "fraction" and values(at, "v0_fraction") == 0.25
    assert at.selectbox(key="thresholds").value == "percentile"
    assert at.toggle(key="select").value is True and values(at, "val_images") == 50
    assert not calls


def test_optional_option_offers_the_methods_own_choice(calls):
    at = open_app(**TWO_STEPS, methods="ftbc-official")
    box = at.selectbox(key="opt.ftbc-official.reference_levels")
    assert box.value is None and box.options[0] == "method's own choice"
    box.set_value(2)
    run(at)
    assert not errors(at) and calls[0].method_options["ftbc-official"]["reference_levels"] == 2
    assert at.session_state["run"].result.reports["ftbc-official"].options["reference_levels"] == 2


def test_conversion_options_reach_the_config(calls):
    at = open_app(**TWO_STEPS, methods="none")
    at.radio(key="v0_mode").set_value("fraction")
    at.number_input(key="v0_fraction").set_value(0.25)
    at.selectbox(key="thresholds").set_value("percentile")
    at.number_input(key="percentile").set_value(99.0)
    at.checkbox(key="per_channel").check()
    run(at)
    assert not errors(at) and len(calls) == 1
    cfg = calls[0]
    assert (cfg.v0, cfg.thresholds, cfg.percentile, cfg.per_channel) == (0.25, "percentile", 99.0, True)
    at.radio(key="v0_mode").set_value("half")
    run(at)
    assert calls[1].v0 == "half" and len(calls) == 2  # another conversion: another experiment
    at.switch_page("views/one_image.py").run(timeout=600)  # networks rebuilt with the run's thresholds (from statistics)
    assert not at.exception and not errors(at) and charts(at) == 1 and len(at.get("image")) == 1
    at.radio(key="image_view").set_value("Neurons of one layer").run()
    assert not at.exception and not errors(at) and charts(at) == 2


# -- a method registered in the core -----------------------------------------------------------------------------
@pytest.fixture
def throwaway():
    """A method with an option no shipped method has, registered for one test."""

    @register
    class Throwaway(CalibrationMethod):
        name = "throwaway-test"
        label = "Throwaway (test)"
        description = "The converted network unchanged; its report keeps the options it was given."
        defaults = {"gain": 2.0, "offset": None, "seed": 0}

        def option_specs(self):
            return {"gain": OptionSpec("gain g", float, 0.0, 5.0, low_open=True, help="a test option"),
                    "offset": OptionSpec("offset", float, 0.0, optional=True, help="an optional one"),
                    "seed": OptionSpec("seed", int, 0)}

        def calibrate(self, snn, ann, images, timesteps, options=None, progress=None):
            return copy_snn(snn), CalibrationReport(self.name, self.options(options), 0.0, 0)

    yield Throwaway
    METHODS.pop(Throwaway.name, None)


def test_a_method_registered_in_the_core_gets_its_widgets(throwaway, calls):
    at = open_app(**TWO_STEPS)
    gain = at.number_input(key="opt.throwaway-test.gain")
    assert gain.value == 2.0 and gain.label == "Gain g" and gain.help == "a test option"
    assert gain.min == pytest.approx(0.001) and gain.max == 5.0  # (0, 5]: a small step above the open bound
    assert "Throwaway (test): options" in [e.label for e in at.sidebar.expander]
    assert not [w for w in at.number_input if w.key == "opt.throwaway-test.seed"]  # the run's seed
    offset = at.text_input(key="opt.throwaway-test.offset")  # optional, unbounded: blank is the method's choice
    assert offset.value == "" and offset.placeholder == "method's own choice"
    at.multiselect(key="methods").set_value(["none", "throwaway-test"])
    gain.set_value(3.5)
    offset.input("much")
    run(at)
    assert errors(at) == ["Throwaway (test): offset must be a number >= 0, got 'much'"] and not calls
    at.text_input(key="opt.throwaway-test.offset").input("0.7")
    run(at)
    assert not errors(at) and calls[0].method_options == {"throwaway-test": {"gain": 3.5, "offset": 0.7}}
    assert at.session_state["run"].result.reports["throwaway-test"].options == {"gain": 3.5, "offset": 0.7, "seed": 0}


# -- choosing options on held-out training images ---------------------------------------------------------------
def test_held_out_selection_is_shown_with_its_trials(calls):
    at = open_app(model="cnn-mnist", T=2, limit=20, methods="none,ftbc-layer")
    at.toggle(key="select").set_value(True)
    at.number_input(key="val_images").set_value(40)
    at.number_input(key="select_max_t").set_value(2)
    run(at)
    assert not errors(at) and calls[0].select and (calls[0].val_images, calls[0].select_max_t) == (40, 2)
    result = at.session_state["run"].result
    trials = result.selection["ftbc-layer"]
    assert [t.options["alpha"] for t in trials] == [0.1, 0.2, 0.5]  # ftbc-layer's grid
    best = max(trials, key=lambda t: t.score)
    assert result.reports["ftbc-layer"].options["alpha"] == best.options["alpha"]
    table = next(d.value for d in at.dataframe if "held-out accuracy (%)" in d.value.columns)
    assert len(table) == 3 and table["chosen"].tolist().count(True) == 1
    assert table.loc[table["chosen"], "held-out accuracy (%)"].item() == pytest.approx(best.score)
    caption = " ".join(c.value for c in at.caption)
    assert "40 held-out images of the bundled mnist calib sample" in caption and "on the other 960" in caption
    assert any(f"alpha = {best.options['alpha']}" in m.value for m in at.markdown)
    # an option changed in the form stays fixed: only the grid's sets with that α are tried
    at.number_input(key="opt.ftbc-layer.alpha").set_value(0.2)
    run(at)
    assert [t.options["alpha"] for t in at.session_state["run"].result.selection["ftbc-layer"]] == [0.2]


def test_selection_the_core_refuses_is_one_line(calls, tmp_path):
    digits = np.zeros((1, 28, 28, 1), np.uint8)  # one training image: nothing to hold out
    np.savez(tmp_path / "train.npz", x=digits, y=np.zeros(1, np.int64))
    np.savez(tmp_path / "test.npz", x=np.zeros((4, 28, 28, 1), np.uint8), y=np.zeros(4, np.int64))
    at = open_app(**TWO_STEPS, select=1)
    at.radio(key="data_source").set_value("data folder")
    at.text_input(key="data_dir").input(str(tmp_path))
    run(at)
    assert errors(at) == ["option selection needs at least 2 training images (held-out and calibration)"]
    assert "run" not in at.session_state


# -- biases from a file ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bias_file(tmp_path_factory) -> Path:
    """ftbc biases for cnn-mnist, T = 4, fitted on the bundled sample as the form's TINY ftbc run fits them."""
    out = tmp_path_factory.mktemp("biases") / "cnn-mnist.ftbc-T4.safetensors"
    return calibrate_and_save("cnn-mnist", data_dir=None, timesteps=4, method="ftbc",
                              options={"batches": 1, "batch_size": 16}, out=str(out))


def upload(app, path: Path | None, data: bytes | None = None):
    value = None if path is None else (path.name, data if data is not None else path.read_bytes(),
                                       "application/octet-stream")
    app.file_uploader(key="bias_upload").set_value(value)
    return app


def test_an_uploaded_bias_file_is_evaluated_as_the_file_method(bias_file, calls):
    at = open_app(**TINY)
    run(upload(at, bias_file))
    assert not errors(at) and len(calls) == 1
    shown = at.session_state["run"]
    assert shown.result.methods == ("file", "none", "ftbc")
    tensors, _ = read_biases(bias_file)
    for layer, bias in shown.result.reports["file"].biases.items():
        torch.testing.assert_close(torch.from_numpy(bias), tensors[layer][:4], rtol=0, atol=0)
    # the same biases as the run's own ftbc (same images, options and conversion): the same accuracy
    np.testing.assert_array_equal(shown.result.accuracy["file"], shown.result.accuracy["ftbc"])
    # the session names the file by its hash; the bytes are only in the bounded store
    path = shown.config.method_options["file"]["path"]
    assert path.startswith(bias_files.PREFIX) and isinstance(shown.result.method_options["file"]["path"], str)
    assert list(at.session_state["bias_files"]) == [path]


def test_a_bias_file_that_does_not_fit_is_refused_in_one_line(bias_file, calls):
    at = open_app(**TINY, methods="none")
    at.number_input(key="timesteps").set_value(6)
    run(upload(at, bias_file))
    assert errors(at) == ["the bias file holds biases for T = 4, shorter than the T = 6 asked for; calibrate for "
                          "a T at least that large"]
    assert "run" not in at.session_state
    at.number_input(key="timesteps").set_value(4)
    at.radio(key="v0_mode").set_value("zero")  # another conversion than the file was fitted with
    run(at)
    assert len(errors(at)) == 1 and "fitted on a conversion with other thresholds or v0" in errors(at)[0]
    run(upload(at, bias_file, b"not a bias file"))
    assert len(errors(at)) == 1 and errors(at)[0].startswith(f"Cannot use {bias_file.name}: the bias file is not")
    at.radio(key="v0_mode").set_value("half")
    run(upload(at, None))  # the rest of the form still works
    assert not errors(at) and at.session_state["run"].result.methods == ("none",)


def test_bias_files_are_kept_in_a_bounded_store(bias_file, calls):
    tensors, meta = read_biases(bias_file)
    at = open_app(**{**TINY, "T": 1, "limit": 5}, methods="none")
    refs = []
    for i in range(bias_files.BIAS_FILES_KEPT + 2):
        data = save_tensors(tensors, metadata={**meta, "copy": str(i)})  # different bytes, the same biases
        run(upload(at, bias_file, data))
        assert not errors(at)
        refs.append(at.session_state["run"].config.method_options["file"]["path"])
    assert len(set(refs)) == len(refs)
    assert list(at.session_state["bias_files"]) == refs[-bias_files.BIAS_FILES_KEPT:]
    assert all(isinstance(r.config.method_options["file"]["path"], str) for r in at.session_state["runs"])


# -- convergence of the bias fit ---------------------------------------------------------------------------------
def test_convergence_figure_draws_each_methods_curve():
    report = CalibrationReport("ftbc", {}, 0.0, 0, bias_change=(0.4, 0.2, 0.1))
    flat = CalibrationReport("ftbc-layer", {}, 0.0, 0, bias_change=(0.3, 0.3))
    result = type("Result", (), {"reports": {"ftbc": report, "ftbc-layer": flat}})()
    fig = figures.convergence_figure(result, ["ftbc", "ftbc-layer"])
    assert [list(t.y) for t in fig.data] == [[0.4, 0.2, 0.1], [0.3, 0.3]]
    assert list(fig.data[0].x) == [1, 2, 3] and fig.layout.yaxis.type == "log"
    assert fig.layout.xaxis.title.text == "calibration batch k" and "|Δb|" in fig.layout.yaxis.title.text


def test_bias_page_shows_convergence_and_warns_when_it_does_not_decay(calls):
    at = open_app(**{**TINY, "batches": 4}, methods="none,ftbc")
    run(at)
    at.switch_page("views/biases.py").run()
    assert not at.exception and charts(at) == 3  # heatmap, trajectories, convergence
    shown = at.session_state["run"]
    expected = nonconvergence(shown.result.reports["ftbc"].bias_change)
    assert [w.value for w in at.warning] == ([f"{figures.label('ftbc')}: {expected}"] if expected else [])
    cycling = dataclasses.replace(shown.result.reports["ftbc"], bias_change=(0.1, 0.12, 0.1, 0.11))
    result = dataclasses.replace(shown.result, reports={**shown.result.reports, "ftbc": cycling})
    at.session_state["run"] = dataclasses.replace(shown, result=result)
    at.run()
    assert [w.value for w in at.warning] == [f"{figures.label('ftbc')}: {nonconvergence(cycling.bias_change)}"]
    assert "did not converge" in at.warning[0].value
