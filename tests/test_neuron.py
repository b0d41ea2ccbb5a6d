"""The IF step and QCFS against the equations, on hand-computed cases (exact)."""

import math

import pytest
import torch
from torch.testing import assert_close

from ftbc_core.neuron import QCFS, IFNeuron, Run, channel_view, current_run, if_step, qcfs_reference, running


def test_if_step_hand_computed():
    v = torch.tensor([0.5, 0.5, 0.0, -0.2])
    z = torch.tensor([0.7, 0.25, 1.0, 0.1])
    theta = torch.tensor(1.0)
    v_next, s = if_step(v, z, theta)
    # u = [1.2, 0.75, 1.0 (= θ fires), -0.1]
    assert_close(s, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert_close(v_next, torch.tensor([0.2, 0.75, 0.0, -0.1]), rtol=0, atol=1e-7)


def test_if_step_bias_is_subtracted_from_the_charge():
    v, z = torch.tensor([0.5]), torch.tensor([0.7])
    v_next, s = if_step(v, z, torch.tensor(1.0), 0.3)  # u = 0.9 < θ
    assert s.item() == 0.0 and v_next.item() == pytest.approx(0.9)
    v_next, s = if_step(v, z, torch.tensor(1.0), -0.5)  # u = 1.7: fires, reset by subtraction (not to zero)
    assert s.item() == 1.0 and v_next.item() == pytest.approx(0.7)


def test_if_step_per_channel_threshold():
    theta = torch.tensor([1.0, 2.0])
    v = torch.zeros(1, 2, 1, 1)
    z = torch.full((1, 2, 1, 1), 1.5)
    v_next, s = if_step(v, z, channel_view(theta, 4))
    assert s.flatten().tolist() == [1.0, 0.0]  # spikes carry the amplitude θ of their channel
    assert v_next.flatten().tolist() == [0.5, 1.5]


def _run(neuron: IFNeuron, z: torch.Tensor, steps: int, batch: int | None = None, hooks=()) -> torch.Tensor:
    batch = batch or z.shape[0]
    with running(Run(steps, batch, hooks={neuron: tuple(hooks)})):
        return neuron(z).view(steps, batch, *z.shape[1:])


@pytest.mark.parametrize("steps", [1, 3, 4, 8, 16])
def test_constant_input_spike_count_matches_closed_form(steps):
    # v0 = θ/2, constant input r·θ: the count after T steps is clamp(floor(T·r + 1/2), 0, T).
    rates = torch.tensor([-0.3, 0.0, 0.1, 0.33, 0.52, 0.71, 0.9, 1.0, 1.7])
    neuron = IFNeuron(torch.tensor([2.0]), v0_fraction=0.5)
    spikes = _run(neuron, (rates * 2.0).view(-1, 1), steps)
    counts = spikes.sum(0).flatten() / 2.0
    expected = torch.clamp(torch.floor(steps * rates + 0.5), 0, steps)
    assert_close(counts, expected)


def test_zero_initial_potential_counts_floor():
    rates = torch.tensor([0.15, 0.33, 0.55, 0.93])  # away from multiples of 1/T (no float ties)
    neuron = IFNeuron(torch.tensor([1.0]), v0_fraction=0.0)
    counts = _run(neuron, rates.view(-1, 1), 10).sum(0).flatten()
    assert_close(counts, torch.floor(10 * rates))


def test_static_and_sequence_inputs_agree():
    neuron = IFNeuron(torch.tensor([1.0]))
    z = torch.rand(5, 3)
    static = _run(neuron, z, 6)
    sequence = _run(neuron, z.unsqueeze(0).expand(6, 5, 3).reshape(30, 3), 6, batch=5)
    assert_close(static, sequence, rtol=0, atol=0)


def test_bias_steps_beyond_the_calibrated_ones_are_zero():
    neuron = IFNeuron(torch.tensor([1.0]))
    neuron.set_bias(torch.tensor([[0.25], [0.5]]))
    assert neuron.bias_at(1, 2).flatten().item() == 0.5
    assert neuron.bias_at(2, 2) == 0.0


def test_membrane_stays_bounded_for_bounded_input():
    neuron = IFNeuron(torch.tensor([1.0]))
    seen = []
    z = torch.rand(64, 4) * 1.0  # z in [0, 1) = [0, θ)
    _run(neuron, z, 50, hooks=[lambda n, t, u, s: seen.append(u - s)])
    v = torch.stack(seen)
    assert v.min() >= 0.0 and v.max() < 1.0  # for 0 <= z < θ and v0 = θ/2, v stays in [0, θ)


def test_neuron_outside_a_run_says_why():
    with pytest.raises(RuntimeError, match="outside SpikingNetwork"):
        IFNeuron(torch.tensor([1.0]))(torch.zeros(2, 2))


def test_invalid_threshold_is_refused():
    with pytest.raises(ValueError, match="thresholds must be finite and > 0"):
        IFNeuron(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="thresholds must be finite"):
        IFNeuron(torch.tensor([math.nan]))


def test_qcfs_formula_and_straight_through_gradient():
    act = QCFS(levels=4, init_threshold=2.0)
    z = torch.tensor([-1.0, 0.0, 0.24, 0.26, 0.74, 0.76, 1.9, 3.0], requires_grad=True)
    a = act(z)
    # a = λ·clamp(floor(z·L/λ + 1/2)/L, 0, 1), λ = 2, L = 4: steps of 0.5, rounding at 0.25, 0.75, ...
    assert_close(a.detach(), torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 2.0, 2.0]))
    a.sum().backward()
    assert z.grad[3].item() == pytest.approx(1.0)  # straight through inside (0, λ)
    assert z.grad[0].item() == 0.0 and z.grad[-1].item() == 0.0  # clipped outside
    assert act.threshold.grad is not None


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (7, 11), (9,)])
def test_fused_qcfs_matches_the_op_by_op_definition(shape):
    # The training-speed autograd Function gives bit-identical values (same float32 ops in the same order) and
    # the reference's gradients: exact for λ up to summation order, and for z up to the reference's extra
    # ×λ/L·L/λ rounding. Points on the clamp bounds (x = 0, x = 1) are included: there torch.clamp's gradient is 0.
    torch.manual_seed(0)
    act = QCFS(levels=4, init_threshold=1.3)
    z = torch.randn(*shape) * 1.5
    z.view(-1)[:3] = torch.tensor([0.0, 1.3, -0.0])
    z_fused, z_ref = z.clone().requires_grad_(), z.clone().requires_grad_()
    a = act(z_fused)
    weights = torch.randn_like(a)
    (a * weights).sum().backward()
    lam_grad = act.threshold.grad.clone()
    act.threshold.grad = None
    a_ref = qcfs_reference(z_ref, act.threshold, 4)
    (a_ref * weights).sum().backward()
    assert torch.equal(a, a_ref)
    assert_close(z_fused.grad, z_ref.grad, rtol=1e-6, atol=1e-7)
    assert z_fused.grad.view(-1)[0] == 0 and z_fused.grad.view(-1)[1] == 0  # on the bounds
    assert_close(lam_grad, act.threshold.grad, rtol=1e-5, atol=1e-6)


def test_a_neuron_runs_only_inside_a_run_and_nested_runs_restore_the_outer_one():
    neuron, other = IFNeuron(torch.tensor([1.0])), IFNeuron(torch.tensor([1.0]))
    with pytest.raises(RuntimeError, match="outside SpikingNetwork"):
        neuron(torch.ones(2, 1))
    seen = []
    outer = Run(3, 2, hooks={neuron: (lambda n, t, u, s: seen.append(t),)})
    with running(outer):
        with running(Run(2, 2)):
            neuron(torch.ones(2, 1))  # the inner run has no observer
            assert current_run().timesteps == 2
        assert current_run() is outer
        other(torch.ones(2, 1))  # the outer run observes `neuron` only
        assert seen == []
        neuron(torch.ones(2, 1))
    assert seen == [0, 1, 2]
    with pytest.raises(RuntimeError):
        current_run()
