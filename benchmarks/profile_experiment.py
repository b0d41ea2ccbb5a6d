"""Where the dashboard's default experiment spends its time: cProfile of one ``run_experiment``.

    python benchmarks/profile_experiment.py                  # resnet20-cifar10, the form's defaults, 1 thread
    python benchmarks/profile_experiment.py --threads 2 --top 25

Runs the configuration the dashboard's Run button builds from its defaults (``dashboard.state.DEFAULTS``:
T, image count, methods, α, calibration batches, recorded measurements) on the bundled sample, once untimed on
8 images to warm up, then once under cProfile. Prints the total and the functions with the most own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard.sidebar import DEFAULTS  # noqa: E402
from ftbc_core.experiment import ExperimentConfig, run_experiment  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20-cifar10")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=15, help="functions to list, by own time")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    d = DEFAULTS
    cfg = ExperimentConfig(model=args.model, timesteps=d["timesteps"], methods=tuple(d["methods"]), limit=d["limit"],
                           record=True, record_images=min(d["record_images"], d["limit"]))
    run_experiment(ExperimentConfig(model=args.model, timesteps=2, methods=("none",), limit=8))  # warm-up
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    run_experiment(cfg)
    profile.disable()
    total = time.perf_counter() - start
    print(f"{args.model}: T={cfg.timesteps}, {cfg.limit} images, methods {', '.join(cfg.methods)}, measured on {cfg.record_images}; "
          f"{args.threads} thread(s): {total:.1f} s under cProfile")
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    return total


if __name__ == "__main__":
    main()
