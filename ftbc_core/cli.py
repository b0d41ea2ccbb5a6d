"""The ``ftbc`` command line: ``train``, ``evaluate``, ``calibrate``, ``models``."""

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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-fast", action="store_true",
                   help="disable channels_last and bfloat16 autocast (autocast is used only with native CPU bf16)")
    p.add_argument("--notes", default="", help="free text for the model card (how and why it was trained so)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster epochs)")
    p.add_argument("--limit", type=_positive_int, help="use only the first N train/test images (smoke tests)")
    p.add_argument("--half", action="store_true", help="store float16 weights (accuracy measured after rounding)")
    p.add_argument("--resume", action="store_true", help="continue from OUT.resume.pt if it exists")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")

    p = sub.add_parser("evaluate", help="accuracy of the ANN and of the SNN with each correction method")
    _add_model_data_args(p)
    p.add_argument("--timesteps", type=_int_list, default=[1, 2, 4, 8, 16, 32], help="e.g. 1,2,4,8")
    p.add_argument("--methods", type=_str_list, default=["none", "ftbc"],
                   help=f"comma-separated: {', '.join(METHODS)}")
    p.add_argument("--limit", type=_positive_int, help="evaluate on the first N test images only")
    p.add_argument("--json", dest="json_out", help="write the results as JSON here")
    p.add_argument("--csv", dest="csv_out", help="write the table as CSV here")

    p = sub.add_parser("calibrate", help="fit FTBC biases and save them next to the model")
    _add_model_data_args(p)
    p.add_argument("--timesteps", type=_positive_int, default=32, help="T to calibrate for (serves every T' <= T)")
    p.add_argument("--method", default="ftbc", help="a bias-fitting method: ftbc, ftbc-exact, ftbc-layer")
    p.add_argument("--out", help="output file (default: MODEL.METHOD-T<T>.safetensors)")

    sub.add_parser("models", help="list the shipped models and their cards")
    return parser


def _add_model_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a shipped model name (see `ftbc models`) or a checkpoint path")
    p.add_argument("--data-dir", help="dataset folder; without it, the bundled sample is used")
    p.add_argument("--alpha", type=float, default=None, help="FTBC step size α (default: the method's)")
    p.add_argument("--calib-batches", type=int, default=None, help="calibration batches (default: the method's)")
    p.add_argument("--calib-batch-size", type=_positive_int, default=None, help="images per calibration batch")
    p.add_argument("--rho", type=int, default=None, help="COS pre-simulation steps ρ")
    p.add_argument("--batch-size", type=_positive_int, default=200, help="evaluation batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")


def _cmd_train(args: argparse.Namespace) -> None:
    from .train import TrainConfig, train

    cfg = TrainConfig(
        arch=args.arch, dataset=args.dataset, out=args.out, data_dir=args.data_dir, activation=args.activation,
        levels=args.levels, init_threshold=args.init_threshold, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, device=args.device, fast=not args.no_fast,
        compile=args.compile, notes=args.notes, limit=args.limit, half=args.half,
        command="ftbc " + shlex.join(args.argv),
    )
    train(cfg, resume=args.resume, progress=sys.stderr.isatty(), log=lambda m: print(m, flush=True))


def _method_options(args: argparse.Namespace) -> dict:
    opts = {"alpha": args.alpha, "batches": args.calib_batches, "batch_size": args.calib_batch_size,
            "rho": args.rho, "seed": args.seed}
    return {k: v for k, v in opts.items() if v is not None}


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .experiment import ExperimentConfig, run_experiment

    cfg = ExperimentConfig(
        model=args.model, data_dir=args.data_dir, timesteps=max(args.timesteps), methods=tuple(args.methods),
        limit=args.limit, batch_size=args.batch_size, device=args.device, method_options=_method_options(args),
    )
    result = run_experiment(cfg, progress=_stderr_progress(), log=lambda m: print(m, file=sys.stderr))
    table = result.accuracy_table(args.timesteps)
    print(f"model {result.model_name} on {result.data_description}")
    print(f"ANN accuracy: {result.ann_accuracy:.2f}%")
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    if args.json_out:
        from .checkpoint import atomic_write_bytes

        rows = [{"method": m, "T": int(t), "accuracy": round(float(result.accuracy[m][t - 1]), 4)}
                for m in result.methods for t in args.timesteps]
        payload = {"model": result.model_name, "dataset": result.dataset, "n_images": result.n_images,
                   "ann_accuracy": round(result.ann_accuracy, 4), "data": result.data_description,
                   "method_options": result.method_options, "rows": rows}
        atomic_write_bytes(Path(args.json_out), (json.dumps(payload, indent=2) + "\n").encode())
    if args.csv_out:
        from .checkpoint import atomic_write_bytes

        atomic_write_bytes(Path(args.csv_out), table.to_csv().encode())


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from .experiment import calibrate_and_save

    path = calibrate_and_save(args.model, data_dir=args.data_dir, timesteps=args.timesteps, method=args.method,
                              options=_method_options(args), device=args.device, out=args.out,
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


def _stderr_progress():
    last = {"msg": None}

    def report(fraction: float, message: str) -> None:
        if message != last["msg"] and sys.stderr.isatty():
            print(f"\r[{fraction * 100:5.1f}%] {message}", end="", file=sys.stderr, flush=True)
        last["msg"] = message

    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ftbc`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    import torch

    from .checkpoint import CheckpointError
    from .data import DataError

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    handlers = {"train": _cmd_train, "evaluate": _cmd_evaluate, "calibrate": _cmd_calibrate, "models": _cmd_models}
    try:
        handlers[args.command](args)
    except (CheckpointError, DataError, CliError, ValueError, OSError) as err:  # OSError: e.g. an unwritable --out
        print(f"ftbc {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ftbc {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
