"""The default ``ftbc`` converges where the paper's α-rule (``ftbc-alpha``) cycles, and ``ftbc-alpha`` is still the
paper's rule, number for number.

The failure: Proposition 1 of the paper assumes a channel's membrane values have a continuous distribution. With a
point mass (many neurons with one exact value, like the background of MNIST digits), the channel's firing rate
jumps as the bias crosses that value; a target inside the jump cannot be reached, the α-rule hops across it for
ever and its result depends on the number of batches and the draw (docs/method.md, section 5).

The synthetic layer below: a 1x1 conv (weight 1, no bias) feeds a QCFS with λ = θ = 1 on 4x4 images whose pixels
are exactly 0.3 with probability 0.6 (the point mass) and uniform in [0, 1) otherwise. At T = 1 (v0 = θ/2) a neuron
fires iff z − b ≥ 0.5, so the mass fires iff b ≤ −0.2. The ANN's channel mean is about 0.35 (QCFS(0.3) = 0.25 for
the mass); with the mass silent the SNN reaches at most about 0.28, with it firing at least 0.6: the target
lies inside the jump, and the best achievable bias sits just above −0.2 (mass silent).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ftbc_core.calibration import METHODS, fit_biases, get_method
from ftbc_core.calibration.base import ann_channel_means, copy_snn
from ftbc_core.neuron import QCFS, channel_view
from ftbc_core.snn import to_snn

MASS_VALUE, MASS_SHARE = 0.3, 0.6
LAYER = "1"  # the QCFS / IF layer of the synthetic net


def _point_mass_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 1, 1), QCFS(4, 1.0), nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
    return net.eval()


def _point_mass_images(n: int = 512, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=gen)
    mass = torch.rand(n, 1, 4, 4, generator=gen) < MASS_SHARE
    return torch.where(mass, torch.full_like(x, MASS_VALUE), x)


@pytest.fixture(scope="module")
def point_mass():
    ann = _point_mass_net()
    x = _point_mass_images()
    with torch.no_grad():
        target = float(ann_channel_means(ann, x, {LAYER: torch.tensor([1.0])})[LAYER])
    return ann, to_snn(ann), x, target


def _step_rates(net, x: torch.Tensor, steps: int) -> list[float]:
    """Per step, the fraction of the layer's neurons that fire on ``x`` (θ = 1: the channel mean of s[t])."""
    rates: list[float] = []
    neuron = net.net.get_submodule(LAYER)
    hook = lambda _n, _t, _u, s: rates.append(float(s.mean()))  # noqa: E731
    with torch.no_grad():
        net.simulate(x, steps, hooks={neuron: (hook,)})
    return rates


def _mass_fires(net, steps: int) -> tuple[bool, ...]:
    """Per step, whether the point-mass neurons fire (an image made only of the mass value)."""
    return tuple(r == 1.0 for r in _step_rates(net, torch.full((1, 1, 4, 4), MASS_VALUE), steps))


def _calibrate(method: str, snn, ann, x, steps: int, batches: int, seed: int, **extra):
    net, report = get_method(method).calibrate(snn, ann, x, steps, {"batches": batches, "seed": seed, **extra})
    return net, np.asarray(report.bias_change)


def test_alpha_rule_cycles_on_a_point_mass(point_mass):
    # The failure the new default fixes, pinned down: the α-rule's bias change per batch does not decay (it keeps
    # hopping across the mass), and whether the mass fires depends on the number of batches and the seed.
    ann, snn, x, target = point_mass
    decisions, gaps = set(), []
    for batches in (4, 8, 16, 32):
        for seed in (0, 1, 2):
            net, changes = _calibrate("ftbc-alpha", snn, ann, x, 1, batches, seed)
            decisions.add(_mass_fires(net, 1))
            gaps.append(abs(_step_rates(net, x, 1)[0] - target))
            if batches == 32:
                assert changes[-8:].mean() > 0.02  # measured 0.04-0.07 (θ = 1): no convergence
    assert decisions == {(True,), (False,)}  # both sides of the jump, depending on the draw
    assert max(gaps) > 0.4  # measured 0.53: the mass fires although the target is 0.35


