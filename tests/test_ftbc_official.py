"""``ftbc-official``: the public FTBC script's bias rule, checked against a literal re-implementation here."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from ftbc_core.calibration import METHODS, get_method
from ftbc_core.neuron import QCFS
from ftbc_core.snn import to_snn

F64 = torch.float64
IF_LAYERS = ("1", "4", "7")  # the QCFS positions in _small_ann, which become the IF layers' names


def _small_ann(seed: int = 0) -> nn.Module:
    """conv -> QCFS -> avgpool -> conv -> QCFS -> linear -> QCFS -> linear, on 1x8x8 images, L = 4."""
    torch.manual_seed(seed)
    ann = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), QCFS(4, 1.0), nn.AvgPool2d(2), nn.Conv2d(4, 6, 3),
                        QCFS(4, 0.8), nn.Flatten(), nn.Linear(24, 8), QCFS(4, 1.2), nn.Linear(8, 3))
    with torch.no_grad():
        ann[0].weight.mul_(2.0)
        ann[3].weight.mul_(2.0)
        ann[6].weight.mul_(2.0)
    return ann.eval()


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _snn(ann: nn.Module):
    return to_snn(ann, channels_last=False).to(F64)


def _script(ann, snn, images, timesteps, *, alpha, batches, batch_size, seed=0, levels=None):
    """The script's procedure, literally: per batch, per IF layer in order, run the whole ANN and the whole SNN
    (all current biases) to get the layer's ANN output and SNN input, then re-simulate the layer by itself from
    θ/2 without its own bias, b[t] += α·mean(s − a), carrying mem − (s − a) to the next step. O(L²·T)."""
    net = copy.deepcopy(snn)
    reference = copy.deepcopy(ann)
    if levels is not None:
        for m in reference.modules():
            if isinstance(m, QCFS):
                m.levels = levels
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    batch_size = min(batch_size, images.shape[0])
    for i in range(batches):
        x = images[order.roll(-i * batch_size)[:batch_size]]
        for name in IF_LAYERS:
            neuron = net.net.get_submodule(name)
            theta = neuron.theta.view(-1, *([1] * (3 if name != "7" else 1)))
            seen = {}
            h = reference[int(name)].register_forward_hook(lambda _m, _i, out: seen.setdefault("a", out))
            with torch.no_grad():
                reference(x)
            h.remove()
            h = neuron.register_forward_hook(lambda _m, inp, _o: seen.setdefault("z", inp[0]))
            with torch.no_grad():
                net.simulate(x.to(F64), timesteps)
            h.remove()
            a = torch.minimum(seen["a"].double().clamp_min(0), theta)
            z = seen["z"]
            z = z.view(timesteps, x.shape[0], *z.shape[1:]) if z.shape[0] != x.shape[0] else \
                z.unsqueeze(0).expand(timesteps, *z.shape)
            if neuron.bias.shape[0] == 0:
                neuron.bias = torch.zeros(timesteps, a.shape[1], dtype=F64)
            v = 0.5 * theta
            for t in range(timesteps):
                mem = v + z[t]
                spike = (mem >= theta).double() * theta
                error = spike - a
                dims = [0, 2, 3] if error.dim() == 4 else [0]
                neuron.bias[t] = alpha * error.mean(dim=dims) + neuron.bias[t]
                mem = mem - error
                v = mem - (mem >= theta).double() * theta
    return {name: net.net.get_submodule(name).bias for name in IF_LAYERS}


@pytest.mark.parametrize("levels", [None, 8])
def test_equals_a_literal_reimplementation_of_the_script(levels):
    # Claim: one SNN forward per batch with the script's step rule gives the script's biases, for every layer
    # (the later layers see the earlier ones' biases of the same batch), with the trained L or the script's L = 8.
    ann, images, steps = _small_ann(), _images(24), 5
    snn = _snn(ann)
    opts = {"alpha": 0.4, "batches": 3, "batch_size": 8, "seed": 0, "reference_levels": levels}
    net, report = get_method("ftbc-official").calibrate(snn, ann, images, steps, opts)
    want = _script(ann, snn, images, steps, alpha=0.4, batches=3, batch_size=8, levels=levels)
    assert net.layer_names == list(IF_LAYERS)
    for name, neuron in zip(net.layer_names, net.neurons):
        assert neuron.bias.shape == want[name].shape == (steps, want[name].shape[1])
        assert float(want[name].abs().max()) > 1e-3, name  # a real correction in every layer
        assert neuron.bias.dtype == torch.float32  # stored like every bias method's (IFNeuron.set_bias)
        assert_close(neuron.bias.double(), want[name], rtol=1e-6, atol=1e-7)  # = the float64 fit, in float32
        assert_close(torch.from_numpy(report.biases[name]).double(), want[name], rtol=1e-6, atol=1e-7)
    assert len(report.bias_change) == 3 and report.n_images == 24
    if levels is not None:  # the option changes the reference: L = 4 and L = 8 give other biases
        trained, _ = get_method("ftbc-official").calibrate(snn, ann, images, steps, {**opts, "reference_levels": None})
        assert not torch.allclose(trained.neurons[0].bias, net.neurons[0].bias)
    assert all(m.levels == 4 for m in ann.modules() if isinstance(m, QCFS))  # the given ANN is untouched


def test_bias_grows_with_the_number_of_batches():
    # Claim (the documented pathology): the script measures a layer's error without the layer's own bias, so
    # when the error does not change (the first layer, the same images in every batch) the bias after N batches
    # is N·α·e instead of settling; e at step 1 is mean(θ·H(θ/2 + z − θ) − a).
    ann, images, steps, alpha = _small_ann(), _images(16), 4, 0.4
    snn = _snn(ann)
    first = {}
    for n in (1, 2, 5):
        net, _ = get_method("ftbc-official").calibrate(snn, ann, images, steps,
                                                        {"alpha": alpha, "batches": n, "batch_size": 16})
        first[n] = net.neurons[0].bias
    theta = float(snn.neurons[0].theta)
    assert float(first[1].abs().max()) > 0.01 * theta
    for n in (2, 5):
        assert_close(first[n], n * first[1], rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        z = ann[0](images).double()
        a = ann[:2](images).double().clamp(0, theta)
    e0 = ((0.5 * theta + z >= theta).double() * theta - a).mean(dim=(0, 2, 3))
    assert_close(first[1][0].double(), alpha * e0, rtol=1e-6, atol=1e-7)
    # the corrected FTBC, on the same batches, does not grow like that
    snn32 = to_snn(ann, channels_last=False)
    ftbc = [get_method("ftbc").calibrate(snn32, ann, images, steps, {"alpha": alpha, "batches": n,
                                                                     "batch_size": 16})[0].neurons[0].bias
            for n in (1, 5)]
    assert float((ftbc[1] - 5 * ftbc[0]).abs().max()) > 0.1 * float(ftbc[0].abs().max())


def test_biases_are_causal_and_the_network_is_a_plain_bias_network():
    # Claim: b[1..t] do not depend on T (one calibration to T serves every T' <= T), and the result is an ordinary
    # SNN with [T, C] biases (no step rule left), evaluated and measured like ``ftbc``.
    ann, images = _small_ann(), _images(16)
    snn = _snn(ann)
    long, _ = get_method("ftbc-official").calibrate(snn, ann, images, 6, {"batches": 2, "batch_size": 8})
    short, _ = get_method("ftbc-official").calibrate(snn, ann, images, 3, {"batches": 2, "batch_size": 8})
    for a, b in zip(long.neurons, short.neurons):
        assert_close(a.bias[:3], b.bias, rtol=0, atol=0)
        assert a.bias.shape[0] == 6
    assert long.latency == 0
    assert all(n.bias.shape[0] == 0 for n in snn.neurons)  # the given SNN is untouched


def test_registered_with_an_honest_label_and_checked_options(tiny_cnn, mnist_like):
    method = METHODS["ftbc-official"]
    assert method.label == "FTBC (official script)"
    assert "not a correct FTBC" in method.description
    assert method.defaults["alpha"] == 0.4 and method.defaults["batches"] == 3
    assert method.defaults["reference_levels"] is None
    snn = to_snn(tiny_cnn)
    for bad in (0, -1, 2.5, "x"):
        with pytest.raises(ValueError, match="reference.levels"):
            method.calibrate(snn, tiny_cnn, mnist_like, 2, {"reference_levels": bad})
    relu = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 26 * 26, 3)).eval()
    with pytest.raises(ValueError, match="has none"):
        method.calibrate(to_snn(relu, images=mnist_like), relu, mnist_like, 2, {"reference_levels": 8})
