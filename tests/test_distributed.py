"""Several processes through torch.distributed (gloo on the CPU): sharding, the all-reduced calibration, torchrun
runs of ``ftbc evaluate``/``calibrate`` against one process, and what happens when a process fails."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ftbc_core import distributed as dist
from ftbc_core.biases import read_biases
from ftbc_core.cli import main

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun")
needs_torchrun = pytest.mark.skipif(TORCHRUN is None or not torch.distributed.is_gloo_available(),
                                    reason="torchrun / the gloo backend is not available")
# 101 images: 51 + 50 over two processes, so the remainder matters; small calibration batches keep it quick
EVAL = ["--model", "cnn-mnist", "--timesteps", "1,4,8", "--limit", "101", "--threads", "1",
        "--calib-images", "128", "--calib-batches", "2", "--calib-batch-size", "33"]
CALIB = ["--model", "cnn-mnist", "--timesteps", "8", "--threads", "1", "--calib-images", "128",
         "--calib-batches", "2", "--calib-batch-size", "33"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    return _run([TORCHRUN, f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
                 "-m", "ftbc_core", *args])


# -- sharding and the helpers in one process -----------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 6, 101])
def test_shard_takes_every_index_once(n, world):
    parts = [dist.shard(n, r, world) for r in range(world)]
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(n)) and len(joined) == n  # every index once, none twice
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced, the remainder on the first ranks


def test_shard_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError):
        dist.shard(5, 2, 2)


def test_helpers_do_nothing_in_one_process():
    t = torch.arange(4.0)
    assert not dist.active() and dist.is_main() and dist.world_size() == 1
    assert dist.all_reduce_sum(t) is t and dist.all_reduce_mean(t, 3) is t and dist.all_gather_cat(t) is t
    means = {"a": t}
    assert dist.all_reduce_means(means, 2) is means and dist.all_reduce_count(7) == 7
    idx = torch.tensor([5, 1, 9])
    assert dist.local_part(idx) is idx
    assert dist.accuracy_over_shards(lambda data: 42.0, object()) == 42.0


def test_launch_info_reads_torchruns_environment():
    assert dist.launch_info({}) is None
    assert dist.launch_info({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "1"}) == dist.Launch(2, 4, 1)
    with pytest.raises(ValueError):
        dist.launch_info({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError):
        dist.launch_info({"WORLD_SIZE": "two"})


def test_device_budget_on_the_cpu_is_the_cpu_chunk():
    from ftbc_core.snn import DEFAULT_MAX_BATCH_STEPS

    assert dist.device_max_batch_steps(torch.nn.Linear(2, 2), (2,), "cpu") == DEFAULT_MAX_BATCH_STEPS == 128


def test_exact_float32_turns_tf32_off_and_restores_it():
    """The flags can be set without a GPU: inside the context no TF32, after it the previous settings."""
    b = torch.backends
    new_api = all(hasattr(dist._backend(p), "fp32_precision") for p in dist._TF32_NEW)
    before = {p: dist._backend(p).fp32_precision for p in dist._TF32_NEW} if new_api else \
        (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)
    with dist.exact_float32():
        if new_api:
            assert all(dist._backend(p).fp32_precision == "ieee" for p in dist._TF32_NEW)
        else:
            assert not b.cuda.matmul.allow_tf32 and not b.cudnn.allow_tf32
    after = {p: dist._backend(p).fp32_precision for p in dist._TF32_NEW} if new_api else \
        (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)
    assert after == before


# -- the collectives between real processes ------------------------------------------------------------------------
COLLECTIVES = """
import sys, torch
from ftbc_core import distributed as dist
with dist.process_group("cpu"):
    r = dist.rank()
    n = 3 if r == 0 else 5                                # unequal shares
    values = torch.arange(n * 2, dtype=torch.float32).view(n, 2) + 10 * r
    mean = dist.all_reduce_mean(values.mean(0), n)
    gathered = dist.all_gather_cat(values, 0)
    total = dist.all_reduce_sum(torch.tensor([r + 1]))
    # spikes (0/1) of 7 channels, 37 + 29 values per channel: the union's mean bitwise as one process gets it
    spikes = [(torch.rand(7, 37 + 29, generator=torch.Generator().manual_seed(s)) < 0.3).float() for s in range(5)]
    for fired in spikes:
        part = fired[:, :37] if r == 0 else fired[:, 37:]
        exact = dist.all_reduce_mean(part.mean(1), part.shape[1], binary=True)
        assert torch.equal(exact, fired.mean(1)), (exact - fired.mean(1)).abs().max()
    if r == 0:
        union = torch.cat([torch.arange(6.).view(3, 2), torch.arange(10.).view(5, 2) + 10])
        assert torch.allclose(mean, union.mean(0)), (mean, union.mean(0))
        assert torch.equal(gathered, union) and int(total) == 3
        print("traffic", dist.traffic())
