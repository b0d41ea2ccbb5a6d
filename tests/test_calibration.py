"""FTBC, its variants and COS on small models: the paper's claim checked, plus the pitfalls of the reference code."""

import copy

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from ftbc_core.calibration.base import selectable_methods
from ftbc_core.calibration import METHODS, ann_channel_means, fit_biases, get_method
from ftbc_core.snn import to_snn


def _step_channel_means(snn, x, timesteps):
    """Per layer, ``[T, C]`` channel means of the spikes of each step on ``x``."""
    means = {n: [None] * timesteps for n in snn.layer_names}

    def hook(neuron, t, u, s):
        means[neuron.name][t] = s.transpose(0, 1).reshape(s.shape[1], -1).mean(1)

    with torch.no_grad():
        snn.simulate(x, timesteps, hooks={neuron: (hook,) for neuron in snn.neurons})
    return {n: torch.stack(v) for n, v in means.items()}


def _max_gap(snn, ann, x, timesteps):
    thetas = {n: m.theta for n, m in zip(snn.layer_names, snn.neurons)}
    with torch.no_grad():
        targets = ann_channel_means(ann, x, thetas)
    got = _step_channel_means(snn, x, timesteps)
    return max(((got[n] - targets[n]).abs() / thetas[n]).max().item() for n in snn.layer_names)


def test_registry_lists_every_method():
    assert list(METHODS)[:2] == ["none", "ftbc"]
    assert {"none", "ftbc", "ftbc-exact", "ftbc-layer", "cos"} <= set(METHODS)
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        get_method("magic")


def test_exact_variant_hits_the_targets_in_one_pass(tiny_cnn, mnist_like):
    # Claim: after FTBC, the channel mean of every layer's output at every step equals the ANN's (on the
    # calibration data). The exact root gets there in one pass; what is left is the resolution of a fraction of
    # N binary spikes, rounded to the nearest count: θ/(2N), N = B·H·W samples per channel. The smallest N is
    # the linear layer's (N = B = 16), so the tolerance is θ/32.
    snn = to_snn(tiny_cnn)
    x = mnist_like[:16]
    before = _max_gap(snn, tiny_cnn, x, 6)
    calibrated, _, _ = fit_biases(snn, tiny_cnn, x, 6, mode="exact", batches=1, batch_size=16)
    after = _max_gap(calibrated, tiny_cnn, x, 6)
    assert before > 0.1
    assert after <= 1 / 32 + 1e-6


def _gaps(snn, ann, x, timesteps):
    thetas = {n: m.theta for n, m in zip(snn.layer_names, snn.neurons)}
    with torch.no_grad():
        targets = ann_channel_means(ann, x, thetas)
    got = _step_channel_means(snn, x, timesteps)
    return {n: (got[n] - targets[n]).abs() / thetas[n] for n in snn.layer_names}  # [T, C] in units of θ


def test_alpha_iteration_approaches_the_targets(tiny_cnn, mnist_like):
    # With one fixed batch and repeated passes the α-iteration drives the per-step channel means towards the
    # targets. Binary spikes over N samples cannot hit every fraction and a fixed α makes the bias hop around the
    # root, so the tolerance is on the mean gap (0.015·θ; measured 0.001-0.013) and on the max gap of the conv
    # layers, whose channels have N >= 784 samples (0.05·θ; measured 0.027).
    snn = to_snn(tiny_cnn)
    x = mnist_like[:16]
    before = _gaps(snn, tiny_cnn, x, 6)
    calibrated, changes, _ = fit_biases(snn, tiny_cnn, x, 6, alpha=0.2, batches=1, batch_size=16, passes=30)
    after = _gaps(calibrated, tiny_cnn, x, 6)
    mean_before = torch.stack([g.mean() for g in before.values()]).mean().item()
    mean_after = torch.stack([g.mean() for g in after.values()]).mean().item()
    assert mean_after <= 0.015
    assert mean_after * 5 <= mean_before
    conv_layers = [n for n in calibrated.layer_names if n.startswith("features")]
    assert max(after[n].max().item() for n in conv_layers) <= 0.05
    assert changes[-1] < changes[0] / 5


def test_biases_converge_rather_than_grow(tiny_cnn, mnist_like):
    snn = to_snn(tiny_cnn)
    kw = dict(alpha=0.2, batch_size=8)
    few, ch_few, _ = fit_biases(snn, tiny_cnn, mnist_like, 4, batches=6, **kw)
    many, ch_many, _ = fit_biases(snn, tiny_cnn, mnist_like, 4, batches=6, passes=5, **kw)
    norm = lambda net: sum(n.bias.abs().sum().item() for n in net.neurons)  # noqa: E731
    assert norm(many) < 1.5 * norm(few)  # the reference code's bug made this grow ~N·α·error
    assert np.mean(ch_many[-6:]) < np.mean(ch_many[:6])


