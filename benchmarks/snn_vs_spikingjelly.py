"""Our SNN simulator against SpikingJelly's ann2snn on the same converted ReLU network.

    OMP_NUM_THREADS=1 python benchmarks/snn_vs_spikingjelly.py --model resnet20-cifar10-relu --data-dir ../shared/data

What it does:
1. Converts the ANN with SpikingJelly (``ann2snn.Converter(RateCodingRecipe(loader, mode))``: Conv-BN folding,
   layer-wise thresholds θ from activation statistics, IF neurons with threshold 1, reset by subtraction
   (``v_reset=None``), v0 = 0, between ``VoltageScaler(1/θ)`` and ``VoltageScaler(θ)``).
2. Builds ours from the same numbers: ``to_snn(ann, thresholds={name: θ}, v0="zero")``, which folds each
   Conv-BN pair with ``torch.nn.utils.fusion.fuse_conv_bn_eval`` as SpikingJelly does, with the θ read from
   SpikingJelly's scalers, matched to our activation names in forward order.
3. Checks that both compute the same per-step running-mean logits ``[T, B, K]`` (float32 and float64).
4. Times both on the evaluation images at each T: ours (``snn(x, T)``), SpikingJelly single-step (reset, feed the
   image T times) and multi-step (``functional.set_step_mode(net, "m")``, input ``[T, B, ...]``), and reports
   images/s, accuracy and ours / (faster SpikingJelly mode).

SpikingJelly's FX step-mode adapter rejects the division in our models' input normalisation, so SpikingJelly gets
the ANN without its ``normalize`` module and normalised images (normalised once per batch inside its timed
function, as ours does once per batch inside the network).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_data_args, add_model_args, fmt_table, load_ann, load_calib, load_eval,  # noqa: E402
                    model_specs, set_threads, time_interleaved, write_result)

from ftbc_core.convert import activation_sites  # noqa: E402
from ftbc_core.models import Normalize  # noqa: E402
from ftbc_core.snn import DEFAULT_MAX_BATCH_STEPS, SpikingNetwork, running_mean, to_snn  # noqa: E402

NAME = "snn_vs_spikingjelly"


# -- building the two networks -----------------------------------------------------------------------------------
def split_normalize(ann: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(copy of ann without its input Normalize, the Normalize)`` (see the module docstring)."""
    if not isinstance(getattr(ann, "normalize", None), Normalize):
        return copy.deepcopy(ann), nn.Identity()
    body = copy.deepcopy(ann)
    norm = body.normalize
    body.normalize = nn.Identity()
    return body, norm


def convert_spikingjelly(ann: nn.Module, calib: torch.Tensor, mode: str,
                         batch_size: int) -> tuple[nn.Module, nn.Module]:
    """SpikingJelly's conversion of ``ann`` (statistics on ``calib``); returns ``(sj_net, input normalisation)``."""
    from spikingjelly.activation_based import ann2snn
    from spikingjelly.activation_based.ann2snn.recipes import RateCodingRecipe

    body, norm = split_normalize(ann)
    with torch.no_grad():
        loader = [norm(calib[i : i + batch_size]) for i in range(0, calib.shape[0], batch_size)]
    net = ann2snn.Converter(RateCodingRecipe(loader, mode=mode)).convert(body)
    return net.eval(), norm


def spikingjelly_thresholds(sj_net: nn.Module, ann: nn.Module) -> dict[str, torch.Tensor]:
    """θ of every SpikingJelly IF layer (its ``scaler1`` scale), keyed by our activation names.

    SpikingJelly names the layer that replaced the k-th ReLU under module ``P`` ``P.spiking_k``; the pairing is by
    forward order (FX graph order for SpikingJelly, registration order for us) and checked on the parent name.
    """
    from spikingjelly.activation_based import neuron as sj_neuron

    sj_layers = [n.target.rpartition(".")[0] for n in sj_net.graph.nodes
                 if n.op == "call_module" and isinstance(sj_net.get_submodule(n.target), sj_neuron.IFNode)]
    ours = [site.name for site in activation_sites(ann)[1]]
    if len(sj_layers) != len(ours):
        raise RuntimeError(f"SpikingJelly made {len(sj_layers)} IF layers, our model has {len(ours)} activations")
    thresholds = {}
    for sj_name, name in zip(sj_layers, ours):
        if sj_name.rpartition(".")[0] != name.rpartition(".")[0]:
            raise RuntimeError(f"layer pairing broke: SpikingJelly {sj_name!r} vs ours {name!r}")
        theta = sj_net.get_submodule(sj_name + ".scaler1").scale.detach().float().reshape(-1).clone()
        inv = sj_net.get_submodule(sj_name + ".scaler0").scale.detach().double().reshape(-1)
        if not torch.allclose(inv * theta.double(), torch.ones_like(inv), rtol=1e-6):
            raise RuntimeError(f"{sj_name}: scaler0 is not 1/θ (the IF threshold is not 1)")
        thresholds[name] = theta
    if any(isinstance(m, nn.BatchNorm2d) for m in sj_net.modules()):
        raise RuntimeError("SpikingJelly left a BatchNorm2d unfolded; the fold of ours would not match")
    return thresholds