def test_default_converges_to_the_nearer_side_of_a_point_mass(point_mass):
    ann, snn, x, target = point_mass
    # Best achievable: the mass silent and every other neuron with z > 0.3 firing (b just above −0.2).
    best = float((x > MASS_VALUE).float().mean())
    rates = []
    for batches in (4, 8, 16, 32):
        for seed in (0, 1, 2):
            net, changes = _calibrate("ftbc", snn, ann, x, 1, batches, seed)
            assert _mass_fires(net, 1) == (False,)  # the side nearer the target, every time
            rate = _step_rates(net, x, 1)[0]
            rates.append(rate)
            # Within 0.01 of the best achievable rate (measured 0.001-0.008 away: the bias approaches −0.2 from
            # above as batches accumulate).
            assert abs(rate - target) <= abs(best - target) + 0.01, (batches, seed, rate, best, target)
            # The convergence curve decays: the last batch moves the bias < 1/10 of what the first did (measured
            # 1/20 at 4 batches, < 1/100 from 8).
            assert changes[-1] <= changes[0] / 10, (batches, seed, changes)
            if batches == 32:
                assert changes[-8:].max() <= changes[0] / 50
    assert max(rates) - min(rates) <= 0.01  # stable over the number of batches and the draw


def test_default_is_stable_over_several_steps(point_mass):
    # At T = 4 the mass recurs at every step (all its neurons share their whole history). Every (batches, seed)
    # must take the same firing decision for it at every step, reach the same per-step rates (within 0.02; measured
    # 0.008) and converge.
    ann, snn, x, _ = point_mass
    decisions, rates = set(), []
    for batches in (4, 8, 16):
        for seed in (0, 1, 2):
            net, changes = _calibrate("ftbc", snn, ann, x, 4, batches, seed)
            decisions.add(_mass_fires(net, 4))
            rates.append(_step_rates(net, x, 4))
            assert changes[-1] <= changes[0] / 10, (batches, seed, changes)
    assert len(decisions) == 1, decisions
    rates = np.asarray(rates)
    assert (rates.max(0) - rates.min(0)).max() <= 0.02, rates


def test_default_running_mean_follows_the_ann_where_a_step_cannot(point_mass):
    # At T = 4 no single step can reach the target (it lies inside the mass's jump). ftbc-root aims every step at
    # A alone and keeps the mass silent; the residual charge then holds the other neurons back too, and the running
    # mean of the spikes ends far below A (measured 0.21 off; per-step rates 0.28, 0.08, 0.08, 0.10 for A = 0.35).
    # ftbc carries each step's gap to the next, fires the mass when the gap calls for it, and ends within 0.003 of
    # A for every (batches, seed) here.
    ann, snn, x, target = point_mass
    for batches in (4, 8):
        for seed in (0, 1):
            errors = {}
            for method in ("ftbc", "ftbc-root"):
                net, _ = _calibrate(method, snn, ann, x, 4, batches, seed)
                errors[method] = abs(float(np.mean(_step_rates(net, x, 4))) - target)
            assert errors["ftbc"] <= 0.01 and errors["ftbc-root"] >= 0.1, (batches, seed, errors)


def test_default_biases_of_step_t_do_not_depend_on_T(tiny_cnn, mnist_like):
    # Causality, which lets one simulation to T_max report every T ≤ T_max: the fit of step t sees steps ≤ t only.
    snn = to_snn(tiny_cnn)
    short, _ = get_method("ftbc").calibrate(snn, tiny_cnn, mnist_like, 3, {"batches": 3, "batch_size": 8})
    long, _ = get_method("ftbc").calibrate(snn, tiny_cnn, mnist_like, 6, {"batches": 3, "batch_size": 8})
    for a, b in zip(short.neurons, long.neurons):
        assert torch.equal(a.bias, b.bias[:3])


