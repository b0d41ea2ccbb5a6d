"""What FTBC calibration costs, against one ANN + one SNN forward and against the reference code's schedule.

    OMP_NUM_THREADS=1 python benchmarks/calibration_cost.py --model resnet20-cifar10 vgg16-cifar10 \
        --data-dir ../shared/data

For each model and T:
1. ``ftbc_core.calibration.fit_biases(batches=N)`` time / N (one calibration batch), divided by the time of one
   ANN forward plus one ``snn.simulate(x, T)`` on a batch of the same size, timed round-robin with the fit.
   Target: <= 1.5. For ``--mode carry`` / ``root`` (the root search of ``ftbc`` / ``ftbc-root``) also the same
   fit with the search's bookkeeping in torch, a GPU's path and the CPU's before it moved to numpy.
2. The public reference code's schedule, implemented here with our modules (:func:`reference_fit_biases`):
   for each spiking layer l in forward order, re-run the ANN for the targets and the SNN from the input up to and
   including layer l (already-calibrated layers keep their biases), fitting layer l's biases step by step. That is
   O(L^2 T) work per batch instead of O(L T). Same algorithm, different schedule: it must reach the same biases,
   which is checked on a small case (``--verify-*``) before it is timed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_data_args, add_model_args, fmt_table, load_ann, load_calib, load_eval,  # noqa: E402
                    model_specs, set_threads, time_call, time_interleaved, write_result)

from ftbc_core.calibration import ann_channel_means, fit_biases  # noqa: E402
from ftbc_core.calibration.base import copy_snn  # noqa: E402
from ftbc_core.calibration import ftbc as ftbc_module  # noqa: E402
from ftbc_core.calibration.ftbc import MODES, FtbcRule  # noqa: E402
from ftbc_core.snn import SpikingNetwork, check_timesteps, to_snn  # noqa: E402

NAME = "calibration_cost"
ROOT_MODES = ("carry", "root")  # the modes with the root search (ftbc, ftbc-root)


class _StopForward(Exception):
    """Raised by a forward hook to end a simulation after a given layer."""


def _stop_hook(_module, _inputs, _output):
    raise _StopForward


def calibration_batches(n_images: int, batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """The image indices of each calibration batch, drawn exactly as ``fit_biases`` draws them."""
    order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))
    batch_size = min(batch_size, n_images)
    return [order.roll(-i * batch_size)[:batch_size] for i in range(batches)]


@torch.no_grad()
def reference_fit_biases(snn: SpikingNetwork, ann: nn.Module, images: torch.Tensor, timesteps: int, *,
                         alpha: float = 0.1, batches: int = 4, batch_size: int = 64, seed: int = 0) -> SpikingNetwork:
    """FTBC α-iteration with the reference code's layer-by-layer re-run schedule (O(L^2 T) per batch).

    Per batch and per layer l: one ANN forward (targets), one SNN forward stopped after layer l with the
    :class:`FtbcRule` on layer l only; layers before l run with the biases they already got on this batch.
    Returns a calibrated copy of ``snn``.
    """
    timesteps = check_timesteps(timesteps)
    new = copy_snn(snn)
    neurons, names = new.neurons, new.layer_names
    thetas = {n: neuron.theta for n, neuron in zip(names, neurons)}
    for neuron in neurons:  # fresh biases, sized [T, C] when the first targets arrive
        neuron.bias = torch.zeros(timesteps, 0)
    for idx in calibration_batches(images.shape[0], batches, batch_size, seed):
        x = images[idx]
        for name, neuron in zip(names, neurons):
            targets = ann_channel_means(ann, x, thetas)  # the reference re-runs the ANN for every layer
            if neuron.bias.shape != (timesteps, targets[name].numel()):
                neuron.bias = torch.zeros(timesteps, targets[name].numel())
            handle = neuron.register_forward_hook(_stop_hook)
            try:
                new.simulate(x, timesteps, rules={neuron: FtbcRule(targets[name], alpha)})
            except _StopForward:
                pass
            finally:
                handle.remove()
    return new


def bias_difference(a: SpikingNetwork, b: SpikingNetwork) -> tuple[float, float]:
    """``(max |a - b|, max |a|)`` over every layer's ``[T, C]`` biases."""
    diff = max(float((x.bias - y.bias).abs().max()) for x, y in zip(a.neurons, b.neurons))
    scale = max(float(x.bias.abs().max()) for x in a.neurons)
    return diff, scale


