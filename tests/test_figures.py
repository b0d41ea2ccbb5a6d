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

from dashboard import figures  # noqa: E402
from ftbc_core.checkpoint import load_checkpoint  # noqa: E402
from ftbc_core.experiment import ExperimentConfig, run_experiment  # noqa: E402
from ftbc_core.image_trace import network_from_report, trace_image  # noqa: E402
from ftbc_core.neuron_lab import simulate_if_neurons  # noqa: E402
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


def test_image_probability_and_raster_figures(result):
    ann, _ = load_checkpoint(ROOT / "pretrained" / "cnn-mnist.safetensors")
    snn = to_snn(ann)
    x = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0))
    traces = {m: trace_image(network_from_report(snn, result.reports[m]), x, T, snn.layer_names[0], max_neurons=20)
              for m in ("none", "ftbc")}
    fig = figures.probability_figure(traces, 3, [str(k) for k in range(10)])
    np.testing.assert_allclose(fig.data[1].y, traces["ftbc"].probabilities[:, 3])
    assert titles(fig) == ("time step t", "softmax probability of the true class")
    raster = figures.raster_figure(traces["none"])
    assert len(raster.data[0].x) == int(traces["none"].raster.sum()) and titles(raster)[0] == "time step t"
    grey = figures.image_figure(np.zeros((28, 28, 1), np.uint8))
    rgb = figures.image_figure(np.zeros((32, 32, 3), np.uint8), "x")
    assert grey.data[0].type == "heatmap" and rgb.data[0].type == "image"


def test_neuron_figure():
    tr = simulate_if_neurons(np.full((6, 2), 0.3), 1.0, 0.5)
    fig = figures.neuron_figure(tr, 0.3, 0.25)
    assert len(fig.data) == 6  # u, spikes, rate per neuron
    assert {s.y0 for s in fig.layout.shapes} >= {1.0, 0.0, 0.3, 0.25}
    assert fig.layout.xaxis2.title.text == "time step t" and "rate" in fig.layout.yaxis2.title.text


def test_html_export_embeds_plotly(result):
    html = figures.figure_html(figures.accuracy_figure(result))
    assert "<html>" in html[:200] and len(html) > 1_000_000  # plotly.js itself is inside: works offline
    assert not re.search(r"<script[^>]+src=", html)
