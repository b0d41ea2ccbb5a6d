"""One process with 2 threads against 2 processes with 1 thread each (torchrun, gloo) on this CPU, for the
evaluation of ``ftbc evaluate``, and the all-reduce traffic of one FTBC calibration batch.

    python benchmarks/distributed_cpu.py --model resnet20-cifar10 --timesteps 8 --images 1000

Each configuration runs this script's worker (``--worker``) in fresh processes: ``python distributed_cpu.py
--worker`` with 2 threads, and ``torchrun --nproc_per_node=2 distributed_cpu.py --worker`` with 1 thread each.
The worker runs :func:`ftbc_core.experiment.run_experiment` (method ``none``; under torchrun each process takes
its shard of the images and the correct counts are all-reduced) and reports rank 0's simulation seconds, which
run from the all-reduce of the ANN accuracy (every rank in step) to the all-reduce of the SNN's correct counts
(every rank done): the time of the slower rank. Then it calibrates FTBC (``--calib-batches`` batches of
``--calib-batch-size``) and reports the seconds and the bytes this process gave to collectives
(:func:`ftbc_core.distributed.traffic`, payload sizes) per batch. Configurations alternate for ``--repeats``
rounds (the median is reported), and the end-to-end wall time of each command (imports, loading, everything) is
recorded too. The machine is shared: the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

NAME = "distributed_cpu"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20-cifar10", help="a shipped model or a checkpoint path")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the bundled samples)")
    p.add_argument("--timesteps", type=int, default=8)
    p.add_argument("--images", type=int, default=1000, help="evaluation images")
    p.add_argument("--calib-batches", type=int, default=2)
    p.add_argument("--calib-batch-size", type=int, default=64)
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="rounds of both configurations (median reported)")
    p.add_argument("--threads", type=int, default=2, help="cores to use: 1 process x THREADS vs THREADS x 1")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/distributed_cpu.json)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One configuration, in this process (and its torchrun siblings); rank 0 prints ``RESULT {json}``."""
    import torch

    from ftbc_core import distributed as dist
    from ftbc_core.assets import load_images, resolve_checkpoint
    from ftbc_core.calibration import get_method
    from ftbc_core.checkpoint import load_checkpoint
    from ftbc_core.data import get_info
    from ftbc_core.experiment import ExperimentConfig, calibration_images, prepare_model, run_experiment

    launch = dist.launch_info()
    threads = args.threads if launch is None else 1
    torch.set_num_threads(threads)
    with dist.process_group("cpu", launch) if launch is not None else nullcontext():
        cfg = ExperimentConfig(model=args.model, data_dir=args.data_dir, timesteps=args.timesteps, methods=("none",),
                               limit=args.images, device="cpu")
        start = time.perf_counter()
        result = run_experiment(cfg)
        experiment_s = time.perf_counter() - start
        ann, card = load_checkpoint(resolve_checkpoint(args.model))
        train, _ = load_images(card.dataset, "train", args.data_dir)
        calib = calibration_images(train, args.calib_images, 0, get_info(card.dataset).num_classes)
        ann, card, snn = prepare_model(ann, card, torch.device("cpu"), calib)
        opts = {"batches": args.calib_batches, "batch_size": args.calib_batch_size}
        dist.reset_traffic()
        start = time.perf_counter()
        with dist.exact_float32():
            _, report = get_method("ftbc").calibrate(snn, ann, calib, args.timesteps, opts)
        calib_s = time.perf_counter() - start
        traffic = dist.traffic()
        if dist.is_main():
            print("RESULT " + json.dumps({
                "world_size": dist.world_size(), "threads_per_process": threads, "n_images": result.n_images,
                "simulate_seconds": result.seconds["none"], "experiment_seconds": experiment_s,
                "accuracy": [round(float(a), 4) for a in result.accuracy["none"]],
                "ann_accuracy": result.ann_accuracy, "calibration_seconds": calib_s,
                "calibration_batches": args.calib_batches, "traffic": traffic,
                "biases_sum": float(sum(float(abs(b).sum()) for b in report.biases.values()))}), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_args(args: argparse.Namespace) -> list[str]:
    out = ["--worker", "--model", args.model, "--timesteps", str(args.timesteps), "--images", str(args.images),
           "--calib-batches", str(args.calib_batches), "--calib-batch-size", str(args.calib_batch_size),
           "--calib-images", str(args.calib_images), "--threads", str(args.threads)]
    return out + (["--data-dir", args.data_dir] if args.data_dir else [])


def run_config(args: argparse.Namespace, processes: int) -> dict:
    """Run one configuration in fresh processes; the worker's figures plus the command's wall seconds."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    threads = args.threads if processes == 1 else 1
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    script = str(Path(__file__).resolve())
    if processes == 1:
        cmd = [sys.executable, script, *_worker_args(args)]
    else:
        torchrun = shutil.which("torchrun")
        if torchrun is None:
            raise SystemExit("torchrun is not on PATH")
        cmd = [torchrun, f"--nproc_per_node={processes}", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
               script, *_worker_args(args)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=3600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    figures = json.loads(line[len("RESULT "):])
    figures["command_wall_seconds"] = wall
    return figures


def summarize(runs: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    """Medians per configuration, throughputs, ratios and traffic per calibration batch."""
    out: dict = {"model": args.model, "timesteps": args.timesteps, "images": runs["1p"][0]["n_images"],
                 "calibration": {"batches": args.calib_batches, "batch_size": args.calib_batch_size,
                                 "method": "ftbc"}}
    for key, label in (("1p", f"1 process x {args.threads} threads"), ("np", f"{args.threads} processes x 1 thread")):
        rs = runs[key]
        sim = statistics.median(r["simulate_seconds"] for r in rs)
        out[key] = {"label": label, "simulate_seconds": [round(r["simulate_seconds"], 3) for r in rs],
                    "images_per_s": round(out["images"] / sim, 2),
                    "calibration_seconds_per_batch": round(
                        statistics.median(r["calibration_seconds"] for r in rs) / args.calib_batches, 3),
                    "command_wall_seconds": round(statistics.median(r["command_wall_seconds"] for r in rs), 2),
                    "accuracy_at_T": rs[0]["accuracy"][-1], "ann_accuracy": rs[0]["ann_accuracy"]}
    out["ratio_images_per_s_np_over_1p"] = round(out["np"]["images_per_s"] / out["1p"]["images_per_s"], 3)
    out["ratio_calibration_np_over_1p_time"] = round(
        out["np"]["calibration_seconds_per_batch"] / out["1p"]["calibration_seconds_per_batch"], 3)
    out["same_accuracy"] = runs["1p"][0]["accuracy"] == runs["np"][0]["accuracy"]
    traffic = runs["np"][0]["traffic"]
    per_batch = (traffic["all_reduce_bytes"] + traffic["all_gather_bytes"]) / args.calib_batches
    out["calibration_traffic_per_batch"] = {
        "payload_bytes_per_process": int(per_batch),
        "all_reduce_calls_per_batch": traffic["all_reduce_calls"] / args.calib_batches,
        "ring_wire_bytes_per_process_estimate": int(per_batch * 2 * (args.threads - 1) / args.threads),
        "note": "payload: the bytes each process hands to all_reduce/all_gather (ftbc_core.distributed.traffic); "
                "a ring all-reduce sends about 2(N-1)/N times that per process"}
    return out


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return None
    from common import write_result

    load_start = os.getloadavg()
    runs: dict[str, list[dict]] = {"1p": [], "np": []}
    for _ in range(max(1, args.repeats)):  # alternate, so a load change hits both alike
        runs["1p"].append(run_config(args, 1))
        runs["np"].append(run_config(args, args.threads))
    figures = summarize(runs, args)
    figures["load_average_during"] = {"start": [round(x, 2) for x in load_start],
                                      "end": [round(x, 2) for x in os.getloadavg()]}
    figures["raw"] = runs
    for key in ("1p", "np"):
        f = figures[key]
        print(f"{f['label']:26s} {f['images_per_s']:8.1f} images/s (T={args.timesteps}, {figures['images']} images), "
              f"FTBC calibration {f['calibration_seconds_per_batch']:.2f} s/batch, "
              f"command {f['command_wall_seconds']:.1f} s")
    print(f"ratio ({args.threads} processes / 1 process): {figures['ratio_images_per_s_np_over_1p']:.2f}x images/s; "
          f"same accuracy: {figures['same_accuracy']}")
    t = figures["calibration_traffic_per_batch"]
    print(f"all-reduce traffic per calibration batch: {t['payload_bytes_per_process']:,} bytes per process in "
          f"{t['all_reduce_calls_per_batch']:.0f} all-reduces")
    path = write_result(NAME, figures, args.out)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
