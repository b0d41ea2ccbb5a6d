"""The ``ftbc`` command line: ``train``, ``evaluate``, ``calibrate``, ``models``, ``import``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

__all__ = ["main"]


class CliError(Exception):
    """An error to report in one line (exit code 2)."""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .calibration import METHODS  # noqa: PLC0415  (imports torch; keep --help light elsewhere)
    from .models import ACTIVATIONS, ARCHITECTURES

    parser = argparse.ArgumentParser(prog="ftbc", description="ANN-to-SNN conversion with Forward Temporal Bias "
                                     "Correction: train, convert, calibrate, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an ANN (QCFS or ReLU) and save it with its card")
    p.add_argument("--arch", required=True, choices=list(ARCHITECTURES))
    p.add_argument("--dataset", required=True, choices=["cifar10", "mnist", "fashion-mnist"])
    p.add_argument("--data-dir", required=True, help="folder with the dataset (.npz or torchvision layout)")
    p.add_argument("--out", required=True, help="output path without suffix, e.g. pretrained/cnn-mnist")
    p.add_argument("--activation", default="qcfs", choices=list(ACTIVATIONS))
    p.add_argument("--levels", type=_positive_int, default=4, help="QCFS quantization levels L")
    p.add_argument("--init-threshold", type=float, default=8.0, help="initial QCFS threshold λ")
    p.add_argument("--epochs", type=_positive_int, default=30)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--cutout", type=int, default=0,
                   help="Cutout augmentation: side in pixels of the square painted with the mean pixel (0 = off; the "
                        "public QCFS code uses 16 on CIFAR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-fast", action="store_true",
                   help="disable channels_last and bfloat16 autocast (autocast is used only with native CPU bf16)")
    p.add_argument("--notes", default="", help="free text for the model card (how and why it was trained so)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster epochs)")
    p.add_argument("--limit", type=_positive_int, help="use only the first N train/test images (smoke tests)")
    p.add_argument("--half", action="store_true", help="store float16 weights (accuracy measured after rounding)")
    p.add_argument("--resume", action="store_true", help="continue from OUT.resume.pt if it exists")
    p.add_argument("--init-from", help="start from this checkpoint's weights (a shipped name or a path; same arch, "
                   "dataset, activation and L) with a new schedule: fine-tuning")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")

    p = sub.add_parser("evaluate", help="accuracy of the ANN and of the SNN with each correction method")
    _add_model_data_args(p)
    p.add_argument("--timesteps", type=_int_list, default=[1, 2, 4, 8, 16, 32], help="e.g. 1,2,4,8")
    p.add_argument("--methods", type=_str_list, default=["none", "ftbc"],
                   help=f"comma-separated: {', '.join(m for m in METHODS if METHODS[m].selectable)}")
    p.add_argument("--limit", type=_positive_int, help="evaluate on the first N test images only")
    p.add_argument("--seeds", type=_positive_int, default=1,
                   help="calibration draws K (seeds SEED..SEED+K-1): accuracy is their mean, with the std beside it")
    p.add_argument("--select", choices=["none", "auto"], default="none",
                   help="auto: choose each method's options (its selection grid, e.g. FTBC's α and batches) by the "
                        "mean accuracy on held-out TRAINING images, never the test split")
    p.add_argument("--val-images", type=_positive_int, default=1000, help="--select auto: held-out training images")
    p.add_argument("--select-max-t", type=_positive_int, default=16,
                   help="--select auto: the held-out accuracy is averaged over t <= this")
    p.add_argument("--biases", help="also evaluate the biases in this file (written by ftbc calibrate), as method "
                   "'file'; refused if fitted for another model, conversion or a shorter T")
    p.add_argument("--json", dest="json_out", help="write the results as JSON here")
    p.add_argument("--csv", dest="csv_out", help="write the table as CSV here")

    p = sub.add_parser("calibrate", help="fit FTBC biases and save them next to the model")
    _add_model_data_args(p)
    p.add_argument("--timesteps", type=_positive_int, default=32, help="T to calibrate for (serves every T' <= T)")
    p.add_argument("--method", default="ftbc", help="a bias-fitting method: "
                   f"{', '.join(m for m in METHODS if METHODS[m].fits_biases)}")
    p.add_argument("--out", help="output file (default: MODEL.METHOD-T<T>.safetensors)")

    sub.add_parser("models", help="list the shipped models and their cards")

    p = sub.add_parser("import", help="import a .pth state_dict written by the public QCFS, COS or FTBC code")
    p.add_argument("src", help="the .pth/.pt file (read with torch.load(weights_only=True): pickled code is refused)")
    p.add_argument("--from", dest="source", default="qcfs", help="the code that wrote it: qcfs (default), cos, ftbc")
    p.add_argument("--arch", required=True, help="its network: vgg16, resnet18, resnet20, resnet34")
    p.add_argument("--dataset", required=True, help="cifar10, cifar100 or imagenet")
    p.add_argument("--levels", type=int, help="QCFS levels L it was trained with (required unless the file says)")
    p.add_argument("--mean", help="input normalisation mean m1,m2,m3 (default: the public code's for the dataset)")
    p.add_argument("--std", help="input normalisation std s1,s2,s3 (default: the public code's for the dataset)")
    p.add_argument("--half", action="store_true", help="store float16 weights (ImageNet VGG-16 needs it)")
    p.add_argument("--out", required=True, help="output path without suffix, e.g. pretrained/qcfs-vgg16-cifar10")
    return parser


def _add_model_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="a shipped model name (see `ftbc models`) or a checkpoint path")
    p.add_argument("--model-code", help="your own architecture instead of --model: package.module:factory (your "
                   "code runs; the weights come from --weights)")
    p.add_argument("--weights", help="with --model-code: the model's state_dict as .safetensors")
    p.add_argument("--dataset", help="with --model-code: the dataset it classifies (cifar10, cifar100, mnist, "
                   "fashion-mnist, imagenet)")
    p.add_argument("--mean", help="with --model-code: normalisation m1,m2,m3 put in front of the model (it then "
                   "takes [0, 1] images)")
    p.add_argument("--std", help="with --model-code: normalisation s1,s2,s3 (with --mean)")
    p.add_argument("--data-dir", help="dataset folder; without it, the bundled sample is used")
    p.add_argument("--alpha", type=float, default=None, help="FTBC step size α (default: the method's)")
    p.add_argument("--calib-batches", type=int, default=None, help="calibration batches (default: the method's)")
    p.add_argument("--calib-batch-size", type=_positive_int, default=None, help="images per calibration batch")
    p.add_argument("--rho", type=int, default=None, help="COS pre-simulation steps ρ")
    p.add_argument("--calib-passes", type=int, default=None, help="passes over the calibration batches")
    p.add_argument("--calib-images", type=_positive_int, default=1024,
                   help="training images the calibration batches are drawn from (class-balanced)")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="one method's own option, e.g. ftbc-layer.alpha=0.1 (wins over the shared flags; repeat)")
    p.add_argument("--v0", default="half", help="initial potential: half (θ/2), zero, or a fraction of θ")
    p.add_argument("--thresholds", default="auto", choices=["auto", "lambda", "max", "percentile"],
                   help="θ: auto (from the activation where it has one, e.g. QCFS λ; else percentile), or from "
                        "activation statistics on the calibration images")
    p.add_argument("--percentile", type=float, default=99.9, help="percentile for --thresholds percentile/auto")
    p.add_argument("--per-channel-thresholds", action="store_true", help="θ per channel from statistics")
    p.add_argument("--batch-size", type=_positive_int, default=200, help="evaluation batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")


def _device(name: str) -> str:
    """``--device``: ``auto`` is the CLI's choice (a GPU when there is one); the core is always told."""
    if name.strip().lower() == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _cmd_train(args: argparse.Namespace) -> None:
    from .train import TrainConfig, train

    cfg = TrainConfig(
        arch=args.arch, dataset=args.dataset, out=args.out, data_dir=args.data_dir, activation=args.activation,
        levels=args.levels, init_threshold=args.init_threshold, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, cutout=args.cutout, seed=args.seed,
        device=_device(args.device),
        fast=not args.no_fast,
        compile=args.compile, notes=args.notes, limit=args.limit, half=args.half, init_from=args.init_from,
        command="ftbc " + shlex.join(args.argv),
    )
    train(cfg, resume=args.resume, progress=sys.stderr.isatty(), log=lambda m: print(m, flush=True))


