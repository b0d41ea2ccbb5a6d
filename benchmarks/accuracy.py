"""Accuracy table on the full test sets: ANN, and the SNN with each method at every T.

    python benchmarks/accuracy.py --models cnn-mnist --data-dir ../shared/data

Protocol (no test-set peeking):
1. The training split is permuted with a fixed seed; the first ``--val-images`` are held out for selection,
   calibration images (``--calib-images``, class-balanced) come from the rest.
2. FTBC's α and number of batches (and ftbc-exact's number of batches) are chosen on the held-out images by the
   mean accuracy over the requested T (up to ``--select-max-t``). COS uses ρ = ``--rho`` (4, as in its README).
3. Each method is calibrated once with its chosen options and simulated once to max(T) on the full test split;
   accuracy at every T comes from that one run (everything is causal).
Results are printed as a Markdown table (also written to ``accuracy-<model>.md``) and written as JSON to
``benchmarks/results/accuracy-<model>.json``, after every method (``"complete": false`` until all asked for
are done). ``--resume`` keeps the methods that file already has when it was made with the same protocol
(weights, data folder, test images, T, seeds, held-out and calibration images, selection grid) and runs only
the others, so a slow model's table can be built over several sessions; ``runs`` lists the command, date and
commit behind each part.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import itertools
import json
import platform
import shlex
import subprocess
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


def protocol(name: str, args: argparse.Namespace) -> dict:
    """Everything that decides a method's numbers apart from the method itself (what --resume compares)."""
    weights = resolve_checkpoint(name)
    return {"model": name, "weights_sha256": hashlib.sha256(Path(weights).read_bytes()).hexdigest(),
            "data_dir": str(Path(args.data_dir).resolve()), "limit": args.limit,
            "timesteps": list(args.timesteps), "seed": args.seed,
            "val_images": args.val_images, "calib_images": args.calib_images, "select_max_t": args.select_max_t,
            "rho": args.rho, "alphas": list(args.alphas), "grid_batches": list(args.grid_batches)}


def previous_result(path: Path, want: dict, args: argparse.Namespace) -> dict | None:
    """The stored result to resume from, or None; exits with a message if it was made with other settings than
    ``want`` (:func:`protocol`)."""
    if not args.resume or not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"cannot resume from {path}: {err}")
    have = old.get("protocol")
    if have is None:
        raise SystemExit(f"cannot resume from {path}: it was written before accuracy.py recorded its settings; "
                         "drop --resume to start again")
    if have != want:
        diff = sorted(k for k in want if (have or {}).get(k) != want[k]) if isinstance(have, dict) else ["protocol"]
        raise SystemExit(f"cannot resume from {path}: it was made with different settings ({', '.join(diff)}); "
                         "drop --resume to start again, or use the same settings")
    return old


def git_commit() -> str | None:
    """The checked-out commit (with ``+dirty`` for uncommitted changes), recorded with each run; None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def write_json(path: Path, data: dict) -> None:
    """Write atomically: a failed or interrupted run leaves the previous file (or none), never a partial one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def run_model(name: str, args: argparse.Namespace, meta: dict, path: Path) -> dict:
    settings = protocol(name, args)  # hashes the weights file: once per model
    old = previous_result(path, settings, args)
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
              "n_test": len(test), "ann_accuracy": ann_accuracy(ann, test), "methods": {},
              "protocol": settings, "runs": []}
    if old is not None:  # same weights, data folder and settings: keep every method it has
        result["methods"] = dict(old.get("methods", {}))
        result["runs"] = list(old.get("runs", []))
        if result["methods"]:
            _log(f"{name}: resuming; kept {', '.join(result['methods'])} from {path}")
    todo = [m for m in args.methods if m not in result["methods"]]
    run = {**meta, "git_commit": git_commit(), "methods": []}  # a method is listed once it is done
    result["runs"].append(run)
    _log(f"{name}: ANN {result['ann_accuracy']:.2f}% on {len(test)} test images")
    for method in todo:
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
        run["methods"].append(method)
        write_json(path, {**result, **meta, "complete": False})
    kept = [m for m in result["methods"] if m not in args.methods]
    result["methods"] = {m: result["methods"][m] for m in list(args.methods) + kept}  # the asked order first
    return {**result, **meta, "complete": True}


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
    parser.add_argument("--resume", action="store_true",
                        help="keep the methods the output file already has (same settings) and run only the others")
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
        path = out_dir / f"accuracy-{name}.json"
        result = results[name] = run_model(name, args, meta, path)
        write_json(path, result)
        table = markdown(result, args.timesteps)
        path.with_suffix(".md").write_text(table + "\n")
        print(table + "\n", flush=True)
    return results


if __name__ == "__main__":
    main()
