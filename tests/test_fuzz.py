"""Property-based (hypothesis) tests: invariants of the IF neuron, of converted random small networks and of FTBC
calibration, and "any bytes in, a CheckpointError out" for checkpoints and model cards.

Invariants checked, from the equations of :mod:`ftbc_core.neuron` (c[t] = z[t] - b[t] is the net input of step t,
v0 = v[0] <= θ):

* every output is 0 or θ, so a neuron's spike count after T steps is in [0, T];
* the step equation ``u[t] = v[t-1] + c[t]``, ``v[t] = u[t] - s[t]`` (checked on what the module really computed);
* charge conservation: ``θ · count = v0 + Σ c[t] - v[T]``;
* membrane bounds: ``min(v0, 0) + t·min(c_min, 0) <= v[t] <= max(v0, θ) + t·max(c_max - θ, 0)`` (induction: a step
  that fires leaves ``u - θ >= 0``, one that does not leaves ``u < θ``);
* prefix property: the first t steps of a T-step run equal a t-step run (before and after calibration);
* calibrated biases are finite and shaped ``[T, C]`` (``[T, 1]`` layer-wise).

Examples are small and few (``max_examples``, no deadline) so the file runs in a few seconds on one core.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save_bytes
from torch import nn

from ftbc_core.calibration import METHODS, get_method
from ftbc_core.checkpoint import CheckpointError, load_checkpoint
from ftbc_core.data import DATASETS, DataError, validate_arrays
from ftbc_core.neuron import QCFS, IFNeuron, Run, channel_view, if_step, running
from ftbc_core.snn import SpikingNetwork, to_snn

ROOT = Path(__file__).resolve().parent.parent
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BIAS_METHODS = [m for m in METHODS if m.startswith("ftbc")]
EPS = 1e-4  # float32 rounding over <= 12 steps of O(10) values


# -- the neuron alone ------------------------------------------------------------------------------------------
@FAST
@given(steps=st.integers(1, 12), channels=st.integers(1, 4), batch=st.integers(1, 5), seed=st.integers(0, 2**16),
       lo=st.floats(-3, 1), span=st.floats(0, 4), v0_fraction=st.floats(0, 1), with_bias=st.booleans())
def test_if_step_invariants(steps, channels, batch, seed, lo, span, v0_fraction, with_bias):
    gen = torch.Generator().manual_seed(seed)
    theta = 0.2 + 2 * torch.rand(channels, generator=gen)  # per channel, [C]
    z = (lo + span * torch.rand(steps, batch, channels, generator=gen)) * theta  # [T, B, C] in [lo·θ, (lo+span)·θ]
    b = (torch.rand(steps, channels, generator=gen) - 0.5) * theta if with_bias else torch.zeros(steps, channels)
    v0 = v0_fraction * theta.expand(batch, channels)
    v, vs, ss = v0.clone(), [], []
    for t in range(steps):
        v, s = if_step(v, z[t], theta, b[t])
        vs.append(v)
        ss.append(s)
    v_all, s_all = torch.stack(vs), torch.stack(ss)
    assert bool(((s_all == 0) | (s_all == theta)).all())
    count = (s_all / theta).sum(0)
    assert bool((count >= 0).all()) and bool((count <= steps).all())
    c = z - b.unsqueeze(1)
    torch.testing.assert_close(count * theta, v0 + c.sum(0) - v_all[-1], rtol=0, atol=EPS * steps)
    _assert_membrane_bounds(v_all, c, theta, v0)


def _assert_membrane_bounds(v: torch.Tensor, c: torch.Tensor, theta: torch.Tensor, v0: torch.Tensor) -> None:
    """``v, c: [T, B, C, ...]`` potentials after each step and net inputs; theta broadcastable to one step."""
    steps = v.shape[0]
    t = torch.arange(1, steps + 1, dtype=v.dtype).view(-1, *([1] * (v.dim() - 1)))
    c_min, c_max = c.min(0).values, c.max(0).values
    lower = torch.clamp(v0, max=0) + t * torch.clamp(c_min, max=0)
    upper = torch.maximum(v0, theta.expand_as(v0)) + t * torch.clamp(c_max - theta, min=0)
    assert bool((v >= lower - EPS).all()), float((lower - v).max())
    assert bool((v <= upper + EPS).all()), float((v - upper).max())


@FAST
@given(steps=st.integers(2, 12), cut=st.integers(1, 11), channels=st.integers(1, 3), seed=st.integers(0, 2**16),
       static=st.booleans())
def test_if_neuron_module_follows_if_step_and_is_causal(steps, cut, channels, seed, static):
    """The multi-step module equals the step function, for static [B, C] and sequence [T*B, C] inputs, and its
    first t outputs do not depend on T."""
    cut = min(cut, steps)
    gen = torch.Generator().manual_seed(seed)
    neuron = IFNeuron(0.3 + torch.rand(channels, generator=gen))
    neuron.set_bias((torch.rand(steps, channels, generator=gen) - 0.5) * 0.2)
    batch = 3
    z = torch.randn(batch if static else steps * batch, channels, generator=gen)

    def run(n_steps: int) -> torch.Tensor:
        with running(Run(n_steps, batch)):
            zz = z if static else z[: n_steps * batch]
            return neuron(zz).view(n_steps, batch, channels)

    out = run(steps)
    z_seq = z.unsqueeze(0).expand(steps, batch, channels) if static else z.view(steps, batch, channels)
    v = 0.5 * neuron.theta.expand(batch, channels)
    for t in range(steps):
        v, s = if_step(v, z_seq[t], neuron.theta, neuron.bias[t])
        torch.testing.assert_close(out[t], s, rtol=0, atol=0)
    torch.testing.assert_close(run(cut), out[:cut], rtol=0, atol=0)


# -- random small networks -------------------------------------------------------------------------------------
@st.composite
def small_networks(draw):
    """``(ann, images [N, C, H, W])``: a random conv/linear net with QCFS or ReLU activations (>= 1 of them)."""
    seed = draw(st.integers(0, 2**16))
    act = draw(st.sampled_from(["qcfs", "relu"]))
    in_ch, size = draw(st.integers(1, 3)), draw(st.integers(2, 6))
    convs, linears = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    if convs + linears == 0:
        linears = 1
    levels, lam = draw(st.integers(1, 4)), draw(st.sampled_from([0.3, 1.0, 2.5]))
    input_size = size
    torch.manual_seed(seed)

    def activation() -> nn.Module:
        return QCFS(levels, lam) if act == "qcfs" else nn.ReLU()

    layers: list[nn.Module] = []
    ch = in_ch
    for _ in range(convs):
        out = draw(st.integers(1, 4))
        layers += [nn.Conv2d(ch, out, 3, padding=1)]
        if draw(st.booleans()):
            bn = nn.BatchNorm2d(out)
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
            layers.append(bn)
        layers.append(activation())
        if size >= 2 and draw(st.booleans()):
            layers.append(nn.AvgPool2d(2))
            size //= 2
        ch = out
    layers.append(nn.Flatten())
    features = ch * size * size
    for _ in range(linears):
        out = draw(st.integers(1, 6))
        layers += [nn.Linear(features, out), activation()]
        features = out
    layers.append(nn.Linear(features, draw(st.integers(2, 5))))
    ann = nn.Sequential(*layers).eval()
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(draw(st.integers(1, 12)), in_ch, input_size, input_size, generator=gen)
    return ann, images


def _record(snn: SpikingNetwork, x: torch.Tensor, steps: int):
    """Simulate one chunk and return ``(per-step output [T, B, K], {layer: (z, u, s) each [T, B, ...]})``."""
    seen: dict[str, dict] = {n: {"u": [], "s": []} for n in snn.layer_names}

    def pre_hook(module: IFNeuron, args) -> None:
        seen[module.name]["z"] = module.as_sequence(args[0]).clone()

    def step_hook(neuron: IFNeuron, t: int, u: torch.Tensor, s: torch.Tensor) -> None:
        seen[neuron.name]["u"].append(u.clone())
        seen[neuron.name]["s"].append(s.clone())

    handles = [n.register_forward_pre_hook(pre_hook) for n in snn.neurons]
    try:
        with torch.no_grad():
            out = snn.simulate(x, steps, hooks={n: (step_hook,) for n in snn.neurons})
    finally:
        for h in handles:
            h.remove()
    return out, {k: (v["z"], torch.stack(v["u"]), torch.stack(v["s"])) for k, v in seen.items()}


def _assert_prefix_property(net: SpikingNetwork, x: torch.Tensor, steps: int, cut: int) -> None:
    """The first ``cut`` steps of a ``steps``-step run equal a ``cut``-step run: spike trains exactly, outputs up to
    float rounding (the stateless layers run on ``[T*B, ...]`` batches, and BLAS may pick another kernel for
    another T*B: differences of ~1e-7 relative were seen in the last linear layer)."""
    cut = min(cut, steps)
    out_full, full = _record(net, x, steps + net.latency)
    out_cut, part = _record(net, x, cut + net.latency)
    for name in net.layer_names:
        torch.testing.assert_close(part[name][2], full[name][2][: cut + net.latency], rtol=0, atol=0)
    torch.testing.assert_close(out_cut, out_full[: cut + net.latency], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        averaged = net(x, steps)
        assert averaged.shape[0] == steps and bool(torch.isfinite(averaged).all())
        torch.testing.assert_close(net(x, cut), averaged[:cut], rtol=1e-5, atol=1e-6)


def _check_layer_invariants(snn: SpikingNetwork, x: torch.Tensor, steps: int) -> None:
    out, layers = _record(snn, x, steps)
    assert out.shape[:2] == (steps, x.shape[0]) and bool(torch.isfinite(out).all())
    for neuron in snn.neurons:
        z, u, s = layers[neuron.name]
        ndim = u.dim() - 1  # one step: [B, C, ...]
        theta = channel_view(neuron.theta, ndim)
        b = torch.stack([torch.zeros_like(u[t]) + neuron.bias_at(t, ndim) for t in range(steps)])  # [T, B, C, ...]
        assert bool(((s == 0) | (s == theta)).all()), neuron.name
        count = (s / theta).sum(0)
        assert bool((count >= 0).all()) and bool((count <= steps).all())
        v = u - s
        v0 = neuron.initial_potential(z[0])
        v_prev = torch.cat([v0.unsqueeze(0), v[:-1]])
        c = z - b
        torch.testing.assert_close(u, v_prev + c, rtol=0, atol=EPS)  # the step equation, as computed
        torch.testing.assert_close(count * theta, v0 + c.sum(0) - v[-1], rtol=0, atol=EPS * steps)
        _assert_membrane_bounds(v, c, theta, v0)


@FAST
@given(net=small_networks(), steps=st.integers(1, 12), cut=st.integers(1, 12))
def test_converted_network_invariants(net, steps, cut):
    ann, images = net
    snn = to_snn(ann, images=images)
    _check_layer_invariants(snn, images, steps)
    _assert_prefix_property(snn, images, steps, cut)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=small_networks(), steps=st.integers(1, 12), cut=st.integers(1, 12), method=st.sampled_from(BIAS_METHODS),
       alpha=st.sampled_from([1e-3, 0.1, 0.5, 2.0, 10.0]), batches=st.integers(1, 3), batch_size=st.integers(1, 8))
def test_calibration_invariants(net, steps, cut, method, alpha, batches, batch_size):
    ann, images = net
    snn = to_snn(ann, images=images)
    opts = {"alpha": alpha, "batches": batches, "batch_size": batch_size}
    opts = {k: v for k, v in opts.items() if k in get_method(method).defaults}
    calibrated, report = get_method(method).calibrate(snn, ann, images, steps, opts)
    for neuron in calibrated.neurons:
        channels = 1 if method == "ftbc-layer" else neuron.bias.shape[1]
        assert neuron.bias.shape == (steps, channels) and bool(torch.isfinite(neuron.bias).all()), neuron.name
        assert np.isfinite(report.biases[neuron.name]).all()
    assert all(np.isfinite(report.bias_change))
    _check_layer_invariants(calibrated, images, steps)
    _assert_prefix_property(calibrated, images, steps, cut)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=small_networks(), steps=st.integers(1, 8), cut=st.integers(1, 8), rho=st.integers(0, 4))
def test_cos_outputs_are_finite_and_causal(net, steps, cut, rho):
    # the lock-step variant is causal at every step; the published (replay) COS only from ρ counted steps on
    ann, images = net
    cos, report = get_method("cos-causal").calibrate(to_snn(ann, images=images), ann, images, steps, {"rho": rho})
    assert report.latency == rho and cos.latency == rho
    _assert_prefix_property(cos, images, steps, cut)
    if rho <= min(steps, cut):
        replay, report = get_method("cos").calibrate(to_snn(ann, images=images), ann, images, steps, {"rho": rho})
        assert report.latency == rho and replay.latency == rho
        _assert_prefix_property(replay, images, steps, cut)


# -- checkpoints and data: anything in, a clear error (or a valid result) out ----------------------------------
@functools.cache
def _shipped() -> tuple[dict, dict[str, torch.Tensor]]:
    card = json.loads((ROOT / "pretrained" / "cnn-mnist.json").read_text())
    model, _ = load_checkpoint(ROOT / "pretrained" / "cnn-mnist.safetensors")
    return card, {k: v.contiguous() for k, v in model.state_dict().items()}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(list(_shipped()[0]) + ["unknown"]), JSON_VALUES | st.just("__drop__"),
                               min_size=1, max_size=3))
def test_any_model_card_loads_or_is_a_checkpoint_error(changes):
    card, tensors = _shipped()
    card = dict(card)
    for key, value in changes.items():
        if value == "__drop__":
            card.pop(key, None)
        else:
            card[key] = value
    data = st_save_bytes(tensors, metadata={"ftbc_card": json.dumps(card)})
    try:
        model, loaded = load_checkpoint(data)
    except CheckpointError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert loaded.arch == "cnn" and loaded.num_classes == 10  # only harmless changes can load


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=64) | st.binary(min_size=8, max_size=8).map(lambda b: b + b"{" + bytes(8)))
def test_any_bytes_are_a_checkpoint_error(raw):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(raw)
    assert "\n" not in str(err.value)


METADATA = (st.integers() | st.floats() | st.booleans() | st.none() | st.text(max_size=4) | JSON_VALUES
            | st.dictionaries(st.sampled_from(["ftbc_card", "other"]),
                              JSON_VALUES | st.text(max_size=6) | JSON_VALUES.map(json.dumps), max_size=2))


@settings(max_examples=80, deadline=None)
@given(header=JSON_VALUES, metadata=METADATA, framed=st.booleans())
def test_any_safetensors_header_is_a_checkpoint_error(header, metadata, framed):
    """A well-formed safetensors frame around a random JSON header, or around one tensor and random metadata."""
    header_obj = {"__metadata__": metadata, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}} if framed \
        else header
    body = json.dumps(header_obj).encode()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(len(body).to_bytes(8, "little") + body + bytes(4))
    assert "\n" not in str(err.value)


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 4), max_size=5) | st.sampled_from(
           [[2, 28, 28], [2, 28, 28, 1], [2, 32, 32, 3], [0, 28, 28, 1], [2, 28, 28, 3], [2, 32, 32], [2, 3, 32, 32]]),
       dtype=st.sampled_from(["uint8", "float32", "int64", "bool"]),
       labels=st.lists(st.integers(-2, 12), max_size=3) | st.just([0, 9]) | st.just([1.0, 2.0]),
       dataset=st.sampled_from(sorted(DATASETS)))
def test_any_arrays_are_valid_images_or_a_data_error(shape, dtype, labels, dataset):
    info = DATASETS[dataset]
    x = np.zeros(shape, dtype=dtype)
    y = np.array(labels)
    try:
        arrays = validate_arrays(x, y, info)
    except DataError as err:
        assert str(err).startswith(f"{info.name}: ")
        return
    assert arrays.x.dtype == np.uint8 and arrays.x.shape[1:] == info.image_shape and len(arrays) >= 1
    assert arrays.y.min() >= 0 and arrays.y.max() < info.num_classes
