"""Conversion and simulation: exactness where the math is exact, convergence where it is asymptotic."""

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from conftest import module_activations, randomize
from ftbc_core.models import Normalize, build_model
from ftbc_core.neuron import QCFS, IFNeuron
from ftbc_core.snn import fold_batchnorm, to_snn


def _single_layer_net(levels: int = 4) -> nn.Module:
    torch.manual_seed(3)
    net = nn.Sequential(Normalize((0.5,), (0.25,)), nn.Conv2d(1, 6, 3, padding=1), QCFS(levels, 1.5),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    return net.eval()


def test_single_spiking_layer_is_exact_at_t_equals_l():
    # With a static input, a QCFS layer's rate after T = L steps from v0 = θ/2 is exactly floor(z·L/λ + 1/2)/L
    # (clamped), and everything after it is linear: the SNN output equals the ANN output up to float rounding.
    net = _single_layer_net(levels=4)
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        out = to_snn(net)(x, 4)
        assert_close(out[-1], net(x), rtol=1e-5, atol=1e-5)


def test_converges_to_the_clip_limit_as_t_grows(tiny_cnn, mnist_like):
    # For T = L·k the SNN rate of every layer converges (error O(1/T)) to clamp(z, 0, θ): the QCFS net with its
    # quantization refined away. Tolerance: the measured error must shrink by >= 4x from T=64 to T=1024 and be
    # below 2% of the output scale at T=1024.
    limit = copy.deepcopy(tiny_cnn)
    for m in limit.modules():
        if isinstance(m, QCFS):
            m.levels = 10**6
    x = mnist_like[:8]
    with torch.no_grad():
        target = limit(x)
        out = to_snn(tiny_cnn)(x, 1024)
    err_64 = (out[63] - target).abs().max().item()
    err_1024 = (out[1023] - target).abs().max().item()
    assert err_1024 * 4 <= err_64
    assert err_1024 <= 0.02 * target.abs().max().item()


def test_conversion_leaves_the_ann_untouched(tiny_cnn, mnist_like):
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    snn = to_snn(tiny_cnn)
    with torch.no_grad():
        snn(mnist_like[:4], 3)
    after = tiny_cnn.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert not any(isinstance(m, IFNeuron) for m in tiny_cnn.modules())
    assert sum(isinstance(m, IFNeuron) for m in snn.modules()) == 4


@pytest.mark.parametrize("arch", ["resnet20", "vgg16"])
def test_cifar_architectures_convert_and_run_on_cpu(arch):
    torch.manual_seed(0)
    ann = randomize(build_model(arch, "qcfs", 4), threshold=2.0)
    snn = to_snn(ann)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = snn(x, 3)
    assert out.shape == (3, 2, 10)
    assert torch.isfinite(out).all()
    expected_layers = 19 if arch == "resnet20" else 15
    assert len(snn.layer_names) == expected_layers


def test_prefix_property(tiny_cnn, mnist_like):
    snn = to_snn(tiny_cnn)
    x = mnist_like[:6]
    with torch.no_grad():
        long = snn(x, 12)
        short = snn(x, 5)
    assert_close(long[:5], short, rtol=0, atol=0)


def test_batch_chunking_does_not_change_results(tiny_cnn, mnist_like):
    snn = to_snn(tiny_cnn)
    with torch.no_grad():
        whole = snn(mnist_like[:10], 6)
        snn.max_batch_steps = 6 * 3  # 3 images per chunk
        chunked = snn(mnist_like[:10], 6)
    assert_close(whole, chunked, rtol=1e-6, atol=1e-6)


def test_relu_network_needs_images_and_gets_percentile_thresholds(mnist_like):
    torch.manual_seed(0)
    ann = randomize(build_model("cnn", "relu"))
    with pytest.raises(ValueError, match="needs training images"):
        to_snn(ann)
    snn = to_snn(ann, images=mnist_like, percentile=99.0)
    snn_max = to_snn(ann, thresholds="max", images=mnist_like)
    for a, b in zip(snn.neurons, snn_max.neurons):
        assert 0 < a.theta.item() <= b.theta.item()
    per_channel = to_snn(ann, thresholds="max", images=mnist_like, per_channel=True)
    assert per_channel.neurons[0].theta.shape == (32,)
    with torch.no_grad():
        out = per_channel(mnist_like[:3], 4)
    assert torch.isfinite(out).all()


def test_initial_potential_option(tiny_cnn):
    assert to_snn(tiny_cnn, v0="zero").neurons[0].v0_fraction == 0.0
    assert to_snn(tiny_cnn).neurons[0].v0_fraction == 0.5
    with pytest.raises(ValueError, match="v0 must be"):
        to_snn(tiny_cnn, v0="middle")


@pytest.mark.parametrize("bad", [0, -3, 5000, 2.5])
def test_timesteps_out_of_range_is_a_clear_error(tiny_cnn, mnist_like, bad):
    with pytest.raises(ValueError, match="time steps"):
        to_snn(tiny_cnn)(mnist_like[:1], bad)


def test_in_place_simulation_equals_the_step_equation(tiny_cnn, mnist_like):
    """The fast in-place loop and the generic per-step path (taken when a step rule decides the steps; here the
    rule is the step equation itself) give identical spikes."""
    snn = to_snn(tiny_cnn)
    snn.neurons[1].set_bias(torch.randn(3, snn.neurons[1].theta.numel()) * 0.1)  # biases on the first steps only
    x = mnist_like[:5]

    def equation(neuron, t, v, z_t, out):
        v_next, spikes = neuron.step(t, v, z_t)
        out.copy_(spikes)
        return v_next

    with torch.no_grad():
        fast = snn.simulate(x, 6)
        generic = snn.simulate(x, 6, rules={neuron: equation for neuron in snn.neurons})
    assert_close(fast, generic, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["cnn", "resnet20"])
def test_channels_last_layout_changes_only_rounding(arch):
    torch.manual_seed(1)
    in_channels, size = (1, 28) if arch == "cnn" else (3, 32)
    ann = randomize(build_model(arch, "qcfs", 4, in_channels=in_channels), threshold=2.0)
    x = torch.rand(3, in_channels, size, size)
    fast, plain = to_snn(ann), to_snn(ann, channels_last=False)
    conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a, b = fast(x, 8), plain(x, 8)
    # a neuron within rounding distance of θ may flip, so compare predictions and the bulk of the logits
    assert (a[-1].argmax(-1) == b[-1].argmax(-1)).all()
    assert (a - b).abs().median() <= 1e-5 * b.abs().max()


@pytest.mark.parametrize("arch", ["cnn", "resnet20", "vgg16"])
def test_batchnorm_folding_keeps_the_function_and_the_names(arch):
    torch.manual_seed(2)
    in_channels, size = (1, 28) if arch == "cnn" else (3, 32)
    ann = randomize(build_model(arch, "relu", in_channels=in_channels), seed=4)
    before = copy.deepcopy(ann.state_dict())
    folded = fold_batchnorm(ann)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert [n for n, _ in module_activations(folded)] == [n for n, _ in module_activations(ann)]
    assert all(torch.equal(before[k], v) for k, v in ann.state_dict().items())  # the input model is untouched
    ann64 = copy.deepcopy(ann).double()
    x = torch.rand(2, in_channels, size, size, dtype=torch.float64)
    with torch.no_grad():  # folded in float64, the same function up to float64 rounding
        assert_close(fold_batchnorm(ann64)(x), ann64(x), rtol=1e-10, atol=1e-10)


def test_folded_snn_changes_only_rounding(tiny_cnn, mnist_like):
    folded, plain = to_snn(tiny_cnn), to_snn(tiny_cnn, fold_bn=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert folded.layer_names == plain.layer_names
    with torch.no_grad():
        a, b = folded(mnist_like, 8), plain(mnist_like, 8)
    # a neuron within float32 rounding of θ may flip, so compare predictions and the bulk of the logits
    assert (a[-1].argmax(-1) == b[-1].argmax(-1)).float().mean() >= 0.95
    assert (a - b).abs().median() <= 1e-5 * b.abs().max()


def test_folding_skips_what_it_cannot_fold():
    lone_bn = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.ReLU())  # BN before the conv
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU())
    for model in (lone_bn, no_stats):
        folded = fold_batchnorm(model)
        called = [type(folded.get_submodule(n.target)) for n in folded.graph.nodes if n.op == "call_module"]
        assert called == [type(m) for m in model]
