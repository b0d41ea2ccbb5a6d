"""ftbc_core.image_trace, .memory and .neuron_lab: one image's trajectory, networks rebuilt from reports, the
memory estimate, the neuron lab."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftbc_core.calibration import get_method
from ftbc_core.image_trace import network_from_report, trace_image
from ftbc_core.memory import estimate_memory_bytes
from ftbc_core.neuron_lab import error_parts, qcfs_value, simulate_if_neurons
from ftbc_core.snn import to_snn


@pytest.fixture
def snn(tiny_cnn):
    return to_snn(tiny_cnn)


def test_trace_image_matches_the_network_output(snn, mnist_like):
    x = mnist_like[3]
    tr = trace_image(snn, x, 6, snn.layer_names[1], max_neurons=50)
    expected = snn(x[None], 6)[:, 0]  # [T, K] running mean
    torch.testing.assert_close(torch.from_numpy(tr.logits), expected, rtol=0, atol=0)
    np.testing.assert_allclose(tr.probabilities.sum(1), 1.0, rtol=1e-6)
    assert tr.raster.shape == (6, 50) and tr.raster.dtype == bool
    assert tr.layer_size == 32 * 28 * 28 and tr.predictions.shape == (6,)


def test_trace_image_raster_is_the_spikes_of_the_sampled_neurons(snn, mnist_like):
    layer = snn.layer_names[0]
    neuron = snn.neurons[0]
    seen = []
    keep = lambda _n, t, _u, s: seen.append((s[0].reshape(-1) > 0).clone())  # noqa: E731
    with torch.no_grad():
        snn.simulate(mnist_like[:1], 4, hooks={neuron: (keep,)})
    tr = trace_image(snn, mnist_like[0], 4, layer, max_neurons=300, seed=7)
    spikes = torch.stack(seen)  # [T, N_all]
    np.testing.assert_array_equal(tr.raster, spikes[:, torch.from_numpy(tr.neuron_index)].numpy())
    np.testing.assert_allclose(tr.spike_rate, spikes.float().mean(1).numpy(), rtol=1e-6)
    again = trace_image(snn, mnist_like[0], 4, layer, max_neurons=300, seed=7)
    np.testing.assert_array_equal(again.neuron_index, tr.neuron_index)
    assert len(np.unique(tr.neuron_index)) == 300


def test_trace_image_small_layer_and_errors(snn, mnist_like):
    tr = trace_image(snn, mnist_like[:1], 3, snn.layer_names[-1])  # the 128-unit linear layer: all of it
    assert tr.raster.shape == (3, 128) and tr.layer_size == 128
    with pytest.raises(ValueError, match="unknown spiking layer"):
        trace_image(snn, mnist_like[0], 3, "nope")
    with pytest.raises(ValueError, match="one image"):
        trace_image(snn, mnist_like[:2], 3, snn.layer_names[0])


def test_trace_image_skips_cos_pre_steps(tiny_cnn, snn, mnist_like):
    net, _ = get_method("cos").calibrate(snn, tiny_cnn, mnist_like, 4, {"rho": 3})
    tr = trace_image(net, mnist_like[0], 4, snn.layer_names[0], max_neurons=10)
    assert tr.raster.shape == (4, 10)
    torch.testing.assert_close(torch.from_numpy(tr.logits), net(mnist_like[:1], 4)[:, 0], rtol=0, atol=0)


def test_network_from_report_reproduces_the_calibrated_network(tiny_cnn, snn, mnist_like):
    opts = {"alpha": 0.2, "batches": 2, "batch_size": 16}
    for method in ("ftbc", "ftbc-layer", "cos", "cos-causal", "none"):
        own = {k: v for k, v in opts.items() if k in get_method(method).defaults}
        net, report = get_method(method).calibrate(snn, tiny_cnn, mnist_like, 5, own)
        rebuilt = network_from_report(snn, report)
        assert rebuilt.latency == net.latency
        torch.testing.assert_close(rebuilt(mnist_like[:8], 5), net(mnist_like[:8], 5), rtol=0, atol=0)
    assert all(n.bias.shape[0] == 0 for n in snn.neurons)  # the uncorrected network is untouched


def test_estimate_memory_is_linear_in_steps_and_batch(tiny_cnn, snn):
    shape = (1, 28, 28)
    e = {(t, b): estimate_memory_bytes(tiny_cnn, shape, t, b) for t in (1, 2, 4) for b in (1, 2, 4)}
    assert abs((e[4, 1] - e[2, 1]) - 2 * (e[2, 1] - e[1, 1])) <= 2
    assert e[1, 4] > e[1, 2] > e[1, 1]
    largest = 32 * 28 * 28 * 4  # the first conv's output for one image, float32
    assert e[4, 4] >= 4 * 4 * 4 * largest
    assert e[4, 4] == pytest.approx(estimate_memory_bytes(snn, shape, 4, 4), rel=0.01)
    assert not any(m._forward_hooks for m in tiny_cnn.modules())
    with pytest.raises(ValueError):
        estimate_memory_bytes(tiny_cnn, shape, 0, 1)
    with pytest.raises(ValueError):
        estimate_memory_bytes(tiny_cnn, shape, 4, 0)


@pytest.mark.parametrize("z", [-0.2, 0.0, 0.13, 0.37, 0.5, 0.74, 0.99, 1.0, 1.6])
def test_if_neuron_with_constant_input_is_the_quantized_clamp(z):
    theta, steps = 1.0, 8
    tr = simulate_if_neurons(np.full((steps, 1), z), theta, 0.5)
    assert tr.rate[-1, 0] == pytest.approx(qcfs_value(z, theta, steps), abs=1e-12)
    np.testing.assert_allclose(tr.v, tr.u - tr.spikes)
    assert set(np.unique(tr.spikes)) <= {0.0, theta}
    parts = error_parts(z, theta, steps, 0.5, float(tr.rate[-1, 0]))
    assert parts["unevenness"] == pytest.approx(0.0, abs=1e-12)
    # each part against its definition, computed here independently (their sum is an identity, not a check)
    assert parts["clipping"] == pytest.approx(max(z - theta, 0.0))
    best = theta * min(max(np.floor(z * steps / theta + 0.5) / steps, 0.0), 1.0)  # what T steps from θ/2 can give
    assert parts["quantization"] == pytest.approx(min(max(z, 0.0), theta) - best, abs=1e-12)
    assert parts["total"] == pytest.approx(max(z, 0.0) - tr.rate[-1, 0], abs=1e-12)


def test_if_neuron_bias_and_initial_potential():
    z, theta, steps = np.full((10, 2), 0.45), 2.0, 10
    zero = simulate_if_neurons(z, theta, 0.0)
    assert zero.v0 == 0.0 and zero.u[0, 0] == pytest.approx(0.45)
    biased = simulate_if_neurons(z, theta, 0.5, bias=np.full(steps, 0.1))
    plain = simulate_if_neurons(z - 0.1, theta, 0.5)
    np.testing.assert_allclose(biased.spikes, plain.spikes)  # a constant bias is a smaller input
    with pytest.raises(ValueError):
        simulate_if_neurons(np.zeros(4), 1.0)
    with pytest.raises(ValueError):
        simulate_if_neurons(np.zeros((4, 1)), 0.0)