# -- ftbc-alpha is today's α-rule, bit for bit -----------------------------------------------------------------
def _todays_alpha_fit(snn, ann, images, timesteps, alpha, batches, batch_size, passes, seed):
    """A copy of the α-iteration as ``ftbc`` ran it before the new default (``FtbcRule`` mode ``alpha`` and the
    batch loop of ``fit_biases``), kept here as the reference ``ftbc-alpha`` must reproduce exactly."""

    def channel_mean(t):
        return t.transpose(0, 1).reshape(t.shape[1], -1).mean(1)

    def rule_for(target):
        def rule(neuron, t, v, z_t, out):
            theta = channel_view(neuron.theta, v.dim())
            vz = v.add_(z_t)
            torch.sub(vz, channel_view(neuron.bias[t], v.dim()), out=out)
            torch.ge(out, theta, out=out)
            spike_mean = channel_mean(out) * neuron.theta
            neuron.bias[t] += alpha * (spike_mean - target)
            u = vz.sub_(channel_view(neuron.bias[t], v.dim()))
            torch.ge(u, theta, out=out)
            out.mul_(theta)
            return u.sub_(out)

        return rule

    new = copy_snn(snn)
    neurons, names = new.neurons, new.layer_names
    thetas = {n: m.theta for n, m in zip(names, neurons)}
    for m in neurons:
        m.bias = torch.zeros(timesteps, 0)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    batch_size = min(batch_size, images.shape[0])
    chosen = [order.roll(-i * batch_size)[:batch_size] for i in range(batches)]
    changes = []
    with torch.no_grad():
        for step_i in range(passes * len(chosen)):
            x = images[chosen[step_i % len(chosen)]]
            targets = ann_channel_means(ann, x, thetas)
            before, rules = [], {}
            for name, m in zip(names, neurons):
                if m.bias.shape[1] != targets[name].numel():
                    m.bias = torch.zeros(timesteps, targets[name].numel())
                before.append(m.bias.clone())
                rules[m] = rule_for(targets[name])
            new.simulate(x, timesteps, rules=rules)
            changes.append(float(torch.cat([(m.bias - b).abs().flatten() for m, b in zip(neurons, before)]).mean()))
    return new, tuple(changes)


@pytest.mark.parametrize("case", ["tiny cnn", "point mass"])
def test_ftbc_alpha_is_todays_rule_bit_for_bit(case, tiny_cnn, mnist_like, point_mass):
    if case == "tiny cnn":
        ann, snn, x = tiny_cnn, to_snn(tiny_cnn), mnist_like
        opts = {"alpha": 0.3, "batches": 3, "batch_size": 8, "passes": 2, "seed": 3}
        steps = 5
    else:
        ann, snn, x, _ = point_mass
        opts = {"alpha": 0.5, "batches": 8, "batch_size": 64, "passes": 1, "seed": 1}
        steps = 4
    ref, ref_changes = _todays_alpha_fit(snn, ann, x, steps, **opts)
    net, report = get_method("ftbc-alpha").calibrate(snn, ann, x, steps, opts)
    assert report.bias_change == ref_changes
    for a, b in zip(net.neurons, ref.neurons):
        assert torch.equal(a.bias, b.bias), a.name
    assert max(float(n.bias.abs().max()) for n in net.neurons) > 0  # something was fitted
    plain, changes, _ = fit_biases(snn, ann, x, steps, **opts)  # fit_biases' default mode is still the α-rule
    assert changes == ref_changes and all(torch.equal(a.bias, b.bias) for a, b in zip(plain.neurons, ref.neurons))


def test_registry_names_and_defaults():
    new, old = get_method("ftbc"), get_method("ftbc-alpha")
    assert (new.mode, old.mode, get_method("ftbc-root").mode) == ("carry", "alpha", "root")
    assert "α-rule" in old.label
    for method in (new, old):
        assert {"alpha", "batches", "batch_size", "passes", "seed"} <= set(method.defaults)
    assert {"ftbc-exact", "ftbc-layer"} <= set(METHODS)


