"""Tiny runs of every performance benchmark's ``main`` so the scripts cannot rot (figures are not checked, only
that each runs end to end, writes its JSON, and that the equality checks inside them hold)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import calibration_cost  # noqa: E402
import common  # noqa: E402
import cost_growth  # noqa: E402


@pytest.fixture(autouse=True)
def keep_threads():
    """The benchmarks set the thread count (and OMP variables) of the process; restore them afterwards."""
    threads = torch.get_num_threads()
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    yield
    torch.set_num_threads(threads)
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _written(path: Path, name: str) -> dict:
    payload = json.loads(path.read_text())
    assert payload["benchmark"].startswith(name)
    assert payload["command"].startswith("python ")
    assert payload["machine"]["torch"] == torch.__version__
    return payload["figures"]


def test_time_call_median_and_interleaving():
    calls = []
    timing, result = common.time_call(lambda: calls.append(1) or len(calls), repeats=3, warmup=2)
    assert result == 5 and len(timing.runs) == 3 and timing.minimum <= timing.median <= timing.maximum
    order = []
    timings, results = common.time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                               repeats=2, warmup=1)
    assert order == ["a", "b", "a", "b", "a", "b"] and set(timings) == {"a", "b"}


def test_snn_vs_spikingjelly_smoke(tmp_path):
    pytest.importorskip("spikingjelly")
    import snn_vs_spikingjelly

    out = tmp_path / "sj.json"
    figures = snn_vs_spikingjelly.main([
        "--random-arch", "resnet20", "--activation", "relu", "--images", "4", "--timesteps", "3",
        "--calib-images", "16", "--check-images", "4", "--batch-size", "4", "--repeats", "1", "--warmup", "0",
        "--out", str(out)])
    assert _written(out, "snn_vs_spikingjelly")["model"] == figures["model"]
    eq = figures["equivalence"]
    assert eq["float32_single"]["median_rel_diff"] < 1e-4
    if "error" not in eq["float64_single"]:  # same network: identical up to float64 rounding
        assert eq["float64_single"]["max_rel_diff"] < 1e-9
    speed = figures["throughput"]["3"]
    assert speed["ours"]["images_per_s"] > 0 and speed["ratio_ours_over_best_spikingjelly"] > 0
    # the same network in both simulators: the same predictions on these images
    assert speed["ours"]["accuracy"] == speed[speed["best_spikingjelly"]]["accuracy"]


def test_calibration_cost_smoke(tmp_path):
    out = tmp_path / "cc.json"
    figures = calibration_cost.main([
        "--random-arch", "cnn", "--timesteps", "2", "--batch-size", "8", "--batches", "1", "--calib-images", "16",
        "--images", "16", "--verify-images", "16", "--verify-batches", "2", "--verify-batch-size", "8",
        "--repeats", "1", "--warmup", "0", "--out", str(out)])
    (row,) = _written(out, "calibration_cost")["rows"]
    assert row == json.loads(json.dumps(figures["rows"][0]))
    assert row["verification"]["biases_match"]
    assert row["verification"]["accuracy_ours"] == row["verification"]["accuracy_reference"]
    assert row["ftbc s/batch"] > 0 and row["reference s/batch"] > 0


def test_calibration_cost_of_the_default_method_has_no_reference_columns(tmp_path):
    out = tmp_path / "cc.json"
    calibration_cost.main([
        "--random-arch", "cnn", "--timesteps", "2", "--batch-size", "8", "--batches", "1", "--calib-images", "16",
        "--images", "16", "--mode", "carry", "--alpha", "0.5", "--repeats", "1", "--warmup", "0", "--out", str(out)])
    (row,) = _written(out, "calibration_cost")["rows"]
    assert row["mode"] == "carry" and row["ftbc s/batch"] > 0 and "reference s/batch" not in row


def test_reference_schedule_reaches_the_same_biases():
    """The O(L^2 T) re-run schedule and our one-pass fit are the same algorithm: identical biases."""
    from ftbc_core.calibration import fit_biases
    from ftbc_core.snn import to_snn

    spec = common.ModelSpec(random_arch="cnn", activation="qcfs", seed=1)
    calib = torch.rand(24, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    ann = common.load_ann(spec, calib)
    snn = to_snn(ann)
    ours, _, _ = fit_biases(snn, ann, calib, 3, alpha=0.2, batches=3, batch_size=8)
    ref = calibration_cost.reference_fit_biases(snn, ann, calib, 3, alpha=0.2, batches=3, batch_size=8)
    for a, b in zip(ours.neurons, ref.neurons):
        torch.testing.assert_close(a.bias, b.bias, rtol=0, atol=1e-6)
    assert max(float(n.bias.abs().max()) for n in ours.neurons) > 0  # something was fitted


def test_cost_growth_smoke(tmp_path):
    out = tmp_path / "cg.json"
    figures = cost_growth.main([
        "--random-arch", "cnn", "--timesteps", "1", "2", "--batch", "2", "--batch-sizes", "1", "3",
        "--fixed-t", "2", "--repeats", "1", "--warmup", "0", "--in-process", "--out", str(out)])
    written = _written(out, "cost_growth")
    assert [r["T"] for r in written["vs_T"]] == [1, 2] and [r["batch"] for r in written["vs_batch"]] == [1, 3]
    assert all(r["median s"] > 0 for r in figures["vs_T"] + figures["vs_batch"])


def test_cost_growth_point_in_subprocess():
    args = cost_growth.build_parser().parse_args(["--random-arch", "cnn", "--repeats", "1", "--warmup", "0"])
    row = cost_growth.run_point(common.ModelSpec(random_arch="cnn"), 2, 2, args)
    assert row["T"] == 2 and row["batch"] == 2 and row["median s"] > 0
    assert row["peak_after_mib"] >= row["peak_before_mib"]


@pytest.mark.slow
def test_dashboard_latency_smoke(tmp_path):
    """A tiny default experiment through AppTest, and through the browser when Chromium is there: every time
    measured, and no re-render recomputed the experiment."""
    import dashboard_latency

    browser = dashboard_latency.CHROMIUM.exists() and dashboard_latency.CHROMEDRIVER.exists()
    out = tmp_path / "dl.json"
    dashboard_latency.main([
        "--model", "cnn-mnist", "--rerenders", "1", "--no-png-check", "--out", str(out),
        "--defaults", json.dumps({"timesteps": 2, "limit": 8, "batches": 1, "batch_size": 8}),
        *([] if browser else ["--no-browser"])])
    written = _written(out, "dashboard_latency")
    app = written["apptest"]
    assert app["run"]["model"] == "cnn-mnist" and app["run"]["timesteps"] == 2 and len(app["experiments"]) == 1
    assert 0 < app["page_loaded_s"] < app["rendered_s"]
    assert all(r["experiments_computed"] == 0 for r in app["rerender"].values())
    if browser:
        (start,) = written["browser"]["starts"]
        assert 0 < start["server_ready_s"] < start["page_loaded_s"] < start["rendered_s"]
        assert start["chart_title"].startswith("cnn-mnist") and len(start["experiments"]) == 1
        for case in start["rerender"].values():
            assert case["experiments_computed"] == 0 and case["shown"][0] != case["shown"][1]


def test_train_speed_smoke():
    import train_speed

    result = train_speed.main(["--arch", "cnn", "--batch-size", "4", "--steps", "1", "--threads", "1"])
    assert [r["setting"] for r in result["rows"]][:2] == ["float32", "float32 channels_last"]
    assert all(r["images_per_s"] > 0 and r["first_two_steps_s"] > 0 for r in result["rows"])
    assert isinstance(result["native_bf16"], bool)


def test_profile_experiment_smoke(capsys):
    import profile_experiment

    assert profile_experiment.main(["--model", "cnn-mnist", "--top", "3"]) > 0
    out = capsys.readouterr().out
    assert "cnn-mnist: T=" in out and "measured on 64" in out and "tottime" in out


def test_readme_table_is_the_evaluate_json(tmp_path, capsys):
    # the README's tables: ftbc evaluate --json, printed by evaluate_table.py; ± only where a method ran on
    # several calibration draws, and every number is the JSON's
    import evaluate_table

    from ftbc_core.cli import main

    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", "cnn-mnist", "--timesteps", "1,2", "--methods", "none,ftbc,cos", "--seeds",
                 "2", "--limit", "40", "--calib-batches", "1", "--calib-batch-size", "16", "--rho", "1",
                 "--threads", "1", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert {m: i["draws"] for m, i in payload["methods"].items()} == {"none": 1, "ftbc": 2, "cos": 1}
    capsys.readouterr()
    evaluate_table.main([str(out)])
    printed = capsys.readouterr().out
    by = {(r["method"], r["T"]): r for r in payload["rows"]}
    for t in (1, 2):
        line = next(x for x in printed.splitlines() if x.startswith(f"| {t} |"))
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        assert cells[0] == f"{by[('none', t)]['accuracy']:.2f}" and "±" not in cells[0] + cells[2]
        assert cells[1] == f"{by[('ftbc', t)]['accuracy']:.2f} ± {by[('ftbc', t)]['accuracy_std']:.2f}"
    assert "latency T + 1" in printed and payload["command"] in printed


def test_latency_placeholder_status_has_every_key_of_the_full_status():
    # while the script runs, a wait sees RUNNING_JS's keys plus _NOT_READ's: together they must be STATUS_JS's
    import re

    import dashboard_latency as lat

    def keys(js: str) -> set[str]:
        return set(re.findall(r"(\w+):", js.split("return", 1)[1]))

    full = keys(lat.STATUS_JS)
    assert keys(lat.RUNNING_JS) <= full
    assert set(lat._NOT_READ) | keys(lat.RUNNING_JS) == full


def test_residual_error_parts_match_a_direct_computation(tiny_cnn, mnist_like):
    # the total and systematic error of each layer, computed from the Recorder's sums, equal the same figures
    # computed directly from every neuron's spikes and the ANN's activations
    import residual_error

    from ftbc_core.calibration import fit_biases
    from conftest import module_activations
    from ftbc_core.measure import Recorder
    from ftbc_core.snn import to_snn

    steps = 3
    net, _, _ = fit_biases(to_snn(tiny_cnn), tiny_cnn, mnist_like[:16], steps, alpha=0.5, batches=1, batch_size=16)
    for neuron in net.neurons:  # thresholds other than 1, so that a misplaced θ shows
        neuron.theta.mul_(1.7)
    x = mnist_like[16:32]
    spikes = {n: [] for n in net.layer_names}
    acts = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out.double()))
               for n, m in module_activations(tiny_cnn)]
    with torch.no_grad():
        tiny_cnn(x)
    for h in handles:
        h.remove()

    def keep(neuron, t, u, s):
        spikes[neuron.name].append(s.double().clone())

    rec = Recorder(net, tiny_cnn, steps)
    rec.observe_ann(x)
    with torch.no_grad():
        net.simulate(x, steps, hooks={n: (*hooks, keep) for n, hooks in rec.hooks.items()})
    meas = rec.result()
    for t in (1, steps):
        rows = residual_error.error_parts(meas, t)
        for row, name, neuron in zip(rows, net.layer_names, net.neurons):
            theta = neuron.theta.double()
            a = torch.minimum(acts[name].clamp_min(0), theta.view(1, -1, *[1] * (acts[name].dim() - 2)))
            e = torch.stack(spikes[name][:t]).mean(0) - a  # running mean at step t minus the ANN activation
            per_channel = e.transpose(0, 1).reshape(e.shape[1], -1)
            assert row["total"] == pytest.approx(e.abs().mean().item(), rel=1e-5, abs=1e-9)
            assert row["systematic"] == pytest.approx(per_channel.mean(1).abs().mean().item(), rel=1e-5, abs=1e-9)
            assert row["systematic"] <= row["total"] + 1e-12


def test_residual_error_smoke(tmp_path, capsys):
    import residual_error

    out = tmp_path / "re.json"
    figures = residual_error.main(["--model", "cnn-mnist", "--timesteps", "3", "--images", "16",
                                   "--calib-images", "64", "--batches", "1", "--out", str(out)])
    assert set(figures["methods"]) == {"none", "ftbc"}
    assert len(figures["methods"]["ftbc"]["layers"]) == 4
    assert _written(out, "residual_error")["timesteps"] == 3
    assert "mean over layers" in capsys.readouterr().out


def test_dashboard_run_ab_smoke(tmp_path, capsys):
    """One fresh start of this checkout through the interleaved A/B script; a folder that is no checkout is refused."""
    import dashboard_latency
    import dashboard_run_ab

    with pytest.raises(SystemExit, match="not a checkout"):
        dashboard_run_ab.main([str(tmp_path)])
    if not (dashboard_latency.CHROMIUM.exists() and dashboard_latency.CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's Chromium and chromedriver (make browser-deps)")
    root = BENCHMARKS.parent
    results = dashboard_run_ab.main(["--rounds", "1", str(root)])
    (row,) = results[str(root)]
    assert 0 < row["experiment_s"] < row["run_s"] and row["browser_cpu_s"] > 0 and row["server_cpu_s"] > 0
    assert "medians over 1 fresh starts" in capsys.readouterr().out
