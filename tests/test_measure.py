"""ftbc_core/measure.py: the Recorder's running sums against a direct float64 computation from every step kept whole.

The Recorder never stores a membrane potential; the reference here stores all of them (u and spikes of every
step, the clipped ANN activations) and computes each measurement from its definition with numpy in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import module_activations
from ftbc_core.measure import HIST_EDGES, Recorder
from ftbc_core.neuron import QCFS
from ftbc_core.snn import SpikingNetwork, to_snn

T = 6


def _reference(snn: SpikingNetwork, ann: nn.Module, batches: list[torch.Tensor], timesteps: int) -> dict:
    """Per layer: ``abs``, ``rel``, ``off`` ``[T, C]``, ``hist`` ``[T, bins]``, ``rate`` ``[T]``, ``ann`` ``[C]``,
    and ``near_edge`` ``[T]`` (values within 1e-5 of an inner bin edge, whose bin float32 rounding may flip)."""
    names = snn.layer_names
    thetas = {n: neuron.theta.double().numpy() for n, neuron in zip(names, snn.neurons)}
    sums: dict[str, dict[str, np.ndarray]] = {}
    for x in batches:
        acts: dict[str, np.ndarray] = {}
        hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out.double().numpy()))
                 for n, m in module_activations(ann)]
        with torch.no_grad():
            ann(x)
        for h in hooks:
            h.remove()
        steps: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in names}

        def keep(neuron, t, u, spikes):
            if t >= snn.latency:
                steps[neuron.name].append((u.double().numpy().copy(), spikes.double().numpy().copy()))

        with torch.no_grad():
            snn.simulate(x, timesteps + snn.latency, hooks={neuron: (keep,) for neuron in snn.neurons})
        for name in names:
            u = np.stack([s[0] for s in steps[name]])  # [T, B, C, ...]
            spikes = np.stack([s[1] for s in steps[name]])
            theta = thetas[name].reshape((1, 1, -1) + (1,) * (u.ndim - 3))  # [1, 1, C or 1, 1, ...]
            a = np.minimum(np.maximum(acts[name], 0.0), theta[0])[None]  # [1, B, C, ...], clipped to [0, θ]
            t = np.arange(1, timesteps + 1, dtype=np.float64).reshape((-1,) + (1,) * (u.ndim - 1))
            count = np.cumsum(spikes / theta, axis=0)  # spikes fired so far
            axes = (1, *range(3, u.ndim))  # all but step and channel
            ratio = np.clip(u / theta, HIST_EDGES[0], HIST_EDGES[-1])
            pos = (ratio - HIST_EDGES[0]) / (HIST_EDGES[1] - HIST_EDGES[0])  # in bin widths; edges at integers
            edge = np.rint(pos)
            near = (np.abs(pos - edge) < 1e-4) & (edge >= 1) & (edge <= len(HIST_EDGES) - 2)
            part = {"abs": np.abs(count * theta / t - a).sum(axes), "off": (count - a * t / theta).sum(axes),
                    "hist": np.stack([np.histogram(r, bins=HIST_EDGES)[0] for r in ratio]).astype(np.float64),
                    "fired": (spikes > 0).reshape(timesteps, -1).sum(1).astype(np.float64),
                    "near_edge": near.reshape(timesteps, -1).sum(1), "ann": a[0].sum(tuple(i - 1 for i in axes)),
                    "n_pos": np.array(a[0].size / a.shape[2]),
                    "n_neur": np.array(a[0].size)}
            if name not in sums:
                sums[name] = part
            else:
                sums[name] = {k: sums[name][k] + v for k, v in part.items()}
    out = {}
    for name, s in sums.items():
        ann_mean = s["ann"] / s["n_pos"]
        out[name] = {"abs": s["abs"] / s["n_pos"], "off": s["off"] / s["n_pos"], "hist": s["hist"],
                     "rate": s["fired"] / s["n_neur"], "ann": ann_mean, "near_edge": s["near_edge"],
                     "rel": s["abs"] / s["n_pos"] / np.maximum(ann_mean, 1e-8)[None, :]}
    return out


def _recorded(snn: SpikingNetwork, ann: nn.Module, batches: list[torch.Tensor], timesteps: int):
    rec = Recorder(snn, ann, timesteps)
    for x in batches:
        rec.observe_ann(x)
        snn.simulate(x, timesteps + snn.latency, hooks=rec.hooks)
    return rec.result()


@pytest.mark.parametrize("latency, layout", [(0, torch.contiguous_format), (2, torch.contiguous_format),
                                             (0, torch.channels_last)])
def test_recorder_matches_a_direct_computation(tiny_cnn, mnist_like, latency, layout):
    snn = to_snn(tiny_cnn)
    snn.latency = latency  # COS-style pre-steps: not counted, and the counts restart after them
    snn.net.to(memory_format=layout)
    images = mnist_like.contiguous(memory_format=layout)
    batches = [images[:32], images[32:]]  # two batches of different sizes: sums over batches
    meas = _recorded(snn, tiny_cnn, batches, T)
    ref = _reference(snn, tiny_cnn, batches, T)
    assert meas.n_images == 48 and meas.layer_names == tuple(snn.layer_names)
    assert any(r.ndim == 1 for r in meas.ann_mean.values())
    for name in snn.layer_names:
        r = ref[name]
        scale = max(float(r["ann"].max()), 1e-6)  # float32 sums: compare at the layer's activation scale
        np.testing.assert_allclose(meas.ann_mean[name], r["ann"], rtol=1e-5, atol=1e-7 * scale)
        np.testing.assert_allclose(meas.abs_error[name], r["abs"], rtol=1e-5, atol=1e-6 * scale)
        np.testing.assert_allclose(meas.offset_spikes[name], r["off"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(meas.rel_error[name], r["rel"], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(meas.spike_rate[name], r["rate"])  # counts: exact
        hist = meas.histograms[name]
        assert hist.shape == (T, len(HIST_EDGES) - 1) and hist.dtype == np.float64
        np.testing.assert_array_equal(hist.sum(1), r["hist"].sum(1))  # every neuron counted once per step
        moved = np.abs(hist - r["hist"]).sum(1)  # a value within rounding of an edge may land one bin over
        assert np.all(moved <= 2 * r["near_edge"]), (name, moved, r["near_edge"])
    assert sum(float(np.abs(meas.histograms[n] - ref[n]["hist"]).sum()) for n in snn.layer_names) \
        <= 0.001 * sum(float(ref[n]["hist"].sum()) for n in snn.layer_names)


def test_histogram_bins_at_and_beyond_the_edges():
    # one spiking layer after an identity Linear, v0 = 0: at step 1 the charge u[1]/θ is the input itself
    values = torch.tensor([-3.0, -1.5, -1.45, 0.0, 0.5, 0.9999, 1.0, 1.05, 2.0, 2.4999, 2.5, 7.0])
    expected_bins = [0, 0, 0, 15, 20, 24, 25, 25, 35, 39, 39, 39]
    n = values.numel()
    linear = nn.Linear(n, n, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(n))
    ann = nn.Sequential(linear, QCFS(levels=4, init_threshold=1.0)).eval()
    snn = to_snn(ann, v0="zero")
    meas = _recorded(snn, ann, [values.view(1, n)], 1)
    name = snn.layer_names[0]
    expected = np.bincount(expected_bins, minlength=len(HIST_EDGES) - 1)
    np.testing.assert_array_equal(meas.histograms[name][0], expected)
    assert meas.spike_rate[name][0] == pytest.approx(6 / 12)  # u ≥ θ fires: 1.0, 1.05, 2.0, 2.4999, 2.5, 7.0


def test_recorder_needs_the_ann_activations_and_observes_only_the_runs_it_is_passed_to(tiny_cnn, mnist_like):
    snn = to_snn(tiny_cnn)
    rec = Recorder(snn, tiny_cnn, T)
    assert set(rec.hooks) == set(snn.neurons)
    with pytest.raises(RuntimeError, match="observe_ann"):
        snn.simulate(mnist_like[:4], T, hooks=rec.hooks)
    rec = Recorder(snn, tiny_cnn, T)
    rec.observe_ann(mnist_like[:4])
    snn.simulate(mnist_like[4:8], T)  # a run without its hooks is not measured
    with pytest.raises(RuntimeError, match="saw no simulation"):
        Recorder(snn, tiny_cnn, T).result()


def test_measuring_a_subset_equals_measuring_those_images_alone(tiny_cnn):
    # simulate_dataset(record_images=k): the measurements of the first k images (rounded up to whole chunks),
    # exactly as if only those had been simulated, and the accuracy of all of them.
    from ftbc_core.data import ImageArrays
    from ftbc_core.experiment import simulate_dataset

    gen = np.random.default_rng(3)
    data = ImageArrays(gen.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8), gen.integers(0, 10, 20))
    snn = to_snn(tiny_cnn, max_batch_steps=4 * T)  # chunks of 4 images
    acc_all, meas_all = simulate_dataset(snn, tiny_cnn, data, T, record=True)
    acc_sub, meas_sub = simulate_dataset(snn, tiny_cnn, data, T, record=True, record_images=6)
    _, meas_first = simulate_dataset(snn, tiny_cnn, data.subset(slice(0, 8)), T, record=True)
    np.testing.assert_array_equal(acc_sub, acc_all)
    assert meas_sub.n_images == 8 and meas_all.n_images == 20
    for name in snn.layer_names:
        np.testing.assert_array_equal(meas_sub.histograms[name], meas_first.histograms[name])
        np.testing.assert_allclose(meas_sub.abs_error[name], meas_first.abs_error[name], rtol=1e-12)
        assert not np.array_equal(meas_sub.histograms[name], meas_all.histograms[name])
    with pytest.raises(ValueError, match="measured images must be >= 1"):
        simulate_dataset(snn, tiny_cnn, data, T, record=True, record_images=0)
