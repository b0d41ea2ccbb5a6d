"""The GPU path: images/s at T = 8 and 32 through ``run_experiment(device="cuda")``, the ratio to T ANN forwards,
and the agreement of the GPU with the CPU on the same images.

    python benchmarks/gpu.py --model resnet20-cifar10 --data-dir ../shared/data --images 2000

Figures, per T (``--timesteps``): images/s of the simulation (``ExperimentResult.seconds["none"]``, the chunk
chosen by :func:`ftbc_core.distributed.device_max_batch_steps`), images/s of the ANN forward on the same images
at the same batch, and ``snn_seconds / (T x ann_seconds)`` (1 would mean a step costs one ANN forward). Then
``none`` and ``ftbc`` at the largest T on ``--images`` test images (2,000 by default; the bundled sample has
1,000) on the CPU and on the GPU: accuracy per T on both, and whether the largest difference is within sampling
noise (:func:`agreement`). Needs a CUDA GPU: without one it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

NAME = "gpu"
NO_GPU = "benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False here): nothing was measured"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20-cifar10", help="a shipped model or a checkpoint path")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the bundled samples, 1,000 images)")
    p.add_argument("--timesteps", type=int, nargs="+", default=[8, 32])
    p.add_argument("--images", type=int, default=2000, help="test images (speed and agreement)")
    p.add_argument("--ann-batch", type=int, default=1000, help="batch of the ANN forward timing")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats of the GPU run (the best is reported)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the CPU reference run")
    p.add_argument("--skip-cpu", action="store_true", help="no CPU reference run (speed only)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu.json)")
    args = p.parse_args(argv)
    if args.images < 1 or any(t < 1 for t in args.timesteps) or args.repeats < 1:
        p.error("--images, --timesteps and --repeats must be >= 1")
    return args


def agreement(cpu: np.ndarray, gpu: np.ndarray, n_images: int, sigmas: float = 2.0) -> dict:
    """How far GPU and CPU accuracies (percent, per T) are apart, in points and in images, against the sampling
    noise of an accuracy on ``n_images`` images (the binomial std, ``100 sqrt(p (1 - p) / n)``, at the CPU's
    accuracy): ``within_noise`` if every T differs by at most ``sigmas`` of it and by at most one image
    otherwise rounding could not explain it either."""
    cpu, gpu = np.asarray(cpu, dtype=float), np.asarray(gpu, dtype=float)
    if cpu.shape != gpu.shape or n_images < 1:
        raise ValueError("CPU and GPU accuracies must have the same shape, and n_images >= 1")
    diff = np.abs(gpu - cpu)
    p = np.clip(cpu / 100.0, 0.0, 1.0)
    noise = 100.0 * np.sqrt(p * (1 - p) / n_images)
    one_image = 100.0 / n_images
    worst = int(np.argmax(diff)) if diff.size else 0
    return {"max_diff_points": float(diff.max()) if diff.size else 0.0,
            "max_diff_images": int(round(float(diff.max()) * n_images / 100.0)) if diff.size else 0,
            "at_T": worst + 1, "sampling_noise_points_at_worst": float(noise[worst]) if diff.size else 0.0,
            "within_noise": bool(np.all(diff <= np.maximum(sigmas * noise, one_image) + 1e-9))}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        raise SystemExit(2)
    from common import write_result

    from ftbc_core import distributed as dist
    from ftbc_core.assets import load_images, resolve_checkpoint
    from ftbc_core.checkpoint import load_checkpoint
    from ftbc_core.data import iterate_batches
    from ftbc_core.experiment import ExperimentConfig, run_experiment

    if args.threads:
        torch.set_num_threads(args.threads)
    t_max = max(args.timesteps)
    device = torch.device("cuda")
    figures: dict = {"model": args.model, "gpu": torch.cuda.get_device_name(0), "speed": {}}
    for t in args.timesteps:
        cfg = ExperimentConfig(model=args.model, data_dir=args.data_dir, timesteps=t, methods=("none",),
                               limit=args.images, device="cuda")
        best = math.inf
        for _ in range(args.repeats + 1):  # the first run warms up (cuDNN autotuning, allocator)
            result = run_experiment(cfg)
            best = min(best, result.seconds["none"])
        n = result.n_images
        ann, card = load_checkpoint(resolve_checkpoint(args.model), device=device)
        test, _ = load_images(card.dataset, "test", args.data_dir)
        test = test.subset(np.arange(min(n, len(test))))
        batches = [x.to(device) for x, _ in iterate_batches(test, args.ann_batch)]

        def ann_pass() -> None:
            with torch.no_grad(), dist.exact_float32():
                for x in batches:
                    ann(x)
            torch.cuda.synchronize()

        ann_pass()
        start = time.perf_counter()
        ann_pass()
        ann_s = time.perf_counter() - start
        shape = tuple(batches[0].shape[1:])
        steps = dist.device_max_batch_steps(ann, shape, device)
        figures["speed"][str(t)] = {"images": n, "snn_images_per_s": n / best, "ann_images_per_s": n / ann_s,
                                    "snn_over_T_ann": best / (t * ann_s), "max_batch_steps": steps,
                                    "images_per_chunk": max(1, steps // t)}
        print(f"T={t}: SNN {n / best:,.0f} images/s, ANN {n / ann_s:,.0f} images/s, SNN time / (T x ANN time) "
              f"= {best / (t * ann_s):.2f}, chunk {max(1, steps // t)} images ({steps} image-steps)")
    if not args.skip_cpu:
        runs = {}
        for dev in ("cpu", "cuda"):
            cfg = ExperimentConfig(model=args.model, data_dir=args.data_dir, timesteps=t_max,
                                   methods=("none", "ftbc"), limit=args.images, device=dev)
            runs[dev] = run_experiment(cfg)
        n = runs["cpu"].n_images
        figures["agreement"] = {"images": n, "ann": {"cpu": runs["cpu"].ann_accuracy, "gpu": runs["cuda"].ann_accuracy}}
        for m in ("none", "ftbc"):
            a, b = runs["cpu"].accuracy[m], runs["cuda"].accuracy[m]
            check = agreement(a, b, n)
            figures["agreement"][m] = {"cpu": [round(float(v), 4) for v in a], "gpu": [round(float(v), 4) for v in b],
                                       **check}
            print(f"{m}: CPU {a[-1]:.2f}% vs GPU {b[-1]:.2f}% at T={t_max}; largest difference "
                  f"{check['max_diff_points']:.2f} points ({check['max_diff_images']} images) at T={check['at_T']}, "
                  f"{'within' if check['within_noise'] else 'OUTSIDE'} sampling noise")
    path = write_result(NAME, figures, args.out)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
