"""How much an FTBC result depends on the calibration draw: accuracy over (number of batches, seed) per method.

    OMP_NUM_THREADS=1 python benchmarks/ftbc_stability.py --model cnn-mnist --data-dir ../shared/data \\
        --limit 2000 --batches 4,8,16,32 --seeds 0,1,2,3 --methods ftbc-alpha,ftbc,ftbc-root,ftbc-exact \\
        --timesteps 1,2,4,8

Protocol: the same as ``run_experiment(ExperimentConfig(model, data_dir, timesteps=max(T), methods, limit,
method_options={"batches": b}, seed=s))`` for every (b, s), but the model is loaded and converted once per seed
and every method is calibrated on it: for each seed s, ``--calib-images`` class-balanced training images drawn
with seed s (the bundled calibration sample without ``--data-dir``); each method is calibrated with
``{"batches": b, "seed": s}`` (plus ``--alpha``/``--batch-size`` if given, otherwise its defaults) for max(T)
steps, and simulated once to max(T) on the first ``--limit`` test images; the accuracy at every asked T comes
from that one run (biases and simulation are causal).

Printed per method: a table of the accuracy at each asked T for every (batches, seed) with the mean |Δb| of the
first and last calibration batch (columns ``Δb first``, ``Δb last``: ``CalibrationReport.bias_change``, the
convergence curve, in the units of the biases, i.e. of the layer's input current) and the calibration time; then
per T the mean, standard deviation (sample, n − 1), min, max and spread (max − min) over all runs. Everything, with the whole |Δb| curve of every
run, goes to ``benchmarks/results/ftbc_stability-<model>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import fmt_table, set_threads, write_result  # noqa: E402
from ftbc_core.assets import load_images, resolve_checkpoint  # noqa: E402
from ftbc_core.calibration import get_method  # noqa: E402
from ftbc_core.checkpoint import load_checkpoint  # noqa: E402
from ftbc_core.data import get_info  # noqa: E402
from ftbc_core.experiment import calibration_images, prepare_model, simulate_dataset  # noqa: E402


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cnn-mnist", help="shipped model name or checkpoint path")
    p.add_argument("--data-dir", default=None, help="dataset folder; default: the bundled samples")
    p.add_argument("--limit", type=int, default=2000, help="first N test images (default 2000)")
    p.add_argument("--batches", type=_ints, default=[4, 8, 16, 32], help="numbers of calibration batches")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2, 3], help="seeds (calibration images and batch draw)")
    p.add_argument("--methods", type=_names, default=["ftbc-alpha", "ftbc"], help="comma-separated methods")
    p.add_argument("--timesteps", type=_ints, default=[1, 2, 4], help="T values reported (simulated to the max)")
    p.add_argument("--alpha", type=float, default=None, help="α for every method that has one (default: its own)")
    p.add_argument("--batch-size", type=int, default=None, help="calibration batch size (default: the method's)")
    p.add_argument("--calib-images", type=int, default=1024, help="calibration images per seed (run_experiment's)")
    p.add_argument("--eval-batch-size", type=int, default=200, help="images simulated at once (run_experiment's)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/ftbc_stability-<model>.json)")
    args = p.parse_args(argv)
    for m in args.methods:
        get_method(m)  # unknown method: a clear error before any work
    if args.limit < 1 or min(args.timesteps) < 1 or min(args.batches) < 1:
        p.error("--limit, --timesteps and --batches must be >= 1")
    return args


def summarize(values: list[float]) -> dict[str, float]:
    """mean, sample std, min, max and spread (max − min) of ``values``."""
    return {"mean": float(np.mean(values)), "std": float(statistics.stdev(values)) if len(values) > 1 else 0.0,
            "min": float(min(values)), "max": float(max(values)), "spread": float(max(values) - min(values)),
            "n": len(values)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    device = torch.device("cpu")
    t_max = max(args.timesteps)
    ann0, card0 = load_checkpoint(resolve_checkpoint(args.model), device=device)
    train, train_desc = load_images(card0.dataset, "train", args.data_dir)
    test, test_desc = load_images(card0.dataset, "test", args.data_dir)
    if args.limit < len(test):
        test = test.subset(np.arange(args.limit))
        test_desc = f"first {args.limit} images of the {test_desc}"
    info = get_info(card0.dataset)
    print(f"{card0.name}: {len(test)} test images ({test_desc}); calibration: {args.calib_images} images of the "
          f"{train_desc} per seed; T up to {t_max}", file=sys.stderr, flush=True)
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    overrides = {k: v for k, v in (("alpha", args.alpha), ("batch_size", args.batch_size)) if v is not None}
    for seed in args.seeds:
        calib = calibration_images(train, args.calib_images, seed, info.num_classes).to(device)
        ann, card, snn = prepare_model(ann0, card0, device, calib)
        for method in args.methods:
            for batches in args.batches:
                opts = {**overrides, "batches": batches, "seed": seed}
                start = time.perf_counter()
                net, report = get_method(method).calibrate(snn, ann, calib, t_max, opts)
                calib_s = time.perf_counter() - start
                acc, _ = simulate_dataset(net, ann, test, t_max, batch_size=args.eval_batch_size)
                row = {"batches": batches, "seed": seed, "options": report.options,
                       "accuracy": {str(t): float(acc[t - 1]) for t in args.timesteps},
                       "bias_change": [float(c) for c in report.bias_change],
                       "first_bias_change": float(report.bias_change[0]),
                       "final_bias_change": float(report.bias_change[-1]),
                       "calibration_seconds": calib_s, "calibration_images": report.n_images}
                runs[method].append(row)
                print(f"  {method} batches={batches} seed={seed}: "
                      + " ".join(f"T{t} {acc[t - 1]:.2f}" for t in args.timesteps)
                      + f"  |Δb| first {row['first_bias_change']:.4f} last {row['final_bias_change']:.4f}"
                      f"  ({calib_s:.1f} s)", file=sys.stderr, flush=True)
    figures: dict = {"model": card0.name, "dataset": card0.dataset, "test_images": len(test),
                     "test_description": test_desc, "calibration_description": train_desc,
                     "calib_images": args.calib_images, "timesteps": args.timesteps, "batches": args.batches,
                     "seeds": args.seeds, "overrides": overrides, "methods": {}}
    for method in args.methods:
        rows = sorted(runs[method], key=lambda r: (r["batches"], r["seed"]))
        summary = {str(t): summarize([r["accuracy"][str(t)] for r in rows]) for t in args.timesteps}
        final = [r["final_bias_change"] for r in rows]
        per_batches = {str(b): {"mean_final_bias_change": float(np.mean([r["final_bias_change"] for r in rows
                                                                          if r["batches"] == b])),
                                "mean_calibration_seconds": float(np.mean([r["calibration_seconds"] for r in rows
                                                                           if r["batches"] == b]))}
                       for b in args.batches}
        figures["methods"][method] = {"label": get_method(method).label, "runs": rows, "summary": summary,
                                      "final_bias_change": summarize(final), "by_batches": per_batches}
        table = [{"batches": r["batches"], "seed": r["seed"],
                  **{f"T={t}": r["accuracy"][str(t)] for t in args.timesteps},
                  "Δb first": r["first_bias_change"], "Δb last": r["final_bias_change"],
                  "calib s": r["calibration_seconds"]} for r in rows]
        cols = ["batches", "seed", *[f"T={t}" for t in args.timesteps], "Δb first", "Δb last", "calib s"]
        print(f"\n### {method} ({get_method(method).label}) on {card0.name}, {test_desc}\n")
        print(fmt_table(table, cols))
        stats = [{"T": t, **{k: summary[str(t)][k] for k in ("mean", "std", "min", "max", "spread")}}
                 for t in args.timesteps]
        print()
        print(fmt_table(stats, ["T", "mean", "std", "min", "max", "spread"]))
        print(f"\nfinal |Δb| per run: mean {np.mean(final):.4g}, max {max(final):.4g}; per number of batches: "
              + ", ".join(f"{b}: {v['mean_final_bias_change']:.4g}" for b, v in per_batches.items()))
    path = write_result(f"ftbc_stability-{card0.name}", figures, args.out)
    print(f"\nwrote {path}", file=sys.stderr)
    return figures


if __name__ == "__main__":
    main()
