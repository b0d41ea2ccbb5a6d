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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import fmt_table, set_threads, write_result  # noqa: E402
from ftbc_core.assets import load_images, resolve_checkpoint  # noqa: E402
from ftbc_core.calibration import get_method  # noqa: E402
from ftbc_core.checkpoint import load_checkpoint  # noqa: E402
from ftbc_core.data import get_info  # noqa: E402
from ftbc_core.experiment import calibration_images, prepare_model, simulate_dataset  # noqa: E402
from ftbc_core.measure import Measurements  # noqa: E402
from ftbc_core.snn import SpikingNetwork  # noqa: E402


def error_parts(meas: Measurements, net: SpikingNetwork, t: int) -> list[dict[str, float]]:
    """Per layer at step ``t`` (1-based): total mean |e|, its systematic (per-channel mean) part, and their ratio.

    The signed per-channel mean error is ``offset · θ / t`` (the offset is counted in spikes over t steps).
    """
    rows = []
    for name, neuron in zip(meas.layer_names, net.neurons):
        theta = neuron.theta.detach().cpu().double().numpy()  # [C] or [1]
        total = float(meas.abs_error[name][t - 1].mean())
        signed = meas.offset_spikes[name][t - 1] * theta / t  # [C], activation units
        systematic = float(np.abs(signed).mean())
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
    if args.timesteps < 1 or args.images < 1:
        p.error("--timesteps and --images must be >= 1")
    set_threads(args.threads)
    device = torch.device("cpu")
    ann, card = load_checkpoint(resolve_checkpoint(args.model), device=device)
    train, calib_desc = load_images(card.dataset, "train", args.data_dir)
    test, test_desc = load_images(card.dataset, "test", args.data_dir)
    test = test.subset(np.arange(min(args.images, len(test))))
    calib = calibration_images(train, args.calib_images, 0, get_info(card.dataset).num_classes)
    ann, card, snn = prepare_model(ann, card, device, calib)
    t = args.timesteps
    opts = {"alpha": args.alpha, "batches": args.batches, "seed": 0}
    figures: dict = {"model": card.name, "images": len(test), "test_data": test_desc, "calibration": calib_desc,
                     "timesteps": t, "ftbc_options": opts, "methods": {}}
    for method in ("none", "ftbc"):
        net, report = get_method(method).calibrate(snn, ann, calib, t, opts)
        acc, meas = simulate_dataset(net, ann, test, t, record=True)
        rows = error_parts(meas, net, t)
        figures["methods"][method] = {
            "options": report.options, "accuracy": float(acc[t - 1]), "layers": rows,
            "mean_total": float(np.mean([r["total"] for r in rows])),
            "mean_systematic": float(np.mean([r["systematic"] for r in rows]))}
    layers = []
    for i, row in enumerate(figures["methods"]["none"]["layers"]):
        fixed = figures["methods"]["ftbc"]["layers"][i]
        layers.append({"layer": row["layer"], "none total": row["total"], "none systematic": row["systematic"],
                       "none share": row["share"], "ftbc total": fixed["total"],
                       "ftbc systematic": fixed["systematic"], "ftbc share": fixed["share"]})
    print(f"{card.name}: {len(test)} images ({test_desc}), error at step T={t}; accuracy none "
          f"{figures['methods']['none']['accuracy']:.2f}%, ftbc {figures['methods']['ftbc']['accuracy']:.2f}%")
    print(fmt_table(layers, list(layers[0])))
    for method in ("none", "ftbc"):
        m = figures["methods"][method]
        print(f"{method}: mean over layers, total {m['mean_total']:.4f}, systematic {m['mean_systematic']:.4f} "
              f"({m['mean_systematic'] / m['mean_total']:.1%})")
    path = write_result(f"residual_error-{card.name}", figures, args.out)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
