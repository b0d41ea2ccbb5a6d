"""COS as published (``cos``, replay) and the lock-step variant (``cos-causal``).

Each test states its claim; the references are written here, independently of ``ftbc_core.calibration.cos``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from ftbc_core.calibration import METHODS, get_method
from ftbc_core.calibration.base import copy_snn
from ftbc_core.calibration.cos import CosReplayNeuron
from ftbc_core.neuron import QCFS, IFNeuron, Run, channel_view, if_step, running
from ftbc_core.snn import SpikingNetwork, running_mean, to_snn

F64 = torch.float64


# -- helpers -------------------------------------------------------------------------------------------------------
def _spike_frames(net: SpikingNetwork, x: torch.Tensor, steps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(per-step outputs, {layer: [steps, B, ...] spikes as emitted})`` of one ``simulate(x, steps)``."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in net.layer_names}

    def hook(n, t, _u, s):
        assert t == len(seen[n.name]), "step hooks must see every frame, in order"
        seen[n.name].append(s.clone())

    with torch.no_grad():
        out = net.simulate(x, steps, hooks={neuron: (hook,) for neuron in net.neurons})
    return out, {n: torch.stack(v) for n, v in seen.items()}


def _small_ann(seed: int = 5) -> nn.Module:
    """conv -> QCFS -> linear -> QCFS -> linear -> QCFS -> linear on 1x6x6 images: three IF layers after
    conversion (weights scaled so that COS shifts neurons both ways).

    Three, not two: the first IF layer gets the same current at every step, and such a neuron is never moved by
    COS in a way that changes its spikes (z < θ keeps the residual in [0, θ), z >= θ fires at every step anyway).
    The second layer's shifts change its spikes, so the third layer tells a replay of the *calibrated* upstream
    frames from a pre-simulation on the upstream's uncorrected pre-steps.
    """
    torch.manual_seed(seed)
    ann = nn.Sequential(nn.Conv2d(1, 4, 3), QCFS(4, 1.0), nn.Flatten(), nn.Linear(64, 16), QCFS(4, 1.5),
                        nn.Linear(16, 12), QCFS(4, 1.0), nn.Linear(12, 5))
    with torch.no_grad():
        ann[0].weight.mul_(3.0)
        ann[3].weight.mul_(5.0)
        ann[3].bias.add_(0.2)
        ann[5].weight.mul_(4.0)
    return ann.eval()


def _reference_replay(frames: torch.Tensor, theta: torch.Tensor, rho: int):
    """The published COS layer written as the public code does it, in units of θ (float64).

    ``frames``: the counted input ``[T, B, ...]``. Returns (pre-step spikes ``[ρ, ...]``, counted spikes
    ``[T, ...]``, shifted down, shifted up) with spikes in units of the input (0 or θ).
    """
    x = frames / theta
    v = torch.full_like(x[0], 0.5)
    count = torch.zeros_like(v)
    lowest = torch.full_like(v, 1000.0)  # smallest charge at a spike step (the code's sentinel 1000)
    highest = torch.full_like(v, -1000.0)  # largest charge at a quiet step (sentinel −1000)
    pre = []
    for t in range(rho):
        v = v + x[t]
        fire = (v >= 1.0).to(F64)
        lowest = torch.where(fire > 0, torch.minimum(lowest, v), lowest)
        highest = torch.where(fire > 0, highest, torch.maximum(highest, v))
        count = count + fire
        v = v - fire
        pre.append(fire)
    down = (v < 0) & (count > 0)
    up = v >= 1.0
    start = torch.full_like(v, 0.5)
    start = torch.where(down, 0.5 - torch.clamp(lowest - 0.999, min=1.0), start)
    start = torch.where(up, 0.5 + torch.clamp(1.001 - highest, min=1.0), start)
    v, counted = start, []
    for t in range(x.shape[0]):
        v = v + x[t]
        fire = (v >= 1.0).to(F64)
        v = v - fire
        counted.append(fire)
    pre_s = torch.stack(pre) * theta if pre else x[:0]
    return pre_s, torch.stack(counted) * theta, down, up


# -- the shift rule ------------------------------------------------------------------------------------------------
def test_shift_direction_and_size_follow_the_published_rule():
    # Claim: after ρ pre-steps, a neuron with one spike too many (fired, residual < 0) starts lower, by
    # max(1, min spiking charge/θ − 0.999)·θ, and fires one spike fewer; one with a spike too few (residual >= θ)
    # starts higher, by max(1, 1.001 − max quiet charge/θ)·θ, and fires one more; others keep v0 = θ/2.
    # Inverting the rule (up <-> down) changes every shifted start and count below, so this test fails.
    rho, steps, theta = 4, 4, 2.0
    cases = {  # counted frames in units of θ -> (expected start / θ, counted spikes, spikes without COS)
        "too many, shift 1": ([1.0, -0.9, 0.0, 0.0], 0.5 - 1.0, 0, 1),
        "too many, shift > 1": ([2.0, -1.9, 0.0, 0.0], 0.5 - (2.5 - 0.999), 0, 1),
        "too few, shift > 1": ([-0.6, 0.0, 0.0, 2.2], 0.5 + (1.001 + 0.1), 2, 1),
        "too few, shift 1": ([0.3, 0.0, 0.0, 2.2], 0.5 + 1.0, 2, 1),
        "right count": ([0.25, 0.25, 0.25, 0.25], 0.5, 1, 1),
        "silent, residual < 0": ([-0.7, 0.0, 0.0, 0.0], 0.5, 0, 0),  # never fired: no down shift
    }
    frames = torch.tensor([c[0] for c in cases.values()], dtype=F64).T * theta  # [T, C]
    neuron = CosReplayNeuron(torch.tensor([theta]), 0.5, "x", rho).to(F64)
    upstream_pre = torch.full((rho, len(cases)), 100.0 * theta, dtype=F64)  # must be ignored
    z = torch.cat([upstream_pre, frames]).unsqueeze(1)  # [ρ + T, B = 1, C]
    charges = []
    keep = lambda _n, t, u, s: charges.append(u.clone()) if t == rho else None  # noqa: E731
    with running(Run(rho + steps, 1, hooks={neuron: (keep,)})):
        out = neuron(z.reshape((rho + steps) * 1, -1)).view(rho + steps, len(cases))
    start = (charges[0][0] - frames[0]) / theta
    counted = (out[rho:] / theta).sum(0)
    plain = (if_step_seq(frames, theta) / theta).sum(0)
    for i, (name, (_, want_start, want_count, want_plain)) in enumerate(cases.items()):
        assert float(plain[i]) == want_plain, name
        assert abs(float(start[i]) - want_start) < 1e-12, (name, float(start[i]))
        assert float(counted[i]) == want_count, name


def if_step_seq(frames: torch.Tensor, theta: float) -> torch.Tensor:
    """Plain IF from θ/2 on ``frames`` ``[T, ...]``: spikes ``[T, ...]``."""
    v, out = torch.full_like(frames[0], 0.5 * theta), []
    for t in range(frames.shape[0]):
        v, s = if_step(v, frames[t], theta)
        out.append(s)
    return torch.stack(out)


# -- the replay against a reference --------------------------------------------------------------------------------
@pytest.mark.parametrize("rho,steps", [(3, 6), (4, 4), (1, 5)])
def test_replay_equals_a_step_by_step_reference(rho, steps):
    # Claim: ``cos`` is the published replay: layer by layer, ρ pre-steps on the first ρ frames of the calibrated
    # upstream sequence from θ/2, the shift, then the T steps on the same frames from the shifted start. The
    # network emits each layer's ρ pre-step frames first (so ``simulate(x, ρ + T)[ρ:]`` is the counted output).
    ann = _small_ann()
    x = torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    snn = to_snn(ann, channels_last=False, fold_bn=False).to(F64)
    net, report = get_method("cos").calibrate(snn, ann, x.float(), steps, {"rho": rho})
    assert report.latency == rho and net.latency == rho
    out, frames = _spike_frames(net, x, rho + steps)
    names = net.layer_names
    assert names == ["1", "4", "6"]
    conv, lin1, lin2, head = (copy.deepcopy(ann[i]).double() for i in (0, 3, 5, 7))
    thetas = [float(ann[i].threshold.detach()) for i in (1, 4, 6)]
    reference, down, up = [], 0, 0
    with torch.no_grad():
        z = conv(x).unsqueeze(0).expand(steps, 32, 4, 4, 4)  # static input: every frame the same
        for layer, theta in enumerate(thetas):
            pre, counted, d, u = _reference_replay(z, theta, rho)
            reference.append((pre, counted))
            down, up = down + int(d.sum()), up + int(u.sum())
            nxt = lin1 if layer == 0 else lin2 if layer == 1 else head
            z = torch.stack([nxt(s.flatten(1)) for s in counted])
        logits = z
    assert up > 0 and (down > 0 or rho == 1)  # both directions (after one pre-step, a neuron that fired has
    # v = u − θ >= 0: no down shift is possible with ρ = 1)
    for name, (pre, counted) in zip(names, reference):
        assert_close(frames[name][rho:], counted, rtol=0, atol=0)  # exact spikes
        assert_close(frames[name][:rho], pre, rtol=0, atol=0)
    assert_close(out[rho:], logits, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        assert_close(net(x, steps), running_mean(logits), rtol=1e-12, atol=1e-12)
    s2 = reference[1][1]
    # ... and the shifts change what the uncorrected network would fire
    plain = to_snn(ann, channels_last=False, fold_bn=False).to(F64)
    _, plain_frames = _spike_frames(plain, x, steps)
    assert not torch.equal(plain_frames[names[1]], s2)


def test_replay_is_causal_from_rho_steps_on():
    # Claim: counted step t depends on the input frames up to max(t, ρ): a run to T' >= ρ equals the first T'
    # steps of a longer run (spikes exactly), so results at every T' >= ρ come from one run.
    ann = _small_ann(5)
    x = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    rho, steps = 3, 7
    net, _ = get_method("cos").calibrate(to_snn(ann), ann, x, steps, {"rho": rho})
    _, full = _spike_frames(net, x, rho + steps)
    for cut in range(rho, steps + 1):
        _, part = _spike_frames(net, x, rho + cut)
        for name in net.layer_names:
            assert torch.equal(part[name], full[name][: rho + cut])


def test_replay_network_keeps_names_and_buffers(tiny_cnn, mnist_like):
    snn = to_snn(tiny_cnn)
    net, _ = get_method("cos").calibrate(snn, tiny_cnn, mnist_like, 4, {"rho": 2})
    assert net.layer_names == snn.layer_names
    assert all(isinstance(n, CosReplayNeuron) and isinstance(n, IFNeuron) for n in net.neurons)
    assert [n.name for n in net.neurons] == snn.layer_names
    assert set(net.state_dict()) == set(snn.state_dict())
    assert not any(isinstance(n, CosReplayNeuron) for n in snn.neurons)  # the given network is untouched
    with torch.no_grad():
        zero, _ = get_method("cos").calibrate(snn, tiny_cnn, mnist_like, 4, {"rho": 0})
        assert_close(zero(mnist_like[:4], 4), snn(mnist_like[:4], 4), rtol=0, atol=0)


# -- ρ and T -------------------------------------------------------------------------------------------------------
def test_rho_above_T_is_refused_with_one_line(tiny_cnn, mnist_like):
    snn = to_snn(tiny_cnn)
    with pytest.raises(ValueError) as err:
        get_method("cos").calibrate(snn, tiny_cnn, mnist_like, 3, {"rho": 4})
    message = str(err.value)
    assert "\n" not in message and "ρ = 4" in message and "T = 3" in message and "<= T" in message
    net, _ = get_method("cos").calibrate(snn, tiny_cnn, mnist_like, 4, {"rho": 4})  # ρ = T is fine
    with pytest.raises(ValueError, match=r"needs T >= ρ counted steps, got T = 2") as err:
        with torch.no_grad():
            net(mnist_like[:2], 2)  # a shorter run later is refused too
    assert "\n" not in str(err.value)
    for bad, match in ((2.5, "rho must be an integer"), (-1, r"rho must be in \[0, 64\]"),
                       (65, r"rho must be in \[0, 64\]")):
        for name in ("cos", "cos-causal"):
            with pytest.raises(ValueError, match=match):
                get_method(name).calibrate(snn, tiny_cnn, mnist_like, 8, {"rho": bad})


# -- cos-causal: today's lock-step COS, unchanged ------------------------------------------------------------------
class _LockStepRule:
    """A copy of the lock-step COS step rule as it was before the replay became ``cos``."""

    def __init__(self, rho: int) -> None:
        self.rho = int(rho)

    def __call__(self, neuron, t, v, z_t, out):
        theta = channel_view(neuron.theta, v.dim())
        if t == self.rho and self.rho > 0:
            shift = theta * ((v >= theta).to(v.dtype) - (v < 0).to(v.dtype))
            v = neuron.v0_fraction * theta + shift
        v_next, spikes = if_step(v, z_t, theta, neuron.bias_at(t - self.rho if t >= self.rho else 10**9, v.dim()))
        out.copy_(spikes)
        return v_next


class _LockStepNetwork(SpikingNetwork):
    """Every IF layer runs :class:`_LockStepRule`; ρ uncounted steps first."""

    def __init__(self, net: nn.Module, layer_names: list[str], rho: int) -> None:
        super().__init__(net, layer_names)
        self.latency = rho
        self.rule = _LockStepRule(rho)

    def step_rules(self):
        return {neuron: self.rule for neuron in self.neurons}


@pytest.mark.parametrize("rho", [0, 2, 4])
def test_cos_causal_gives_exactly_the_lock_step_spikes(tiny_cnn, mnist_like, rho):
    snn = to_snn(tiny_cnn)
    steps = 5
    causal, report = get_method("cos-causal").calibrate(snn, tiny_cnn, mnist_like, steps, {"rho": rho})
    assert report.latency == rho and causal.latency == rho
    plain = copy_snn(snn)
    reference = _LockStepNetwork(plain.net, plain.layer_names, rho)
    x = mnist_like[:12]
    out_c, frames_c = _spike_frames(causal, x, rho + steps)
    out_r, frames_r = _spike_frames(reference, x, rho + steps)
    for name in snn.layer_names:
        assert_close(frames_c[name], frames_r[name], rtol=0, atol=0)
    assert_close(out_c, out_r, rtol=0, atol=0)
    with torch.no_grad():
        assert_close(causal(x, steps), reference(x, steps), rtol=0, atol=0)


def test_both_variants_are_registered_and_described():
    assert {"cos", "cos-causal"} <= set(METHODS)
    assert METHODS["cos"].defaults == {"rho": 4} and METHODS["cos-causal"].defaults == {"rho": 4}
    assert "lock-step" in METHODS["cos-causal"].description and "published" in METHODS["cos-causal"].description
    assert METHODS["cos"].label != METHODS["cos-causal"].label


def test_recorder_measures_the_counted_steps_of_the_replay(tiny_cnn, mnist_like):
    # Claim: with latency = ρ and the pre-steps emitted first, the Recorder (which drops the first ``latency``
    # step indices) measures exactly the T counted spikes of every layer.
    from ftbc_core.measure import Recorder

    rho, steps = 3, 4
    net, _ = get_method("cos").calibrate(to_snn(tiny_cnn), tiny_cnn, mnist_like, steps, {"rho": rho})
    x = mnist_like[:6]
    _, frames = _spike_frames(net, x, rho + steps)
    rec = Recorder(net, tiny_cnn, steps)
    rec.observe_ann(x)
    with torch.no_grad():
        net.simulate(x, steps + net.latency, hooks=rec.hooks)
    measured = rec.result()
    for name, neuron in zip(net.layer_names, net.neurons):
        counted = frames[name][rho:] / channel_view(neuron.theta, frames[name].dim() - 1)
        want = counted.flatten(1).double().mean(1)  # fraction of neurons firing at each counted step
        assert measured.spike_rate[name].shape == (steps,)
        assert_close(torch.from_numpy(measured.spike_rate[name]), want, rtol=0, atol=1e-12)