"""


@needs_torchrun
def test_collectives_between_two_processes(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    done = _run([TORCHRUN, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
                 str(script)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "traffic" in done.stdout


# -- ftbc evaluate / calibrate under torchrun ----------------------------------------------------------------------
@needs_torchrun
def test_evaluate_two_processes_match_one(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    single = _run([sys.executable, "-m", "ftbc_core", "evaluate", *EVAL, "--methods", "none,ftbc", "--json",
                   str(one)])
    assert single.returncode == 0, single.stderr[-3000:]
    double = _torchrun(2, ["evaluate", *EVAL, "--methods", "none,ftbc", "--json", str(two)])
    assert double.returncode == 0, double.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["world_size"] == 2 and a["world_size"] == 1 and a["n_images"] == b["n_images"] == 101
    assert a["ann_accuracy"] == b["ann_accuracy"]  # over all 101 images, not rank 0's 51
    rows = {(r["method"], r["T"]): r["accuracy"] for r in a["rows"]}
    for r in b["rows"]:
        if r["method"] == "none":
            assert r["accuracy"] == rows["none", r["T"]], r  # the same images, split: exactly the same
        else:
            assert abs(r["accuracy"] - rows[r["method"], r["T"]]) <= 100 / 101 + 1e-9, r  # within one image
    assert double.stdout.count("ANN accuracy") == 1  # rank 0 alone prints the table
    assert double.stdout.count("model cnn-mnist on") == 1


@needs_torchrun
def test_calibrate_two_processes_fit_the_same_biases(tmp_path):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    single = _run([sys.executable, "-m", "ftbc_core", "calibrate", *CALIB, "--out", str(one)])
    assert single.returncode == 0, single.stderr[-3000:]
    double = _torchrun(2, ["calibrate", *CALIB, "--out", str(two)])
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("wrote") == 1
    a, meta_a = read_biases(one)
    b, meta_b = read_biases(two)
    assert meta_a["world_size"] == "1" and meta_b["world_size"] == "2"
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape
        diff = (a[name] - b[name]).abs().max().item()
        assert diff <= 1e-5, (name, diff)


@needs_torchrun
@pytest.mark.parametrize("mode", ["exact", "layer", "alpha"])
def test_other_ftbc_rules_split_over_two_processes(tmp_path, mode):
    """ftbc-exact gathers the values of its quantile, ftbc-alpha/-layer all-reduce their spike means."""
    method = {"exact": "ftbc-exact", "layer": "ftbc-layer", "alpha": "ftbc-alpha"}[mode]
    args = [*CALIB[:-4], "--calib-batches", "1", "--calib-batch-size", "33", "--method", method]
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    assert _run([sys.executable, "-m", "ftbc_core", "calibrate", *args, "--out", str(one)]).returncode == 0
    double = _torchrun(2, ["calibrate", *args, "--out", str(two)])
    assert double.returncode == 0, double.stderr[-3000:]
    a, b = read_biases(one)[0], read_biases(two)[0]
    worst = max((a[n] - b[n]).abs().max().item() for n in a)
    assert worst <= 1e-5, worst


# -- failures ------------------------------------------------------------------------------------------------------
WRAPPER = """
import os, sys
from ftbc_core import experiment
from ftbc_core.data import DataError

if os.environ.get("RANK") == "1":
    if sys.argv[1] == "raise":
        def boom(*args, **kwargs):
            raise RuntimeError("injected failure")
        experiment.simulate = boom
    else:  # this process has no data
        def no_data(*args, **kwargs):
            raise DataError("no mnist data found in /nowhere")
        experiment.load_images = no_data
from ftbc_core.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("failure", ["raise", "no-data"])
def test_a_failing_process_stops_the_other_quickly(tmp_path, failure):
    """Two processes started by hand (no torchrun to kill the survivor): rank 1 fails, rank 0 must notice in its
    next collective and exit non-zero on its own, well within 60 s."""
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    port = str(_free_port())
    procs = []
    start = time.monotonic()
    for r in range(2):
        env = _env()
        env.update(WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        cmd = [sys.executable, str(wrapper), failure, "evaluate", *EVAL[:-6], "--methods", "none"]
        procs.append(subprocess.Popen(cmd,
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=90))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    elapsed = time.monotonic() - start
    assert elapsed < 60, elapsed
    assert procs[0].returncode != 0 and procs[1].returncode != 0, outs
    err0, err1 = outs[0][1], outs[1][1]
    why = "RuntimeError: injected failure" if failure == "raise" else "no mnist data found"
    assert f"ftbc evaluate: error: rank 1: {why}" in err1, err1
    assert "ftbc evaluate: error: rank 0:" in err0 and "Traceback" not in err0, err0
    assert "ANN accuracy" not in outs[0][0]


def test_bad_options_are_refused_before_the_process_group_starts(monkeypatch, capsys):
    """WORLD_SIZE=2 with no second process: a process group would wait for it; the option check comes first."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    cases = [
        (["evaluate", "--model", "cnn-mnist", "--methods", "ftbc-official"], "runs as one process only"),
        (["evaluate", "--model", "cnn-mnist", "--methods", "ftbc", "--calib-batch-size", "1"], "cannot be split"),
        (["calibrate", "--model", "cnn-mnist", "--alpha", "-1"], "alpha"),
        (["models"], "only evaluate and calibrate run under torchrun"),
    ]
    for argv, message in cases:
        start = time.monotonic()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "error: rank 0:" in err and message in err, err
        assert time.monotonic() - start < 10
    assert not torch.distributed.is_initialized()