def build_pair(ann: nn.Module, calib: torch.Tensor, mode: str, batch_size: int,
               max_batch_steps: int = DEFAULT_MAX_BATCH_STEPS):
    """``(sj_net, sj_normalize, ours folded, ours unfolded, thresholds)``: the same network twice.

    ``max_batch_steps`` is ours' memory bound (images x steps per simulated chunk; default: ``to_snn``'s).
    """
    sj_net, norm = convert_spikingjelly(ann, calib, mode, batch_size)
    thresholds = spikingjelly_thresholds(sj_net, ann)
    ours = to_snn(ann, thresholds=thresholds, v0="zero", max_batch_steps=max_batch_steps)  # folds BN
    ours_unfolded = to_snn(ann, thresholds=thresholds, v0="zero", max_batch_steps=max_batch_steps, fold_bn=False)
    return sj_net, norm, ours, ours_unfolded, thresholds


# -- running them -------------------------------------------------------------------------------------------------
@torch.no_grad()
def run_sj_single(net: nn.Module, norm: nn.Module, x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """SpikingJelly single-step: reset, feed the image T times; running mean of the outputs ``[T, B, K]``."""
    from spikingjelly.activation_based import functional

    functional.reset_net(net)
    xn = norm(x)
    outs = []
    total = None
    for t in range(timesteps):
        y = net(xn)
        total = y if total is None else total + y
        outs.append(total / (t + 1))
    functional.reset_net(net)
    return torch.stack(outs)


@torch.no_grad()
def run_sj_multi(net: nn.Module, norm: nn.Module, x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """SpikingJelly multi-step (``net`` already in step mode ``m``): input ``[T, B, ...]`` in one call."""
    from spikingjelly.activation_based import functional

    functional.reset_net(net)
    xn = norm(x)
    out = net(xn.unsqueeze(0).expand(timesteps, *xn.shape))
    functional.reset_net(net)
    return running_mean(out)


@torch.no_grad()
def run_ours(net: SpikingNetwork, x: torch.Tensor, timesteps: int) -> torch.Tensor:
    return net(x, timesteps)


def multi_step_copy(sj_net: nn.Module) -> nn.Module | None:
    """A copy of the SpikingJelly net in multi-step mode, or None if this SpikingJelly cannot do it."""
    from spikingjelly.activation_based import functional

    try:
        net = copy.deepcopy(sj_net)
        functional.set_step_mode(net, "m")
        return net
    except Exception as err:  # reported, not fatal
        print(f"SpikingJelly multi-step mode unavailable: {err}", file=sys.stderr)
        return None


def compare_outputs(a: torch.Tensor, b: torch.Tensor, rtol: float) -> dict[str, float]:
    """How close two running-mean outputs ``[T, B, K]`` are; "rows" are (step, image) pairs."""
    a64, b64 = a.double(), b.double()
    diff = (a64 - b64).abs()
    scale = b64.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)  # per-row logit scale
    rel = (diff / scale).amax(dim=-1)  # [T, B]
    return {
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(rel.max()),
        "median_rel_diff": float(rel.median()),
        "rows_within_rtol": float((rel <= rtol).double().mean()),
        "rtol": rtol,
        "same_prediction": float((a.argmax(-1) == b.argmax(-1)).double().mean()),
    }


def exact_inverse_scales(sj_net: nn.Module) -> None:
    """Set every ``scaler0`` to 1/θ computed in the net's dtype (SpikingJelly stores 1/θ rounded to float32,
    which moves its effective threshold by up to ~6e-8 relative even when the net runs in float64)."""
    for name, module in sj_net.named_modules():
        if name.endswith(".scaler1"):
            scaler0 = sj_net.get_submodule(name[: -len("scaler1")] + "scaler0")
            scaler0.scale = 1.0 / module.scale


def check_equivalence(sj_net, sj_multi, norm, ours, x: torch.Tensor, timesteps: int, rtol: float) -> dict:
    """Per-step logits of ours vs SpikingJelly on ``x`` in float32, and again in float64 with SpikingJelly's
    1/θ recomputed exactly (then the only difference left is float64 rounding, far too small to flip a spike)."""
    result = {"images": int(x.shape[0]), "timesteps": timesteps}
    ref = run_ours(ours, x, timesteps)
    result["float32_single"] = compare_outputs(ref, run_sj_single(sj_net, norm, x, timesteps), rtol)
    if sj_multi is not None:
        result["float32_multi"] = compare_outputs(ref, run_sj_multi(sj_multi, norm, x, timesteps), rtol)
    try:
        sj64, norm64 = copy.deepcopy(sj_net).double(), copy.deepcopy(norm).double()
        ours64 = copy.deepcopy(ours).double()
        exact_inverse_scales(sj64)
        ref64 = run_ours(ours64, x.double(), timesteps)
        result["float64_single"] = compare_outputs(ref64, run_sj_single(sj64, norm64, x.double(), timesteps), rtol)
    except Exception as err:  # SpikingJelly may not run float64 on this device; say so
        result["float64_single"] = {"error": f"{type(err).__name__}: {err}"}
    return result


def throughput(runners: dict, x: torch.Tensor, y: torch.Tensor, timesteps: int, batch_size: int, repeats: int,
               warmup: int) -> dict[str, dict]:
    """Images/s of each ``fn(batch, T) -> [T, B, K]`` over all images in batches of ``batch_size``, timed
    round-robin (one whole pass per simulator per repeat), and each one's accuracy at T (percent)."""
    def whole_pass(fn) -> float:
        correct = 0
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                out = fn(x[i : i + batch_size], timesteps)
                correct += int((out[-1].argmax(-1) == y[i : i + batch_size]).sum())
        return 100.0 * correct / x.shape[0]

    with torch.no_grad():
        for fn in runners.values():  # warm-up: one batch each
            for _ in range(warmup):
                fn(x[:batch_size], timesteps)
    timings, accuracy = time_interleaved({n: (lambda fn=fn: whole_pass(fn)) for n, fn in runners.items()},
                                         repeats=repeats, warmup=0)
    return {n: {"images_per_s": x.shape[0] / timings[n].median, "seconds": timings[n].to_dict(),
                "accuracy": accuracy[n]} for n in runners}


# -- command --------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, multiple=False, default_arch="resnet20", default_activation="relu")
    add_data_args(p, images=1024, timesteps=[8, 32])
    p.add_argument("--batch-size", type=int, default=64, help="images per forward call, for every simulator")
    p.add_argument("--calib-images", type=int, default=512, help="training images for SpikingJelly's statistics")
    p.add_argument("--sj-mode", default="99.9%", help="SpikingJelly VoltageHook mode: 'max', '99.9%%', ...")
    p.add_argument("--check-images", type=int, default=64, help="images for the equivalence check")
    p.add_argument("--rtol", type=float, default=1e-4, help="tolerance reported for the equivalence check")
    p.add_argument("--no-unfolded", action="store_true", help="skip timing ours without the BN fold")
    p.add_argument("--ours-max-batch-steps", type=int, default=DEFAULT_MAX_BATCH_STEPS,
                   help=f"ours' chunk bound, images x steps per simulated chunk (to_snn's default: {DEFAULT_MAX_BATCH_STEPS})")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    spec = model_specs(args)[0]
    dataset = spec.dataset
    calib, calib_desc = load_calib(dataset, args.data_dir, args.calib_images, args.seed)
    x, y, eval_desc = load_eval(dataset, args.data_dir, args.images)
    ann = load_ann(spec, calib)
    if any(not isinstance(site.module, nn.ReLU) for site in activation_sites(ann)[1]):
        raise SystemExit("SpikingJelly's RateCodingRecipe converts ReLU networks: use a ReLU model "
                         "(e.g. --model resnet20-cifar10-relu, or --random-arch resnet20 --activation relu)")
    t_max = max(args.timesteps)
    sj_net, norm, ours, ours_unfolded, thresholds = build_pair(ann, calib, args.sj_mode, args.batch_size,
                                                               args.ours_max_batch_steps)
    sj_multi = multi_step_copy(sj_net)
    print(f"model {spec.label}; evaluation: {eval_desc}; SpikingJelly statistics ({args.sj_mode}): {calib_desc}")
    print(f"{len(thresholds)} IF layers, θ from SpikingJelly: "
          + ", ".join(f"{float(t):.3g}" for t in list(thresholds.values())[:6]) + ", ...")

    eq = check_equivalence(sj_net, sj_multi, norm, ours, x[: args.check_images], t_max, args.rtol)
    print(f"\nSame network? per-step running-mean logits on {eq['images']} images, T = 1..{t_max} "
          "(rel = max |diff| / max |logit| per step and image):")
    for key in ("float32_single", "float32_multi", "float64_single"):
        if key in eq:
            c = eq[key]
            if "error" in c:
                print(f"  {key:15s} not run: {c['error']}")
                continue
            print(f"  {key:15s} max rel {c['max_rel_diff']:.2e}  median rel {c['median_rel_diff']:.2e}  "
                  f"rows within {args.rtol:g}: {100 * c['rows_within_rtol']:.2f}%  "
                  f"same prediction: {100 * c['same_prediction']:.2f}%")

    with torch.no_grad():
        ann_acc = float((ann(x).argmax(1) == y).double().mean() * 100)
    runners = {
        "ours": lambda xb, t: run_ours(ours, xb, t),
        "spikingjelly-single-step": lambda xb, t: run_sj_single(sj_net, norm, xb, t),
    }
    if sj_multi is not None:
        runners["spikingjelly-multi-step"] = lambda xb, t: run_sj_multi(sj_multi, norm, xb, t)
    if not args.no_unfolded:
        runners["ours-bn-unfolded"] = lambda xb, t: run_ours(ours_unfolded, xb, t)
    rows, speed = [], {}
    for t in args.timesteps:
        speed[t] = throughput(runners, x, y, t, args.batch_size, args.repeats, args.warmup)
        sj_names = [n for n in speed[t] if n.startswith("spikingjelly")]
        best_sj = max(sj_names, key=lambda n: speed[t][n]["images_per_s"])
        ratio = speed[t]["ours"]["images_per_s"] / speed[t][best_sj]["images_per_s"]
        speed[t]["ratio_ours_over_best_spikingjelly"] = ratio
        speed[t]["best_spikingjelly"] = best_sj
        for name in runners:
            rows.append({"T": t, "simulator": name, "images/s": speed[t][name]["images_per_s"],
                         "median s": speed[t][name]["seconds"]["median"],
                         "accuracy %": speed[t][name]["accuracy"],
                         "ours / this": speed[t]["ours"]["images_per_s"] / speed[t][name]["images_per_s"]})
    print(f"\nThroughput on {x.shape[0]} images, batch {args.batch_size}, {args.threads} thread(s), "
          f"median of {args.repeats} (ANN accuracy {ann_acc:.2f}%):")
    print(fmt_table(rows, ["T", "simulator", "images/s", "median s", "accuracy %", "ours / this"]))
    for t in args.timesteps:
        best = speed[t]["best_spikingjelly"]
        print(f"T={t}: ours / {best} = {speed[t]['ratio_ours_over_best_spikingjelly']:.2f}x (target >= 1.5x); "
              f"accuracy ours {speed[t]['ours']['accuracy']:.2f}% vs {speed[t][best]['accuracy']:.2f}%")
    figures = {"model": spec.label, "evaluation_images": eval_desc, "calibration_images": calib_desc,
               "sj_mode": args.sj_mode, "batch_size": args.batch_size,
               "ours_max_batch_steps": args.ours_max_batch_steps, "ann_accuracy": ann_acc,
               "thresholds": {k: v.tolist() for k, v in thresholds.items()}, "equivalence": eq,
               "throughput": {str(t): v for t, v in speed.items()}, "table": rows}
    path = write_result(f"{NAME}-{spec.label}", figures, args.out)
    print(f"\nwrote {path}")
    return figures


if __name__ == "__main__":
    main()