_SHARED_FLAGS = {"alpha": "--alpha", "batches": "--calib-batches", "batch_size": "--calib-batch-size",
                 "rho": "--rho", "passes": "--calib-passes"}


def _method_options(args: argparse.Namespace, methods: list[str]) -> dict:
    """Shared flags (given to every chosen method that has the option) and ``--option METHOD.KEY=VALUE``.

    A shared flag that none of the chosen methods takes is an error, not silently ignored."""
    from .calibration import METHODS

    values = {"alpha": args.alpha, "batches": args.calib_batches, "batch_size": args.calib_batch_size,
              "rho": args.rho, "passes": args.calib_passes}
    opts: dict = {k: v for k, v in values.items() if v is not None}
    for key in opts:
        if not any(key in METHODS[m].defaults for m in methods if m in METHODS):
            takers = [m for m in METHODS if key in METHODS[m].defaults]
            raise CliError(f"{_SHARED_FLAGS[key]} applies to none of the chosen methods ({', '.join(methods)}); "
                           f"{', '.join(takers)} take it")
    for item in args.option:
        name, dot, rest = item.partition(".")
        key, eq, value = rest.partition("=")
        if not dot or not eq or not key:
            raise CliError(f"--option takes METHOD.KEY=VALUE (e.g. ftbc-layer.alpha=0.1), got {item!r}")
        opts.setdefault(name, {})[key] = None if value.lower() == "none" else value
    opts["seed"] = args.seed
    return opts