@torch.no_grad()
def accuracy_at(net: SpikingNetwork, x: torch.Tensor, y: torch.Tensor, timesteps: int, batch_size: int = 100) -> float:
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += int((net(x[i : i + batch_size], timesteps)[-1].argmax(-1) == y[i : i + batch_size]).sum())
    return 100.0 * correct / x.shape[0]


def verify_reference(snn, ann, calib, x_eval, y_eval, timesteps: int, alpha: float, batches: int,
                     batch_size: int, atol: float) -> dict:
    """Both schedules on a small case: their biases and accuracies must agree (``atol`` on the biases)."""
    ours, _, _ = fit_biases(snn, ann, calib, timesteps, alpha=alpha, batches=batches, batch_size=batch_size)
    ref = reference_fit_biases(snn, ann, calib, timesteps, alpha=alpha, batches=batches, batch_size=batch_size)
    diff, scale = bias_difference(ours, ref)
    acc_ours, acc_ref = accuracy_at(ours, x_eval, y_eval, timesteps), accuracy_at(ref, x_eval, y_eval, timesteps)
    return {"timesteps": timesteps, "batches": batches, "batch_size": batch_size, "alpha": alpha,
            "max_abs_bias_diff": diff, "max_abs_bias": scale, "atol": atol, "biases_match": diff <= atol,
            "eval_images": int(x_eval.shape[0]), "accuracy_ours": acc_ours, "accuracy_reference": acc_ref}


