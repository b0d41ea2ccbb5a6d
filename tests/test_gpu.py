"""The GPU path: agreement with the CPU, chunk-size invariance, TF32 off, and the distributed path with NCCL on one
GPU (skipped without CUDA), plus the CPU-side logic of ``benchmarks/gpu.py`` (runs everywhere)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ftbc_core import distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu as gpu_benchmark  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is "
                          "False): the GPU path cannot be checked on this machine")


# -- benchmarks/gpu.py's CPU-side logic (no GPU needed) ------------------------------------------------------------
def test_gpu_benchmark_arguments():
    args = gpu_benchmark.parse_args([])
    assert args.timesteps == [8, 32] and args.images == 2000 and args.model == "resnet20-cifar10"
    args = gpu_benchmark.parse_args(["--timesteps", "4", "16", "--images", "50", "--skip-cpu"])
    assert args.timesteps == [4, 16] and args.images == 50 and args.skip_cpu
    with pytest.raises(SystemExit):
        gpu_benchmark.parse_args(["--images", "0"])


def test_agreement_of_cpu_and_gpu_accuracies():
    n = 2000
    same = gpu_benchmark.agreement(np.array([50.0, 90.0]), np.array([50.0, 90.0]), n)
    assert same["max_diff_points"] == 0 and same["within_noise"]
    # one image apart is always rounding-sized; 3 points at p = 0.9 on 2000 images (σ ≈ 0.67) is not
    one = gpu_benchmark.agreement(np.array([90.0]), np.array([90.05]), n)
    assert one["within_noise"] and one["max_diff_images"] == 1
    far = gpu_benchmark.agreement(np.array([10.0, 90.0]), np.array([10.0, 93.0]), n)
    assert not far["within_noise"] and far["at_T"] == 2 and far["max_diff_images"] == 60
    assert abs(far["sampling_noise_points_at_worst"] - 100 * np.sqrt(0.9 * 0.1 / n)) < 1e-9
    with pytest.raises(ValueError):
        gpu_benchmark.agreement(np.array([1.0]), np.array([1.0, 2.0]), n)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when there is no GPU")
def test_gpu_benchmark_says_clearly_that_it_needs_a_gpu(capsys):
    with pytest.raises(SystemExit) as stop:
        gpu_benchmark.main(["--images", "10"])
    assert stop.value.code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_gpu_chunk_budget_from_free_memory(monkeypatch, tiny_cnn):
    """The GPU chunk arithmetic with torch.cuda.mem_get_info faked (the model itself stays on the CPU)."""
    from ftbc_core.snn import GPU_MAX_BATCH_STEPS, GPU_MEMORY_FRACTION

    per_step = dist.per_image_step_bytes(tiny_cnn, (1, 28, 28))
    assert per_step > 0
    for free, expected in [(10**9, int(GPU_MEMORY_FRACTION * 10**9) // per_step), (10**15, GPU_MAX_BATCH_STEPS),
                           (1, 1)]:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, free=free: (free, 2 * free))
        assert dist.device_max_batch_steps(tiny_cnn, (1, 28, 28), "cuda") == max(1, min(expected, GPU_MAX_BATCH_STEPS))
    assert dist.to_device(torch.ones(2), torch.device("cpu")).device.type == "cpu"


def test_gpu_memory_check_of_a_calibration_batch(monkeypatch, tiny_cnn):
    """A calibration batch is simulated whole: refused up front when it cannot fit the GPU (mem_get_info faked)."""
    dist.check_gpu_memory(tiny_cnn, (1, 28, 28), [(8, 64)], "cpu")  # nothing checked on the CPU
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**12, 10**12))
    dist.check_gpu_memory(tiny_cnn, (1, 28, 28), [(8, 64)], "cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**6, 10**12))
    with pytest.raises(ValueError, match="lower --calib-batch-size"):
        dist.check_gpu_memory(tiny_cnn, (1, 28, 28), [(8, 64)], "cuda")
    assert dist.per_process(64) == 64 and dist.local_world_size() == 1  # one process: the whole batch


# -- on a GPU ------------------------------------------------------------------------------------------------------
def _config(device: str, methods=("none", "ftbc"), limit: int = 300):
    from ftbc_core.experiment import ExperimentConfig

    return ExperimentConfig(model="cnn-mnist", timesteps=16, methods=methods, limit=limit, device=device,
                            method_options={"batches": 2, "batch_size": 32}, calib_images=128)


@cuda
def test_gpu_agrees_with_the_cpu():
    from ftbc_core.experiment import run_experiment

    cpu, gpu = run_experiment(_config("cpu")), run_experiment(_config("cuda"))
    assert abs(cpu.ann_accuracy - gpu.ann_accuracy) <= 100 / cpu.n_images + 1e-9
    for m in ("none", "ftbc"):
        check = gpu_benchmark.agreement(cpu.accuracy[m], gpu.accuracy[m], cpu.n_images)
        assert check["within_noise"], (m, check)


@cuda
def test_gpu_chunk_size_does_not_change_the_result(monkeypatch):
    from ftbc_core.assets import load_images, resolve_checkpoint
    from ftbc_core.checkpoint import load_checkpoint
    from ftbc_core.experiment import simulate_dataset
    from ftbc_core.snn import to_snn

    ann, card = load_checkpoint(resolve_checkpoint("cnn-mnist"), device="cuda")
    data, _ = load_images(card.dataset, "test", None)
    data = data.subset(np.arange(200))
    snn = to_snn(ann)
    shape = (card.in_channels, card.image_size, card.image_size)
    assert dist.device_max_batch_steps(ann, shape, "cuda") > 128  # the GPU takes more than the CPU's chunk
    big, _ = simulate_dataset(snn, ann, data, 8)
    monkeypatch.setattr(dist, "device_max_batch_steps", lambda *a, **k: 8 * 3)  # 3 images per chunk
    small, _ = simulate_dataset(snn, ann, data, 8)
    assert np.abs(big - small).max() <= 100 / 200 + 1e-9  # a spike flip by rounding at most


@cuda
def test_exact_float32_on_the_gpu_matches_float64_closely():
    a = torch.randn(512, 512, device="cuda")
    b = torch.randn(512, 512, device="cuda")
    exact = (a.double() @ b.double()).float()
    with dist.exact_float32():
        err = (a @ b - exact).abs().max().item()
    assert err < 1e-3, err  # TF32 (10-bit mantissa) would be ~1e-1 here


@cuda
@pytest.mark.skipif(shutil.which("torchrun") is None or not torch.distributed.is_nccl_available(),
                    reason="torchrun / NCCL not available")
def test_nccl_on_one_gpu(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    done = subprocess.run([shutil.which("torchrun"), "--nproc_per_node=1", "--master_addr=127.0.0.1",
                           f"--master_port={port}", "-m", "ftbc_core", "evaluate", "--model", "cnn-mnist", "--device",
                           "cuda", "--timesteps", "1,8", "--limit", "101", "--methods", "none,ftbc",
                           "--calib-images", "128", "--calib-batch-size", "32", "--calib-batches", "2", "--json",
                           str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["world_size"] == 1 and payload["n_images"] == 101
