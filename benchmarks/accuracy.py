"""Accuracy table on the full test sets: ANN, and the SNN with each method at every T.

    python benchmarks/accuracy.py --models cnn-mnist --data-dir ../shared/data

Protocol (no test-set peeking):
1. The training split is permuted with a fixed seed; the first ``--val-images`` are held out for selection,
   calibration images (``--calib-images``, class-balanced) come from the rest.
2. FTBC's α and number of batches (and ftbc-exact's number of batches) are chosen on the held-out images by the
   mean accuracy over the requested T (up to ``--select-max-t``). COS uses ρ = ``--rho`` (4, as in its README).
3. Each method is calibrated once with its chosen options and simulated once to max(T) on the full test split;
   accuracy at every T comes from that one run (everything is causal).
Results are printed as a Markdown table and written as JSON to ``benchmarks/results/accuracy-<model>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ftbc_core.assets import resolve_checkpoint
from ftbc_core.calibration import get_method
from ftbc_core.checkpoint import load_checkpoint
from ftbc_core.data import get_info, load_split, to_tensor
from ftbc_core.evaluate import ann_accuracy
from ftbc_core.experiment import calibration_images, simulate_dataset
from ftbc_core.snn import to_snn

ALPHAS, BATCHES = (0.1, 0.2, 0.5), (2, 4, 8)  # the default selection grid (--alphas, --grid-batches)


def grids(alphas=ALPHAS, batches=BATCHES) -> dict[str, list[dict]]:
    """The options tried on the held-out images, per method."""
    return {
        "ftbc": [{"alpha": a, "batches": b, "batch_size": 64} for a, b in itertools.product(alphas, batches)],
        "ftbc-layer": [{"alpha": a, "batches": 4, "batch_size": 64} for a in alphas],
        "ftbc-exact": [{"batches": b, "batch_size": 64} for b in (1, 4)],
    }


GRIDS = grids()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def select_options(method: str, snn, ann, calib: torch.Tensor, val, timesteps: list[int], rho: int,
                   grid: dict[str, list[dict]] | None = None) -> tuple[dict, list]:
    """Choose a method's options on held-out training images; returns (best options, all trials)."""
    grid = GRIDS if grid is None else grid
    if method == "cos":
        return {"rho": rho}, []
    if method not in grid:
        return {}, []
    t_max = max(timesteps)
    trials = []
    for opts in grid[method]:
        net, _ = get_method(method).calibrate(snn, ann, calib, t_max, opts)
        acc, _ = simulate_dataset(net, ann, val, t_max)
        score = float(np.mean([acc[t - 1] for t in timesteps]))
        trials.append({"options": opts, "score": score})
        _log(f"  select {method} {opts}: mean held-out accuracy {score:.2f}%")
    best = max(trials, key=lambda r: r["score"])
    return dict(best["options"]), trials


def run_model(name: str, args: argparse.Namespace) -> dict:
    ann, card = load_checkpoint(resolve_checkpoint(name))
    info = get_info(card.dataset)
    train = load_split(card.dataset, "train", args.data_dir)
    test = load_split(card.dataset, "test", args.data_dir)
    if args.limit:
        test = test.subset(np.arange(min(args.limit, len(test))))
    order = np.random.default_rng(args.seed).permutation(len(train))
    val = train.subset(np.sort(order[: args.val_images]))
    pool = train.subset(np.sort(order[args.val_images :]))
    calib = calibration_images(pool, args.calib_images, args.seed, info.num_classes)
    snn = to_snn(ann, images=calib if card.activation != "qcfs" else None)
    t_max = max(args.timesteps)
    select_ts = [t for t in args.timesteps if t <= args.select_max_t] or [min(args.timesteps)]
    result = {"model": name, "dataset": card.dataset, "card_ann_accuracy": card.ann_test_accuracy,
              "n_test": len(test), "ann_accuracy": ann_accuracy(ann, test), "methods": {}}
    _log(f"{name}: ANN {result['ann_accuracy']:.2f}% on {len(test)} test images")
    for method in args.methods:
        start = time.perf_counter()
        opts, trials = select_options(method, snn, ann, calib, val, select_ts, args.rho,
                                      grids(args.alphas, args.grid_batches))
        net, report = get_method(method).calibrate(snn, ann, calib, t_max, opts)
        acc, _ = simulate_dataset(net, ann, test, t_max)
        result["methods"][method] = {
            "options": report.options, "selection": trials, "calibration_seconds": report.seconds,
            "latency": report.latency, "accuracy": {str(t): float(acc[t - 1]) for t in args.timesteps},
            "seconds": time.perf_counter() - start}
        _log(f"  {method} {report.options}: " + ", ".join(f"T={t} {acc[t - 1]:.2f}" for t in args.timesteps))
    return result


def markdown(result: dict, timesteps: list[int]) -> str:
    methods = list(result["methods"])
    lines = [f"**{result['model']}** ({result['dataset']}, {result['n_test']} test images, "
             f"ANN {result['ann_accuracy']:.2f}%)", "",
             "| T | " + " | ".join(methods) + " | FTBC gain |" if "ftbc" in methods and "none" in methods
             else "| T | " + " | ".join(methods) + " |"]
    lines.append("|" + "---|" * (len(lines[-1].split("|")) - 2))
    for t in timesteps:
        row = [f"{result['methods'][m]['accuracy'][str(t)]:.2f}" for m in methods]
        if "ftbc" in methods and "none" in methods:
            gain = result["methods"]["ftbc"]["accuracy"][str(t)] - result["methods"]["none"]["accuracy"][str(t)]
            row.append(f"{gain:+.2f}")
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    opts = "; ".join(f"{m}: {result['methods'][m]['options']}" for m in methods if result["methods"][m]["options"])
    lines += ["", f"Chosen options: {opts}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="accuracy table of the shipped models")
    parser.add_argument("--models", default="cnn-mnist")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--timesteps", default="1,2,4,8,16,32")
    parser.add_argument("--methods", default="none,ftbc,ftbc-exact,cos")
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--select-max-t", type=int, default=16)
    parser.add_argument("--rho", type=int, default=4)
    parser.add_argument("--alphas", default=",".join(map(str, ALPHAS)), help="FTBC α values of the selection grid")
    parser.add_argument("--grid-batches", default=",".join(map(str, BATCHES)),
                        help="FTBC calibration batch counts of the selection grid")
    parser.add_argument("--limit", type=int, help="evaluate on the first N test images only (quick look)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    args.timesteps = [int(t) for t in args.timesteps.split(",")]
    args.methods = args.methods.split(",")
    args.alphas = tuple(float(a) for a in args.alphas.split(","))
    args.grid_batches = tuple(int(b) for b in args.grid_batches.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python benchmarks/accuracy.py " + shlex.join(sys.argv[1:] if argv is None else argv),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}",
            "torch": torch.__version__}
    results = {}
    for name in args.models.split(","):
        result = results[name] = {**run_model(name, args), **meta}
        (out_dir / f"accuracy-{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(markdown(result, args.timesteps) + "\n", flush=True)
    return results


if __name__ == "__main__":
    main()
