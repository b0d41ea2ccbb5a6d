"""How the SNN forward's time and peak memory grow with T and with the batch size.

    OMP_NUM_THREADS=1 python benchmarks/cost_growth.py --model resnet20-cifar10 vgg16-cifar10

For each model: ``snn.simulate(x, T)`` (one chunk: all B images x T steps at once, so its memory grows with T x B
by design) for T in ``--timesteps`` at batch ``--batch``, and for B in ``--batch-sizes`` at T = ``--fixed-t``.
``--call forward`` measures ``snn(x, T)`` instead: the public forward, which splits the batch into chunks of at
most ``max_batch_steps`` image-steps, so its peak memory should stay bounded as T x B grows. Each point runs in a fresh Python process
(``--in-process`` to skip that), which measures the forward's peak memory as the growth of ``ru_maxrss`` (its
peak first reset through ``/proc/self/clear_refs``) over the resident size just before the first full-size
forward (after a 1-image, 1-step call has done the one-time set-up and ``malloc_trim`` has returned freed heap
pages to the OS), then times the forward (warm-up + median of repeats).
Printed per point: time, time per step (time/T: flat if the cost is linear in T) and per image-step (flat if
there is no fixed per-call overhead at small batches), and the peak memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ModelSpec, add_model_args, fmt_table, load_ann, load_calib, load_eval,  # noqa: E402
                    model_specs, peak_rss_mib, set_threads, time_call, write_result)

from ftbc_core.snn import to_snn  # noqa: E402

NAME = "cost_growth"


def current_rss_mib() -> float | None:
    """Resident memory of this process now (Linux ``/proc/self/statm``), in MiB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``), so they do not hide the next allocations."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (and so ``ru_maxrss``) to its current RSS: Linux >= 4.0 ``clear_refs`` 5."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_point(spec: ModelSpec, timesteps: int, batch: int, *, data_dir: str | None, threads: int,
                  repeats: int, warmup: int, call: str = "simulate") -> dict:
    """Time (and, in a fresh process, peak memory of) ``snn.simulate(x, T)`` (or ``snn(x, T)`` for
    ``call="forward"``) on ``batch`` evaluation images."""
    set_threads(threads)
    calib, _ = load_calib(spec.dataset, data_dir, 128, spec.seed)
    ann = load_ann(spec, calib)
    snn = to_snn(ann, images=calib)
    x, _, _ = load_eval(spec.dataset, data_dir, batch)
    if x.shape[0] < batch:  # fewer images than the batch: repeat them
        x = x.repeat((batch + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[:batch]
    del calib
    run = snn.simulate if call == "simulate" else snn
    with torch.no_grad():
        run(x[:1], 1)  # lazy one-time set-up (kernels, thread pool) out of the memory figure
    release_free_memory()
    reset = reset_peak_rss()
    rss_before, peak_before = current_rss_mib(), peak_rss_mib()
    with torch.no_grad():
        run(x, timesteps)  # first call: its peak memory (and one more warm-up)
    peak_after = peak_rss_mib()
    with torch.no_grad():
        timing, _ = time_call(lambda: run(x, timesteps), repeats=repeats, warmup=warmup)
    exact = reset or peak_after > peak_before  # else the set-up's own peak may hide the forward's
    peak = (peak_after - rss_before) if rss_before is not None else None
    return {"model": spec.label, "call": call, "T": timesteps, "batch": batch, "median s": timing.median,
            "ms/step": 1e3 * timing.median / timesteps, "ms/image-step": 1e3 * timing.median / (timesteps * batch),
            "peak MiB": peak if exact or peak is None else f"<={peak:.4g}",
            "peak_exact": exact, "rss_before_mib": rss_before, "peak_before_mib": peak_before,
            "peak_after_mib": peak_after, "timing": timing.to_dict()}


def run_point(spec: ModelSpec, timesteps: int, batch: int, args: argparse.Namespace) -> dict:
    """:func:`measure_point` in a fresh interpreter (or in this one with ``--in-process``, memory then omitted)."""
    kwargs = dict(data_dir=args.data_dir, threads=args.threads, repeats=args.repeats, warmup=args.warmup,
                  call=args.call)
    if args.in_process:
        row = measure_point(spec, timesteps, batch, **kwargs)
        row["peak MiB"] = None  # this process's earlier points already set its peak
        return row
    point = {"spec": spec.__dict__, "T": timesteps, "batch": batch, **kwargs}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_point", json.dumps(point)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"point T={timesteps} B={batch} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _point_main(payload: str) -> None:
    point = json.loads(payload)
    spec = ModelSpec(**point.pop("spec"))
    row = measure_point(spec, point.pop("T"), point.pop("batch"), **point)
    print(json.dumps(row))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, multiple=True, default_arch=["resnet20", "vgg16"])
    p.add_argument("--data-dir", default=None, help="dataset folder; default: the bundled samples")
    p.add_argument("--timesteps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64], help="T of the T sweep")
    p.add_argument("--batch", type=int, default=32, help="batch size of the T sweep")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                   help="batch sizes of the batch sweep")
    p.add_argument("--fixed-t", type=int, default=8, help="T of the batch sweep")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per point (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per point after the memory-measuring one")
    p.add_argument("--call", choices=["simulate", "forward"], default="simulate",
                   help="simulate: one chunk of B x T image-steps; forward: snn(x, T), chunked (bounded memory)")
    p.add_argument("--in-process", action="store_true", help="no subprocess per point (faster; no memory figures)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<name>.json)")
    p.add_argument("--_point", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args._point is not None:
        _point_main(args._point)
        return {}
    set_threads(args.threads)
    cols = ["model", "call", "T", "batch", "median s", "ms/step", "ms/image-step", "peak MiB"]
    sweeps: dict[str, list[dict]] = {"vs_T": [], "vs_batch": []}
    for spec in model_specs(args):
        for t in args.timesteps:
            sweeps["vs_T"].append(run_point(spec, t, args.batch, args))
            print(fmt_table(sweeps["vs_T"][-1:], cols).splitlines()[-1], file=sys.stderr, flush=True)
        for b in args.batch_sizes:
            sweeps["vs_batch"].append(run_point(spec, args.fixed_t, b, args))
            print(fmt_table(sweeps["vs_batch"][-1:], cols).splitlines()[-1], file=sys.stderr, flush=True)
    call = "snn.simulate, one chunk" if args.call == "simulate" else "snn(x, T), chunked"
    print(f"\nSNN forward ({call}) vs T at batch {args.batch}; {args.threads} thread(s), "
          f"median of {args.repeats}:")
    print(fmt_table(sweeps["vs_T"], cols))
    print(f"\nSNN forward vs batch size at T={args.fixed_t}:")
    print(fmt_table(sweeps["vs_batch"], cols))
    if not args.in_process:
        print("peak MiB: growth of ru_maxrss over the RSS just before the first full-size forward, in a fresh process "
              "per point with the peak reset (/proc/self/clear_refs); where the reset is impossible and the set-up's "
              "own peak was higher, the figure is an upper bound, marked '<='.")
    figures = {**sweeps, "options": {k: v for k, v in vars(args).items() if not k.startswith("_")}}
    tag = "-".join(s.label for s in model_specs(args)) + ("-forward" if args.call == "forward" else "")
    path = write_result(f"{NAME}-{tag}", figures, args.out)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