def _conversion(args: argparse.Namespace) -> dict:
    v0 = args.v0 if args.v0 in ("half", "zero") else _number(args.v0, "--v0")
    return {"v0": v0, "thresholds": args.thresholds, "percentile": args.percentile,
            "per_channel": args.per_channel_thresholds}


def _number(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CliError(f"{flag} takes half, zero or a number, got {text!r}") from None


def _user_model(args: argparse.Namespace):
    """``(model, card)`` for --model-code, ``(None, None)`` for --model; exactly one of them is required."""
    if (args.model is None) == (args.model_code is None):
        raise CliError("give either --model (a shipped name or a checkpoint) or --model-code package.module:factory")
    if args.model_code is None:
        extra = [f"--{k.replace('_', '-')}" for k in ("weights", "dataset", "mean", "std") if getattr(args, k)]
        if extra:
            raise CliError(f"{', '.join(extra)} only go with --model-code (a checkpoint carries its own card)")
        return None, None
    if args.dataset is None:
        raise CliError("--model-code needs --dataset (the dataset the model classifies)")
    from .user_model import load_user_model

    return load_user_model(args.model_code, args.weights, args.dataset, mean=_float_triple(args.mean, "mean"),
                           std=_float_triple(args.std, "std"))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .experiment import ExperimentConfig, run_experiment

    model, card = _user_model(args)
    methods = list(args.methods) + (["file"] if args.biases else [])
    options = _method_options(args, methods)
    if args.biases:
        options.setdefault("file", {})["path"] = args.biases
    cfg = ExperimentConfig(
        model=args.model or args.model_code, data_dir=args.data_dir, timesteps=max(args.timesteps),
        methods=tuple(methods), limit=args.limit, batch_size=args.batch_size, device=_device(args.device),
        method_options=options, calib_images=args.calib_images, seed=args.seed, seeds=args.seeds,
        select=args.select == "auto", val_images=args.val_images, select_max_t=args.select_max_t,
        **_conversion(args),
    )
    result = run_experiment(cfg, progress=_stderr_progress(), log=lambda m: print(m, file=sys.stderr), model=model,
                            card=card)
    table = result.accuracy_table(args.timesteps)
    print(f"model {result.model_name} on {result.data_description}")
    print(f"ANN accuracy: {result.ann_accuracy:.2f}%")
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    if len(result.seeds) > 1:
        std = result.accuracy_std_table(args.timesteps)
        print(f"std over the {len(result.seeds)} calibration draws (seeds {result.seeds[0]}..{result.seeds[-1]}):")
        print(std.to_string(float_format=lambda v: f"{v:.2f}"))
    from .calibration.base import nonconvergence

    for m in result.methods:
        warning = nonconvergence(result.reports[m].bias_change)
        if warning:
            print(f"warning: {m}: {warning}; --seeds 3 repeats it over 3 draws", file=sys.stderr)
    from . import distributed

    if args.json_out and distributed.is_main():  # under torchrun rank 0 alone writes (the others stay quiet)
        from .checkpoint import atomic_write_bytes

        payload = result.to_json_dict(args.timesteps)
        payload["command"] = "ftbc " + shlex.join(args.argv)
        payload["world_size"] = distributed.world_size()  # processes the images were split over
        atomic_write_bytes(Path(args.json_out), (json.dumps(payload, indent=2) + "\n").encode())
    if args.csv_out and distributed.is_main():
        from .checkpoint import atomic_write_bytes

        atomic_write_bytes(Path(args.csv_out), table.to_csv().encode())


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from .experiment import calibrate_and_save

    model, card = _user_model(args)
    if model is not None and args.out is None:
        raise CliError("--model-code needs --out for the biases file")
    options = _method_options(args, [args.method])
    per_method = {k: v for k, v in options.items() if isinstance(v, dict)}
    if set(per_method) - {args.method}:
        raise CliError(f"--option for {sorted(set(per_method) - {args.method})[0]}, which is not --method {args.method}")
    options = {**{k: v for k, v in options.items() if not isinstance(v, dict)}, **per_method.get(args.method, {})}
    path = calibrate_and_save(model if model is not None else args.model, card=card, data_dir=args.data_dir,
                              timesteps=args.timesteps, method=args.method, options=options,
                              device=_device(args.device), out=args.out, calib_images=args.calib_images,
                              **_conversion(args),
                              progress=_stderr_progress(), log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {path}")


def _cmd_models(_args: argparse.Namespace) -> None:
    from .assets import PRETRAINED_DIR, list_pretrained

    cards = list_pretrained()
    if not cards:
        print(f"no models in {PRETRAINED_DIR}")
    for name, card in cards.items():
        acc = f"{card.ann_test_accuracy:.2f}%" if card.ann_test_accuracy is not None else "?"
        act = f"QCFS L={card.levels}" if card.activation == "qcfs" else card.activation
        print(f"{name:28s} {card.arch:9s} {act:11s} {card.dataset:14s} ANN test {acc}  ({card.epochs} epochs)")


def _float_triple(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"--{name} takes comma-separated numbers, got {text!r}") from None


def _cmd_import(args: argparse.Namespace) -> None:
    from .importer import import_checkpoint

    path = import_checkpoint(args.src, source=args.source, arch=args.arch, dataset=args.dataset, levels=args.levels,
                             mean=_float_triple(args.mean, "mean"), std=_float_triple(args.std, "std"),
                             out=args.out, half=args.half, command="ftbc " + shlex.join(args.argv))
    from .checkpoint import read_card

    card = read_card(path)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    print(f"{card.name}: {card.arch} QCFS L={card.levels}, {card.dataset} ({card.num_classes} classes, "
          f"{card.in_channels}x{card.image_size}x{card.image_size} images), mean {[round(m, 4) for m in card.mean]}, "
          f"std {[round(s, 4) for s in card.std]}")
    print(f"from {card.extra['source_file']} (sha256 {card.extra['source_sha256'][:16]}...), "
          f"{card.extra['source_code']}")


def _stderr_progress():
    last = {"msg": None}

    def report(fraction: float, message: str) -> None:
        if message != last["msg"] and sys.stderr.isatty():
            print(f"\r[{fraction * 100:5.1f}%] {message}", end="", file=sys.stderr, flush=True)
        last["msg"] = message

    return report


_DISTRIBUTED_COMMANDS = ("evaluate", "calibrate")


def _check_before_launch(args: argparse.Namespace, world: int) -> None:
    """Under torchrun: the option checks of ``evaluate``/``calibrate`` before the process group starts, so a bad
    option stops every process at once (the same checks run again inside the command)."""
    from . import distributed
    from .calibration import get_method
    from .calibration.base import resolve_options
    from .snn import check_timesteps

    if args.command == "evaluate":
        methods = list(args.methods) + (["file"] if args.biases else [])
        options = _method_options(args, methods)
        if args.biases:
            options.setdefault("file", {})["path"] = args.biases
        given = resolve_options(methods, options)
        resolved = {m: get_method(m).options(given[m]) for m in methods}
        check_timesteps(max(args.timesteps))
    else:
        chosen = get_method(args.method)
        options = _method_options(args, [args.method])
        flat = {k: v for k, v in options.items() if not isinstance(v, dict)}
        resolved = {args.method: chosen.options({**flat, **options.get(args.method, {})})}
        check_timesteps(args.timesteps)
    _conversion(args)
    distributed.check_methods(list(resolved))
    for opts in resolved.values():
        if "batch_size" in opts:
            distributed.check_calibration_batch(min(int(opts["batch_size"]), args.calib_images), world)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ftbc`` console script; returns the exit code.

    Under ``torchrun --nproc_per_node=N -m ftbc_core evaluate|calibrate ...`` (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK`` in the environment) the options are checked first, then the process group starts (gloo on
    the CPU, NCCL with ``--device cuda``: process r on ``cuda:LOCAL_RANK``) and is destroyed at the end; rank 0
    alone prints and writes files. Any error is one line ``ftbc CMD: error: rank R: ...`` and a non-zero exit.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    import contextlib
    import os

    import torch

    from . import distributed
    from .checkpoint import CheckpointError
    from .data import DataError

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    handlers = {"train": _cmd_train, "evaluate": _cmd_evaluate, "calibrate": _cmd_calibrate, "models": _cmd_models,
                "import": _cmd_import}
    where = ""
    try:
        launch = distributed.launch_info()
        if launch is None:
            handlers[args.command](args)
        else:
            where = f"rank {launch.rank}: "
            if args.command not in _DISTRIBUTED_COMMANDS:
                if launch.world_size > 1:
                    raise CliError(f"only {' and '.join(_DISTRIBUTED_COMMANDS)} run under torchrun; run "
                                   f"`ftbc {args.command}` as one process")
                handlers[args.command](args)
                return 0
            _check_before_launch(args, launch.world_size)
            args.device = distributed.rank_device(_device(args.device), launch)
            with contextlib.ExitStack() as stack:
                stack.enter_context(distributed.process_group(args.device, launch))
                if launch.rank != 0:  # the others stay quiet: rank 0 prints (errors still reach stderr below)
                    devnull = stack.enter_context(open(os.devnull, "w"))
                    stack.enter_context(contextlib.redirect_stdout(devnull))
                    stack.enter_context(contextlib.redirect_stderr(devnull))
                handlers[args.command](args)
    except (CheckpointError, DataError, CliError, ValueError, OSError) as err:  # OSError: e.g. an unwritable --out
        print(f"ftbc {args.command}: error: {where}{err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ftbc {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  under torchrun: one line and an exit, so the others stop too
        if not where:
            raise
        kind = "" if isinstance(err, distributed.DistributedError) else f"{type(err).__name__}: "
        print(f"ftbc {args.command}: error: {where}{kind}{err}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
