"""Published algorithms beside this project's variants: COS as published (``cos``, replay) and lock-step
(``cos-causal``), the official FTBC script's rule (``ftbc-official``) and the corrected FTBC (``ftbc``).

    OMP_NUM_THREADS=1 python benchmarks/variants.py --model cnn-mnist --data-dir ../shared/data --limit 2000
    OMP_NUM_THREADS=1 python benchmarks/variants.py --model resnet20-cifar10 --data-dir ../shared/data \\
        --limit 1000 --timesteps 1,2,4,8

One :func:`ftbc_core.experiment.run_experiment` with every method (each with its own defaults unless
``--rho``/``--reference-levels`` say otherwise), simulated once to max(T); accuracy at each requested T comes
from that run. COS-type methods pay ρ extra steps: the table gives their accuracy at T and the steps every input
costs (T + ρ). For ``cos`` (replay), accuracy after t < ρ steps of the run already used ρ frames to choose the
shift (as the public COS code reports T = 1, 2 with ρ = 4). Written to ``benchmarks/results/variants-<model>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # ftbc_core from a checkout

from common import fmt_table, set_threads, write_result  # noqa: E402
from ftbc_core.calibration import METHODS  # noqa: E402
from ftbc_core.experiment import ExperimentConfig, run_experiment  # noqa: E402

DEFAULT_METHODS = "none,cos,cos-causal,ftbc-official,ftbc"


def _int_list(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"time steps must be >= 1, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cnn-mnist", help="shipped checkpoint name or checkpoint path")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the bundled samples)")
    p.add_argument("--limit", type=int, default=None, help="first N test images")
    p.add_argument("--timesteps", type=_int_list, default=[1, 2, 4, 8], help="e.g. 1,2,4,8")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from: {', '.join(METHODS)}")
    p.add_argument("--calib-images", type=int, default=1024, help="training images calibration draws from")
    p.add_argument("--batch-size", type=int, default=200, help="evaluation images per batch")
    p.add_argument("--rho", type=int, default=None, help="COS pre-steps ρ (default: each method's, 4)")
    p.add_argument("--reference-levels", type=int, default=None,
                   help="ftbc-official's reference ANN L (default: the trained L; the script used 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/variants-<model>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    options = {k: v for k, v in {"rho": args.rho, "reference_levels": args.reference_levels}.items()
               if v is not None}
    cfg = ExperimentConfig(model=args.model, data_dir=args.data_dir, timesteps=max(args.timesteps), methods=methods,
                           limit=args.limit, batch_size=args.batch_size, device="cpu", method_options=options,
                           calib_images=args.calib_images, seed=args.seed)
    start = time.perf_counter()
    result = run_experiment(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    seconds = time.perf_counter() - start
    rows, per_method = [], {}
    for m in result.methods:
        rep = result.reports[m]
        acc = {t: float(result.accuracy[m][t - 1]) for t in args.timesteps}
        per_method[m] = {"label": METHODS[m].label, "options": rep.options, "latency": rep.latency,
                         "calibration_seconds": rep.seconds, "simulation_seconds": result.seconds.get(m),
                         "accuracy": acc, "bias_change": list(rep.bias_change)}
        row = {"method": m, "ρ": rep.latency or ""}
        row.update({f"T={t}": acc[t] for t in args.timesteps})
        row["steps paid"] = ", ".join(str(t + rep.latency) for t in args.timesteps) if rep.latency else ""
        rows.append(row)
    columns = ["method", "ρ"] + [f"T={t}" for t in args.timesteps] + ["steps paid"]
    print(f"{result.model_name} ({result.data_description}, {result.n_images} images): ANN "
          f"{result.ann_accuracy:.2f}%")
    print(fmt_table(rows, columns))
    figures = {"model": result.model_name, "dataset": result.dataset, "data": result.data_description,
               "n_images": result.n_images, "ann_accuracy": result.ann_accuracy, "timesteps": args.timesteps,
               "simulated_to": result.timesteps, "calib_images": args.calib_images, "seed": args.seed,
               "method_options": options, "methods": per_method, "seconds": seconds,
               "rows": [{"method": m, "T": t, "accuracy": per_method[m]["accuracy"][t],
                         "steps_paid": t + per_method[m]["latency"]} for m in result.methods for t in args.timesteps]}
    path = write_result(f"variants-{result.model_name}", figures, args.out)
    print(f"written {path}", file=sys.stderr)
    return figures


if __name__ == "__main__":
    main()
