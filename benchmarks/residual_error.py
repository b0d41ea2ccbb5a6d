"""How much of each layer's conversion error a bias per channel and time step could remove, before and after FTBC.

    python benchmarks/residual_error.py --model resnet20-cifar10 --data-dir ../shared/data --timesteps 8 \\
        --images 1000 --alpha 0.5 --batches 8 --threads 2

Calibrates FTBC (α, batches) on training images and simulates the uncorrected and the corrected SNN on the first
``--images`` evaluation images with a :class:`~ftbc_core.measure.Recorder`. For every activation layer it reports,
at step T, the error ``e = (SNN running mean) − (ANN activation clipped to [0, θ])`` of each neuron:

- ``total``: mean |e| over neurons (activation units);
- ``systematic``: mean over channels of |mean e|, the mean taken over images and positions. This is the most a
  bias shared by all neurons of a channel at this step can cancel; the rest of ``total`` varies from input to
  input (or position to position) and no per-channel bias can remove it;
- ``share``: systematic / total.

After FTBC the systematic part should be small: what remains of the error is then of the kind FTBC cannot fix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import fmt_table, set_threads, write_result  # noqa: E402
from ftbc_core.experiment import ExperimentConfig, run_experiment  # noqa: E402
from ftbc_core.measure import Measurements  # noqa: E402

METHODS = ("none", "ftbc")


def error_parts(meas: Measurements, t: int) -> list[dict[str, float]]:
    """Per layer at step ``t`` (1-based): total mean |e|, its systematic (per-channel mean) part, and their ratio."""
    signed = meas.signed_error()
    rows = []
    for name in meas.layer_names:
        total = float(meas.abs_error[name][t - 1].mean())
        systematic = float(np.abs(signed[name][t - 1]).mean())
        rows.append({"layer": name, "total": total, "systematic": systematic,
                     "share": systematic / total if total > 0 else 0.0})
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20-cifar10", help="shipped model name or checkpoint path")
    p.add_argument("--data-dir", default=None, help="dataset folder; default: the bundled samples")
    p.add_argument("--timesteps", type=int, default=8, help="T (the error is reported at step T)")
    p.add_argument("--images", type=int, default=1000, help="first N evaluation images (capped at what exists)")
    p.add_argument("--calib-images", type=int, default=1024)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/residual_error-<model>.json)")
    args = p.parse_args(argv)
    set_threads(args.threads)
    opts = {"alpha": args.alpha, "batches": args.batches, "seed": 0}
    result = run_experiment(ExperimentConfig(
        model=args.model, data_dir=args.data_dir, timesteps=args.timesteps, methods=METHODS, limit=args.images,
        device="cpu", method_options=opts, calib_images=args.calib_images, record=True))
    t = result.timesteps
    figures: dict = {"model": result.model_name, "images": result.n_images, "test_data": result.data_description,
                     "timesteps": t, "ftbc_options": opts, "methods": {}}
    for method in METHODS:
        rows = error_parts(result.measurements[method], t)
        figures["methods"][method] = {
            "options": result.reports[method].options, "accuracy": float(result.accuracy[method][t - 1]),
            "layers": rows, "mean_total": float(np.mean([r["total"] for r in rows])),
            "mean_systematic": float(np.mean([r["systematic"] for r in rows]))}
    layers = [{"layer": a["layer"], **{f"{m} {k}": r[k] for m, r in zip(METHODS, (a, b))
                                       for k in ("total", "systematic", "share")}}
              for a, b in zip(*(figures["methods"][m]["layers"] for m in METHODS))]
    print(f"{result.model_name}: {result.n_images} images ({result.data_description}), error at step T={t}; "
          + ", ".join(f"accuracy {m} {figures['methods'][m]['accuracy']:.2f}%" for m in METHODS))
    print(fmt_table(layers, list(layers[0])))
    for method in METHODS:
        m = figures["methods"][method]
        print(f"{method}: mean over layers, total {m['mean_total']:.4f}, systematic {m['mean_systematic']:.4f} "
              f"({m['mean_systematic'] / m['mean_total']:.1%})")
    path = write_result(f"residual_error-{result.model_name}", figures, args.out)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