def measure_model(spec, args, calib, x_eval, y_eval) -> list[dict]:
    """Every figure for one model, one row per T."""
    ann = load_ann(spec, calib)
    snn = to_snn(ann, images=calib)  # QCFS: θ = λ; ReLU: 99.9th percentile on the calibration images
    batch = calib[: args.batch_size]
    rows = []
    reference = args.mode == "alpha"  # the reference schedule is the α-rule's: compared for that mode only
    for t in args.timesteps:
        verify = verify_reference(snn, ann, calib, x_eval[: args.verify_images], y_eval[: args.verify_images],
                                  min(t, args.verify_timesteps), args.alpha, args.verify_batches,
                                  args.verify_batch_size, args.atol) if reference else None

        def forward_pair() -> None:
            with torch.no_grad():
                ann(batch)
                snn.simulate(batch, t)

        def ours_fit() -> None:
            fit_biases(snn, ann, calib, t, alpha=args.alpha, batches=args.batches, batch_size=args.batch_size,
                       mode=args.mode)

        def reference_fit() -> None:
            reference_fit_biases(snn, ann, calib, t, alpha=args.alpha, batches=args.reference_batches,
                                 batch_size=args.batch_size)

        def torch_search_fit() -> None:  # the root search's bookkeeping in torch (a GPU's path) on the CPU
            original = ftbc_module.search_namespace
            ftbc_module.search_namespace = lambda like: torch
            try:
                ours_fit()
            finally:
                ftbc_module.search_namespace = original

        # round-robin, so that the shared machine's drift hits the forward and the fits alike
        fns = {"pair": forward_pair, "ours": ours_fit}
        if args.mode in ROOT_MODES:
            fns["torch_search"] = torch_search_fit
        times, _ = time_interleaved(fns, repeats=args.repeats, warmup=min(args.warmup, 1))
        t_pair, t_ours = times["pair"], times["ours"]
        per_ours = t_ours.median / args.batches
        row = {"model": spec.label, "T": t, "mode": args.mode, "batch": int(batch.shape[0]),
               "layers": len(snn.layer_names), "ann+snn s": t_pair.median, "ftbc s/batch": per_ours,
               "ftbc / (ann+snn)": per_ours / t_pair.median,
               "timings": {"ann_plus_snn": t_pair.to_dict(), "ftbc_fit": t_ours.to_dict()}}
        line = (f"{spec.label} T={t} mode {args.mode}: FTBC {per_ours:.3f} s/batch = {row['ftbc / (ann+snn)']:.2f} x "
                f"(ANN + SNN forward {t_pair.median:.3f} s; target <= 1.5)")
        if "torch_search" in times:
            per_torch = times["torch_search"].median / args.batches
            row.update({"torch-search s/batch": per_torch, "torch-search / ours": per_torch / per_ours})
            row["timings"]["torch_search_fit"] = times["torch_search"].to_dict()
            line += (f"; with the search's bookkeeping in torch (before, and a GPU's path) {per_torch:.3f} s/batch "
                     f"= {per_torch / per_ours:.2f} x ours")
        if reference:
            start = time.perf_counter()
            t_ref, _ = time_call(reference_fit, repeats=args.reference_repeats, warmup=0)
            per_ref = t_ref.median / args.reference_batches
            row.update({"reference s/batch": per_ref, "reference / ftbc": per_ref / per_ours,
                        "verify max abs Δb": verify["max_abs_bias_diff"], "verify acc ours": verify["accuracy_ours"],
                        "verify acc ref": verify["accuracy_reference"], "verification": verify,
                        "reference_wall_s": time.perf_counter() - start})
            row["timings"]["reference_fit"] = t_ref.to_dict()
            line += (f"; reference schedule {per_ref:.3f} s/batch = {row['reference / ftbc']:.1f} x slower; same "
                     f"biases: max |Δb| {verify['max_abs_bias_diff']:.2e} (|b| up to {verify['max_abs_bias']:.2e}), "
                     f"accuracy {verify['accuracy_ours']:.2f}% vs {verify['accuracy_reference']:.2f}% on "
                     f"{verify['eval_images']} images at T={verify['timesteps']}")
        rows.append(row)
        print(line, flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, multiple=True, default_arch=["resnet20", "vgg16"])
    add_data_args(p, images=256, timesteps=[8, 32])
    p.add_argument("--batch-size", type=int, default=64, help="calibration batch size")
    p.add_argument("--batches", type=int, default=4, help="calibration batches of the timed FTBC fit")
    p.add_argument("--alpha", type=float, default=0.1, help="FTBC step size")
    p.add_argument("--mode", default="alpha", choices=MODES,
                   help="fit_biases mode: alpha (ftbc-alpha, compared with the reference schedule), carry (ftbc, "
                        "the default method: --alpha 0.5), root (ftbc-root), exact (ftbc-exact)")
    p.add_argument("--calib-images", type=int, default=512, help="training images to draw batches from")
    p.add_argument("--reference-batches", type=int, default=1, help="batches of the timed reference-schedule fit")
    p.add_argument("--reference-repeats", type=int, default=1, help="timed repeats of the (slow) reference fit")
    p.add_argument("--verify-batches", type=int, default=2, help="batches of the equality check")
    p.add_argument("--verify-batch-size", type=int, default=16, help="batch size of the equality check")
    p.add_argument("--verify-timesteps", type=int, default=8, help="T of the equality check (capped at T)")
    p.add_argument("--verify-images", type=int, default=256, help="evaluation images of the equality check")
    p.add_argument("--atol", type=float, default=1e-5, help="allowed max |bias difference| of the two schedules")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    rows = []
    for spec in model_specs(args):
        calib, calib_desc = load_calib(spec.dataset, args.data_dir, args.calib_images, args.seed)
        x_eval, y_eval, eval_desc = load_eval(spec.dataset, args.data_dir, args.images)
        print(f"{spec.label}: calibration from {calib_desc}; equality check on {eval_desc}", flush=True)
        rows += measure_model(spec, args, calib, x_eval, y_eval)
    cols = ["model", "T", "mode", "batch", "layers", "ann+snn s", "ftbc s/batch", "ftbc / (ann+snn)"]
    if args.mode in ROOT_MODES:
        cols += ["torch-search s/batch", "torch-search / ours"]
    if args.mode == "alpha":
        cols += ["reference s/batch", "reference / ftbc", "verify max abs Δb", "verify acc ours", "verify acc ref"]
    print(f"\n{args.threads} thread(s), median of {args.repeats} (reference: {args.reference_repeats}):")
    print(fmt_table(rows, cols))
    failed = [r for r in rows if "verification" in r and not r["verification"]["biases_match"]]
    if failed:
        print(f"WARNING: the two schedules disagree beyond atol={args.atol} for "
              + ", ".join(f"{r['model']} T={r['T']}" for r in failed))
    figures = {"rows": rows, "options": {k: v for k, v in vars(args).items() if not k.startswith("_")}}
    tag = "-".join(s.label for s in model_specs(args)) + ("" if args.mode == "alpha" else f"-{args.mode}")
    path = write_result(f"{NAME}-{tag}", figures, args.out)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