# -- the shipped MNIST CNN, bundled sample ---------------------------------------------------------------------
def test_default_is_stable_on_the_shipped_mnist_cnn():
    # The stability goal in small: the shipped cnn-mnist calibrated on the bundled calibration sample with 4 and 8
    # batches x seeds 0 and 1, evaluated at T = 1 on the 1000 bundled test images. The α-rule gave 98.3 / 61.6 /
    # 98.4 / 64.9 % here; the new default 98.2-98.5 %. Asserted: every run >= 95 % and a spread <= 3 points.
    from ftbc_core.assets import PRETRAINED_DIR, load_sample
    from ftbc_core.checkpoint import load_checkpoint
    from ftbc_core.experiment import calibration_images, simulate_dataset

    ann, _card = load_checkpoint(PRETRAINED_DIR / "cnn-mnist.safetensors")
    snn = to_snn(ann)
    calib_sample, eval_sample = load_sample("mnist", "calib"), load_sample("mnist", "eval")
    accuracies = []
    for seed in (0, 1):
        calib = calibration_images(calib_sample, 1024, seed, 10)
        for batches in (4, 8):
            net, report = get_method("ftbc").calibrate(snn, ann, calib, 1, {"batches": batches, "seed": seed})
            acc, _ = simulate_dataset(net, ann, eval_sample, 1)
            accuracies.append(float(acc[0]))
            assert report.bias_change[-1] < report.bias_change[0] / 3
    assert min(accuracies) >= 95.0 and max(accuracies) - min(accuracies) <= 3.0, accuracies


@pytest.mark.parametrize("method", ["ftbc", "ftbc-root"])
def test_root_search_gives_the_same_biases_in_numpy_and_torch(method, tiny_cnn, mnist_like, point_mass,
                                                               monkeypatch):
    # The CPU runs the search's bookkeeping in numpy, a GPU in torch (search_namespace): both must fit the same
    # biases bit for bit, so a CUDA calibration agrees with the CPU's. Here the torch path runs on the CPU.
    from ftbc_core.calibration import ftbc as ftbc_module

    cases = [(tiny_cnn, to_snn(tiny_cnn), mnist_like, 5, {"alpha": 0.3, "batches": 3, "batch_size": 8}),
             (point_mass[0], point_mass[1], point_mass[2], 4, {"alpha": 0.5, "batches": 6, "batch_size": 64})]
    for ann, snn, x, steps, opts in cases:
        assert ftbc_module.search_namespace(x) is np
        fitted = get_method(method).calibrate(snn, ann, x, steps, opts)
        with monkeypatch.context() as patch:
            patch.setattr(ftbc_module, "search_namespace", lambda like: torch)
            in_torch = get_method(method).calibrate(snn, ann, x, steps, opts)
        assert fitted[1].bias_change == in_torch[1].bias_change
        assert max(float(n.bias.abs().max()) for n in fitted[0].neurons) > 0  # something was fitted
        for a, b in zip(fitted[0].neurons, in_torch[0].neurons):
            assert torch.equal(a.bias, b.bias), (method, a.name)


def test_root_rule_fits_with_grad_enabled_and_picks_torch_where_numpy_cannot():
    # A user's own loop may call the rule with parameters that require grad: the fit runs without autograd
    # (numpy takes no tensor that requires grad). bfloat16 has no numpy dtype: its bookkeeping stays in torch.
    from ftbc_core.calibration import ftbc as ftbc_module

    torch.manual_seed(0)
    ann = nn.Sequential(nn.Conv2d(1, 4, 3), QCFS(4, 1.0), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    snn = to_snn(ann)
    for p in snn.parameters():
        p.requires_grad_(True)
    neuron = snn.neurons[0]
    neuron.set_bias(torch.zeros(3, 4))
    x = torch.rand(8, 1, 8, 8)
    target = torch.tensor([0.2, 0.3, 0.4, 0.5])
    snn.simulate(x, 3, rules={neuron: ftbc_module.FtbcRootRule(target, 0.5, carry=True)})
    assert neuron.bias.abs().max() > 0 and not neuron.bias.requires_grad
    assert ftbc_module.search_namespace(torch.zeros(2, dtype=torch.bfloat16)) is torch
    assert ftbc_module.search_namespace(torch.zeros(2, dtype=torch.float64)) is np
