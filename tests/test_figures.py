"""dashboard/figures.py: every builder on a real (tiny) experiment, checked for traces, axes and colour scales."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dashboard import compare_figures, exports, figures, neuron_figures, story  # noqa: E402
from ftbc_core.per_image import ImagePredictions, neuron_order, predict_all, trace_layer  # noqa: E402
from ftbc_core.assets import load_images  # noqa: E402
from ftbc_core.checkpoint import load_checkpoint  # noqa: E402
from ftbc_core.experiment import ExperimentConfig, run_experiment  # noqa: E402
from ftbc_core.image_trace import network_from_report, trace_image  # noqa: E402
from ftbc_core.neuron_lab import error_parts, simulate_if_neurons  # noqa: E402
from ftbc_core.snn import to_snn  # noqa: E402

T = 4


@pytest.fixture(scope="module")
def result():
    cfg = ExperimentConfig(model="cnn-mnist", timesteps=T, methods=("none", "ftbc", "cos"), limit=20, device="cpu",
                           method_options={"batches": 1, "batch_size": 16, "rho": 2}, record=True)
    return run_experiment(cfg)


def titles(fig: go.Figure) -> tuple[str, str]:
    return fig.layout.xaxis.title.text, fig.layout.yaxis.title.text


def test_accuracy_figure(result):
    fig = figures.accuracy_figure(result)
    names = [tr.name for tr in fig.data]
    assert names[:3] == [figures.label(m) for m in result.methods] and names[3].startswith("ANN")
    np.testing.assert_allclose(fig.data[1].y, result.accuracy["ftbc"])
    assert list(fig.data[0].x) == [1, 2, 3, 4]
    ann = fig.data[-1]
    assert set(ann.y) == {result.ann_accuracy} and ann.line.dash == "dash"
    assert titles(fig) == ("time steps T", "top-1 accuracy (%)")
    lat = figures.accuracy_figure(result, "latency")
    assert list(lat.data[2].x) == [3, 4, 5, 6] and list(lat.data[0].x) == [1, 2, 3, 4]  # COS pays ρ = 2
    assert "latency" in lat.layout.xaxis.title.text and max(lat.data[-1].x) == 6


@pytest.mark.parametrize("kind", ["abs", "rel", "offset"])
def test_layer_error_figure_sorted_by_error_before(result, kind):
    fig = figures.layer_error_figure(result, kind)
    assert [tr.name for tr in fig.data] == [figures.label(m) for m in result.methods]
    before = np.asarray(fig.data[0].y)
    assert np.all(np.diff(before) <= 0)
    names = result.measurements["none"].layer_names
    assert sorted(fig.data[0].x) == sorted(names) and list(fig.data[1].x) == list(fig.data[0].x)
    assert fig.layout.yaxis.title.text == figures.ERROR_AXIS[kind] and fig.layout.barmode == "group"
    ordered = figures.layer_error_figure(result, kind, sort=False)
    assert list(ordered.data[0].x) == list(names)
    np.testing.assert_allclose(ordered.data[0].y, result.measurements["none"].layer_error(kind)[:, -1])


def test_bias_magnitude_and_heatmaps(result):
    fig = figures.bias_magnitude_figure(result)
    assert [tr.name for tr in fig.data] == [figures.label("ftbc")]  # only FTBC fits biases
    b = result.reports["ftbc"].biases
    np.testing.assert_allclose(fig.data[0].y, [np.abs(v).mean() for v in b.values()], rtol=1e-6)
    assert "mean |b|" in fig.layout.yaxis.title.text
    err = figures.layer_time_heatmap(result, "none", "error", "abs")
    assert err.data[0].z.shape == (4, T) and titles(err) == ("time step t", "spiking layer")
    bias = figures.layer_time_heatmap(result, "ftbc", "bias")
    np.testing.assert_allclose(bias.data[0].z[0], np.abs(next(iter(b.values()))).mean(1), rtol=1e-6)
    with pytest.raises(ValueError):
        figures.layer_time_heatmap(result, "none", "bias")
    with pytest.raises(ValueError):
        figures.layer_time_heatmap(result, "ftbc", "weights")


def test_bias_heatmap_is_centred_on_zero_and_lines(result):
    report = result.reports["ftbc"]
    layer = list(report.biases)[1]
    fig = figures.bias_heatmap(report, layer)
    heat = fig.data[0]
    assert heat.zmid == 0 and heat.z.shape == report.biases[layer].T.shape
    assert titles(fig) == ("time step t", "channel c")
    lines = figures.bias_lines(report, layer, [0, 5])
    assert [tr.name for tr in lines.data] == ["channel 0", "channel 5"]
    np.testing.assert_allclose(lines.data[1].y, report.biases[layer][:, 5])
    assert "bias b[t, c]" in lines.layout.yaxis.title.text


def test_membrane_histogram_marks_zero_and_threshold(result):
    layer = result.measurements["none"].layer_names[0]
    fig = figures.membrane_histogram(result, layer, 2, ["none", "ftbc"])
    assert len(fig.data) == 2 and fig.layout.barmode == "overlay"
    assert fig.data[0].y.sum() == pytest.approx(1.0)
    assert sorted(s.x0 for s in fig.layout.shapes) == [0.0, 1.0]
    assert "u[t] / θ" in fig.layout.xaxis.title.text and fig.layout.yaxis.title.text == "fraction of neurons"
    anim = figures.membrane_animation(result, layer, ["none", "ftbc"])
    assert [f.name for f in anim.frames] == ["1", "2", "3", "4"] and len(anim.layout.sliders[0].steps) == T
    np.testing.assert_allclose(anim.frames[1].data[0].y, fig.data[0].y)


@pytest.fixture(scope="module")
def networks(result):
    ann, _ = load_checkpoint(ROOT / "pretrained" / "cnn-mnist.safetensors")
    snn = to_snn(ann)
    return ann, {m: network_from_report(snn, result.reports[m]) for m in result.methods}


def test_image_probability_figure(result, networks):
    _, nets = networks
    x = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0))
    traces = {m: trace_image(nets[m], x, T, nets[m].layer_names[0], max_neurons=20) for m in ("none", "ftbc")}
    fig = figures.probability_figure(traces, 3, [str(k) for k in range(10)])
    np.testing.assert_allclose(fig.data[1].y, traces["ftbc"].probabilities[:, 3])
    assert titles(fig) == ("time step t", "softmax probability of the true class")
    grey = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
    big = figures.image_pixels(grey)
    assert big.shape == (252, 252) and (big[::9, ::9] == grey[..., 0]).all() and (big[8::9, 8::9] == grey[..., 0]).all()
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert (figures.image_pixels(rgb)[::8, ::8] == rgb).all() and figures.image_pixels(rgb).shape == (256, 256, 3)
    with pytest.raises(ValueError, match="uint8 image"):
        figures.image_pixels(np.zeros((28, 28)))


def test_predictions_per_image_give_the_runs_accuracy(result, networks):
    """The dashboard's per-image predictions, counted, are the run's accuracy at every step (same images)."""
    _, nets = networks
    images, _ = load_images("mnist", "test", None)
    preds = predict_all(nets, images.subset(slice(0, 20)), T)
    for m in result.methods:
        assert preds.predicted[m].shape == (T, 20)
        np.testing.assert_allclose(100 * (preds.predicted[m] == preds.labels).mean(1), result.accuracy[m])
    fixed, broken = preds.disagreements("none", "ftbc", T)
    assert set(fixed).isdisjoint(broken)
    assert all(not preds.correct("none", T)[i] and preds.correct("ftbc", T)[i] for i in fixed)


def test_the_run_keeps_the_predictions_a_second_simulation_gives(result, networks):
    """The predictions the run keeps (the per-image pages read them) are, image by image and step by step, those
    of a second simulation of the rebuilt networks; a truncated view keeps the first steps."""
    _, nets = networks
    images, _ = load_images("mnist", "test", None)
    again = predict_all(nets, images.subset(slice(0, 20)), T)
    np.testing.assert_array_equal(result.labels, again.labels)
    for m in result.methods:
        assert result.predicted[m].shape == (T, 20) and result.predicted[m].dtype == np.int32
        np.testing.assert_array_equal(result.predicted[m], again.predicted[m])
    short = result.truncated(2)
    assert all((short.predicted[m] == result.predicted[m][:2]).all() and short.predicted[m].shape == (2, 20)
               for m in result.methods)


def test_disagreements_on_a_hand_made_case():
    preds = ImagePredictions({"a": np.array([[0, 1, 2, 3]]), "b": np.array([[0, 2, 2, 0]])}, np.array([0, 2, 1, 3]))
    fixed, broken = preds.disagreements("a", "b", 1)
    assert list(fixed) == [1] and list(broken) == [3]


def test_layer_trace_matches_the_layer_and_the_ann(networks):
    ann, nets = networks
    net = nets["ftbc"]
    x = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(2))
    layer = net.layer_names[0]
    lt = trace_layer(net, ann, x, T, layer, neurons=24)
    assert lt.spikes.shape == lt.charge.shape == (T, 24) and lt.ann.shape == (24,)
    assert np.all(lt.charge[lt.spikes] >= 1 - 1e-6) and np.all(lt.charge[~lt.spikes] < 1)  # fires iff u >= θ
    assert np.all((lt.ann >= 0) & (lt.ann <= 1))
    raster = trace_image(net, x, T, layer, max_neurons=24)  # the core's raster samples the same neurons
    np.testing.assert_array_equal(lt.neuron_index, raster.neuron_index)
    np.testing.assert_array_equal(lt.spikes, raster.raster)
    first = neuron_order(lt, "first spike")
    shown = lt.first_spike[first]
    fired = shown[shown > 0]
    assert np.all(np.diff(fired) >= 0) and np.all(shown[len(fired):] == 0)  # early first, silent last
    assert np.all(np.diff(lt.rate[neuron_order(lt, "rate")]) <= 0)
    assert np.all(np.diff(lt.ann[neuron_order(lt, "ANN activation")]) <= 0)


def test_raster_draws_every_spike_beside_the_ann_activation(networks):
    ann, nets = networks
    lt = trace_layer(nets["none"], ann, torch.rand(1, 28, 28), T, nets["none"].layer_names[1], neurons=16)
    order = neuron_order(lt, "first spike")
    fig = neuron_figures.raster_figure(lt, order, "none")
    spikes, ann_bars, rate_bars = fig.data
    assert len(spikes.x) == int(lt.spikes.sum()) and spikes.mode == "markers"  # one mark per spike
    row = {int(n): r for r, n in enumerate(order)}
    t_idx, n_idx = np.nonzero(lt.spikes)
    assert list(spikes.y) == [row[int(n)] for n in n_idx] and list(spikes.x) == list(t_idx + 1)
    np.testing.assert_allclose(ann_bars.x, lt.ann) and np.testing.assert_allclose(rate_bars.x, lt.rate)
    assert fig.layout.height >= neuron_figures.ROW_PX * 16 and fig.layout.xaxis.title.text == "time step t"
    charge = neuron_figures.neuron_charge_figure(lt, int(order[0]), "none")
    np.testing.assert_allclose(charge.data[0].y, lt.charge[:, order[0]])
    assert charge.layout.yaxis.title.text == "u[t] / θ"


def test_compare_figures_and_table(result):
    short = result.truncated(2)
    runs = [("T=4", result), ("T=2", short)]
    fig = compare_figures.compare_accuracy_figure(runs)
    assert len(fig.data) == 6 and fig.data[0].name == "T=4: " + figures.label("none")
    assert fig.data[3].line.dash == "dash" and fig.data[0].line.color == fig.data[3].line.color
    lat = compare_figures.compare_accuracy_figure(runs, "latency", ["cos"])
    assert list(lat.data[0].x) == [3, 4, 5, 6] and "latency" in lat.layout.xaxis.title.text
    table = compare_figures.compare_table(runs)
    assert list(table["T"]) == [4, 4, 4, 2, 2, 2]
    np.testing.assert_allclose(table["accuracy at T (%)"][:3], [result.accuracy[m][-1] for m in result.methods])
    np.testing.assert_allclose(table["vs first run (points)"][3:],
                               [result.accuracy[m][1] - result.accuracy[m][-1] for m in result.methods])
    assert compare_figures.common_latency(runs, ["none", "ftbc"]) == 2
    assert compare_figures.common_latency(runs) is None  # COS at T = 2 starts at latency 3: no common latency
    assert not [c for c in table.columns if c.startswith("accuracy at latency")]
    both = compare_figures.compare_table([("T=4", result)])
    np.testing.assert_allclose(both["accuracy at latency 4 (%)"],  # FTBC at T = 4 against COS at T = 2 (ρ = 2)
                               [result.accuracy["none"][3], result.accuracy["ftbc"][3], result.accuracy["cos"][1]])
    layers = compare_figures.compare_layer_figure(runs, "abs", ["none"])
    np.testing.assert_allclose(layers.data[1].y, short.measurements["none"].layer_error("abs")[:, -1])


def test_walkthrough_sentences_use_the_runs_numbers(result):
    text = story.accuracy_step(result)
    gap = result.ann_accuracy - result.accuracy["none"][-1]
    assert f"{gap:.1f} points below" in text and f"T = {T}" in text
    assert story.methods_to_contrast(result) == ("none", "ftbc")
    layer = story.top_layer(result)
    assert layer in story.layers_step(result) and layer in story.membrane_step(result, layer)
    text, method = story.biases_step(result)
    assert method == "ftbc" and f"{result.reports['ftbc'].n_images} calibration images" in text
    neuron, trace, _ = story.neuron_step(T)
    assert trace.u.shape == (T, 3) and "**clipping** loses 0.15" in neuron
    uneven = error_parts(0.37, 1.0, T, 0.5, float(trace.rate[-1, 1]))["unevenness"]
    assert f"ends at {trace.rate[-1, 1]:.3f} θ: **unevenness** error {uneven:+.3f} θ" in neuron
    preds = ImagePredictions({"none": np.array([[1, 1, 0]] * T), "ftbc": np.array([[0, 1, 1]] * T), "cos":
                              np.array([[0, 0, 0]] * T)}, np.array([0, 1, 1]))
    told = story.image_step(result, preds, [str(k) for k in range(10)])
    assert list(told.fixed) == [0, 2] and told.index == 0 and "fixes 2 and breaks 0" in told.text


def test_neuron_figure():
    tr = simulate_if_neurons(np.full((6, 2), 0.3), 1.0, 0.5)
    fig = figures.neuron_figure(tr, 0.3, 0.25)
    assert len(fig.data) == 6  # u, spikes, rate per neuron
    assert {s.y0 for s in fig.layout.shapes} >= {1.0, 0.0, 0.3, 0.25}
    assert fig.layout.xaxis2.title.text == "time step t" and "rate" in fig.layout.yaxis2.title.text


def test_html_export_embeds_plotly(result):
    html = exports.figure_html(figures.accuracy_figure(result))
    assert "<html>" in html[:200] and len(html) > 1_000_000  # plotly.js itself is inside: works offline
    assert not re.search(r"<script[^>]+src=", html)


def test_presenter_style_enlarges_a_copy(result):
    fig = figures.accuracy_figure(result)
    big = exports.presenter_style(fig)
    assert big.layout.font.size == exports.PRESENTER_FONT and fig.layout.font.size is None  # the original is kept
    assert big.data[0].line.width > (fig.data[0].line.width or 2)