def test_biases_of_step_t_do_not_depend_on_T(tiny_cnn, mnist_like):
    snn = to_snn(tiny_cnn)
    short, _, _ = fit_biases(snn, tiny_cnn, mnist_like, 3, batches=2, batch_size=8)
    long, _, _ = fit_biases(snn, tiny_cnn, mnist_like, 7, batches=2, batch_size=8)
    for a, b in zip(short.neurons, long.neurons):
        assert_close(a.bias, b.bias[:3], rtol=0, atol=0)


def test_calibrated_prefix_property(tiny_cnn, mnist_like):
    calibrated, _ = get_method("ftbc").calibrate(to_snn(tiny_cnn), tiny_cnn, mnist_like, 8,
                                                 {"batches": 2, "batch_size": 8})
    x = mnist_like[:5]
    with torch.no_grad():
        assert_close(calibrated(x, 8)[:3], calibrated(x, 3), rtol=0, atol=0)


def test_calibration_is_deterministic_for_a_seed(tiny_cnn, mnist_like):
    snn = to_snn(tiny_cnn)
    a, _, _ = fit_biases(snn, tiny_cnn, mnist_like, 4, batches=3, batch_size=8, seed=5)
    b, _, _ = fit_biases(snn, tiny_cnn, mnist_like, 4, batches=3, batch_size=8, seed=5)
    c, _, _ = fit_biases(snn, tiny_cnn, mnist_like, 4, batches=3, batch_size=8, seed=6)
    assert all(torch.equal(x.bias, y.bias) for x, y in zip(a.neurons, b.neurons))
    assert not all(torch.equal(x.bias, y.bias) for x, y in zip(a.neurons, c.neurons))


def test_calibration_mutates_neither_the_snn_nor_the_ann(tiny_cnn, mnist_like):
    snn = to_snn(tiny_cnn)
    ann_state = copy.deepcopy(tiny_cnn.state_dict())
    snn_state = copy.deepcopy(snn.state_dict())
    for name in selectable_methods():
        opts = {k: v for k, v in {"batches": 1, "batch_size": 8}.items() if k in METHODS[name].defaults}
        get_method(name).calibrate(snn, tiny_cnn, mnist_like, 4, opts)
    for k, v in tiny_cnn.state_dict().items():
        assert torch.equal(v, ann_state[k])
    for k, v in snn.state_dict().items():
        assert torch.equal(v, snn_state[k])


def test_bias_buffers_are_saved_and_moved(tiny_cnn, mnist_like):
    calibrated, _, _ = fit_biases(to_snn(tiny_cnn), tiny_cnn, mnist_like, 4, batches=1, batch_size=8)
    state = calibrated.state_dict()
    bias_keys = [k for k in state if k.endswith(".bias") and "IF" not in k and state[k].dim() == 2
                 and state[k].shape[0] == 4]
    assert len(bias_keys) == len(calibrated.layer_names)
    fresh = to_snn(tiny_cnn)
    for name, neuron in zip(fresh.layer_names, fresh.neurons):
        neuron.set_bias(state[f"net.{name}.bias"])
    x = mnist_like[:4]
    with torch.no_grad():
        assert_close(fresh(x, 4), calibrated(x, 4), rtol=0, atol=0)
    moved = copy.deepcopy(calibrated).to(torch.float64)
    assert all(n.bias.dtype == torch.float64 for n in moved.neurons)
    meta = copy.deepcopy(calibrated).to("meta")
    assert all(n.bias.device.type == "meta" for n in meta.neurons)


def test_layerwise_variant_has_one_bias_per_step(tiny_cnn, mnist_like):
    calibrated, report = get_method("ftbc-layer").calibrate(to_snn(tiny_cnn), tiny_cnn, mnist_like, 5,
                                                            {"batches": 2, "batch_size": 8})
    assert all(b.shape == (5, 1) for b in report.biases.values())


def test_cos_with_zero_rho_is_plain_conversion(tiny_cnn, mnist_like):
    snn = to_snn(tiny_cnn)
    cos, report = get_method("cos").calibrate(snn, tiny_cnn, mnist_like, 4, {"rho": 0})
    x = mnist_like[:6]
    with torch.no_grad():
        assert_close(cos(x, 5), snn(x, 5), rtol=0, atol=0)
    cos4, report4 = get_method("cos").calibrate(snn, tiny_cnn, mnist_like, 4, {"rho": 4})
    assert report4.latency == 4 and cos4.latency == 4
    with torch.no_grad():
        out = cos4(x, 5)
    assert out.shape == (5, 6, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("options,message", [({"alpha": 0}, "alpha"), ({"alpha": -1}, "alpha"),
                                             ({"batches": 0}, "batches"), ({"rho": -1}, "rho")])
def test_bad_options_are_clear_errors(tiny_cnn, mnist_like, options, message):
    name = "cos" if "rho" in options else "ftbc"
    with pytest.raises(ValueError, match=message):
        get_method(name).calibrate(to_snn(tiny_cnn), tiny_cnn, mnist_like, 4, options)
