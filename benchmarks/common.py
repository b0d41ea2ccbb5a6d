"""Shared helpers of the performance benchmarks: threads, models, images, timing, machine description, JSON.

Every benchmark is one command with the same model/data options (:func:`add_model_args`, :func:`add_data_args`)
and writes ``benchmarks/results/<name>.json`` holding the machine, the date, the exact command and its figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ftbc_core.assets import load_images, resolve_checkpoint
from ftbc_core.checkpoint import load_checkpoint, read_card
from ftbc_core.data import get_info, to_tensor
from ftbc_core.experiment import calibration_images
from ftbc_core.models import build_model
from ftbc_core.neuron import QCFS

__all__ = ["RESULTS_DIR", "Timing", "ModelSpec", "set_threads", "time_call", "time_interleaved", "machine_info",
           "write_result", "add_model_args", "add_data_args", "model_specs", "load_ann", "load_eval", "load_calib",
           "peak_rss_mib", "fmt_table", "randomize_batchnorm", "fit_qcfs_thresholds"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RANDOM_DATASET = {"resnet20": "cifar10", "vgg16": "cifar10", "cnn": "mnist"}
_LOAD_AT_START = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


# -- threads and timing -------------------------------------------------------------------------------------------
def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (and tell child processes the same through OMP/MKL variables)."""
    torch.set_num_threads(int(threads))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(int(threads))


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of ``repeats`` timed calls after ``warmup`` untimed ones."""

    median: float
    minimum: float
    maximum: float
    runs: tuple[float, ...]
    warmup: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_runs(cls, runs: list[float], warmup: int) -> "Timing":
        return cls(statistics.median(runs), min(runs), max(runs), tuple(runs), warmup)


def time_call(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> tuple[Timing, Any]:
    """Time ``fn()``: ``warmup`` untimed calls, then the median of ``repeats`` timed calls.

    Returns:
        ``(timing, result of the last call)``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    result = None
    for _ in range(max(0, warmup)):
        result = fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - start)
    return Timing.from_runs(runs, warmup), result


def time_interleaved(fns: dict[str, Callable[[], Any]], *, repeats: int = 3, warmup: int = 1
                     ) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Time several functions round-robin (``a b c a b c ...``), so that a load change on a shared machine hits
    all of them alike; ``warmup`` untimed calls of each first. Returns per name the timing and last result."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    results: dict[str, Any] = {}
    for name, fn in fns.items():
        for _ in range(max(0, warmup)):
            results[name] = fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            runs[name].append(time.perf_counter() - start)
    return {name: Timing.from_runs(r, warmup) for name, r in runs.items()}, results


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (``ru_maxrss``, KiB on Linux), in MiB."""
    scale = 1.0 / 1024 if sys.platform != "darwin" else 1.0 / 2**20  # macOS reports bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# -- machine and results ------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, threads, load, library versions."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1_5_15_at_start": _LOAD_AT_START,
        "load_average_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
    }
    try:
        info["spikingjelly"] = version("spikingjelly")  # benchmark-only dependency
    except PackageNotFoundError:  # not installed: only snn_vs_spikingjelly needs it
        info["spikingjelly"] = None
    return info


def command_line() -> str:
    """The command that produced a result, as it could be typed again."""
    return "python " + shlex.join(sys.argv)


def write_result(name: str, figures: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write ``{benchmark, date, command, machine, figures}`` to ``out`` or ``benchmarks/results/<name>.json``."""
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine_info(),
        "figures": figures,
    }
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Timing):
        return obj.to_dict()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def fmt_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table (Markdown pipe syntax) of ``rows``."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# -- models ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark: a shipped checkpoint (``model``) or a random architecture (``random_arch``)."""

    model: str | None = None
    random_arch: str | None = None
    activation: str = "qcfs"
    seed: int = 0

    @property
    def dataset(self) -> str:
        if self.model is not None:
            return read_card(resolve_checkpoint(self.model)).dataset
        return RANDOM_DATASET[str(self.random_arch)]

    @property
    def label(self) -> str:
        if self.model is not None:
            return Path(str(self.model)).stem
        return f"random-{self.random_arch}-{self.activation}"


def add_model_args(parser: argparse.ArgumentParser, *, multiple: bool, default_arch: list[str] | str,
                   default_activation: str = "qcfs") -> None:
    """``--model NAME_OR_PATH`` (shipped checkpoint) or ``--random-arch ARCH`` (random weights)."""
    nargs = "+" if multiple else None
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", nargs=nargs, default=None,
                       help="shipped model name(s) or checkpoint path(s) (ftbc_core.assets.resolve_checkpoint)")
    group.add_argument("--random-arch", nargs=nargs, default=None, choices=("resnet20", "vgg16", "cnn"),
                       help=f"random weights of this architecture (default: {default_arch})")
    parser.add_argument("--activation", choices=("qcfs", "relu"), default=default_activation,
                        help="activation of --random-arch models")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights and of data subsets")
    parser.set_defaults(_default_arch=default_arch)


def add_data_args(parser: argparse.ArgumentParser, *, images: int, timesteps: list[int] | int) -> None:
    """``--data-dir``, ``--images``, ``--timesteps``, ``--threads``, ``--repeats``, ``--out``."""
    parser.add_argument("--data-dir", default=None,
                        help="dataset folder (ftbc_core.data.load_split); default: the bundled samples")
    parser.add_argument("--images", type=int, default=images, help="evaluation images (capped at what exists)")
    if isinstance(timesteps, list):
        parser.add_argument("--timesteps", type=int, nargs="+", default=timesteps, help="time steps T")
    else:
        parser.add_argument("--timesteps", type=int, default=timesteps, help="time steps T")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls before the repeats")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<name>.json)")


def model_specs(args: argparse.Namespace) -> list[ModelSpec]:
    """The models chosen on the command line (``--model`` wins over ``--random-arch``)."""
    if args.model:
        names = args.model if isinstance(args.model, list) else [args.model]
        return [ModelSpec(model=n, seed=args.seed) for n in names]
    archs = args.random_arch or args._default_arch
    archs = archs if isinstance(archs, list) else [archs]
    return [ModelSpec(random_arch=a, activation=args.activation, seed=args.seed) for a in archs]


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """Random (seeded) BN affine parameters and running statistics, so a random net is not degenerate."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            m.bias.copy_(torch.rand(n, generator=gen) * 0.5 - 0.1)
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


@torch.no_grad()
def fit_qcfs_thresholds(model: nn.Module, images: torch.Tensor, quantile: float = 0.99) -> nn.Module:
    """Set every QCFS λ of a random model to a quantile of its positive input, in forward order (one pass).

    Random weights give activations of arbitrary scale; without this most QCFS layers of a random net are
    silent or saturated, and calibration timings would be measured on a degenerate network.
    """
    gen = torch.Generator().manual_seed(0)

    def pre_hook(module: QCFS, inputs: tuple[torch.Tensor, ...]) -> None:
        z = inputs[0].detach().float().clamp_min(0).flatten()
        z = z[torch.randperm(z.numel(), generator=gen)[:1_000_000]] if z.numel() > 1_000_000 else z
        module.threshold.fill_(float(torch.quantile(z, quantile).clamp_min(1e-3)))

    handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules() if isinstance(m, QCFS)]
    try:
        model.eval()(images)
    finally:
        for h in handles:
            h.remove()
    return model


def load_ann(spec: ModelSpec, calib: torch.Tensor | None = None) -> nn.Module:
    """The ANN of ``spec`` in eval mode, float32, on the CPU.

    Random models get seeded weights, randomized BN and (QCFS) λ fitted on ``calib`` images.
    """
    if spec.model is not None:
        ann, _card = load_checkpoint(resolve_checkpoint(spec.model))
        return ann.float().eval()
    info = get_info(RANDOM_DATASET[str(spec.random_arch)])
    torch.manual_seed(spec.seed)
    ann = build_model(str(spec.random_arch), spec.activation, 4, info.num_classes, info.image_shape[2],
                      info.mean, info.std)
    randomize_batchnorm(ann, spec.seed).eval()
    if spec.activation == "qcfs":
        if calib is None:
            raise ValueError("a random QCFS model needs calibration images to set its thresholds")
        fit_qcfs_thresholds(ann, calib[:64])
    return ann.float().eval()


# -- images ---------------------------------------------------------------------------------------------------------
def load_eval(dataset: str, data_dir: str | None, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``n`` test images (test split of ``data_dir``, else the bundled eval sample).

    Returns:
        ``(x float32 [n, C, H, W] in [0, 1], y int64 [n], description)``.
    """
    data, desc = load_images(dataset, "test", data_dir)
    n = min(int(n), len(data))
    if n < 1:
        raise ValueError("need at least one evaluation image")
    return to_tensor(data.x[:n]), torch.as_tensor(data.y[:n], dtype=torch.int64), f"first {n} of the {desc}"


def load_calib(dataset: str, data_dir: str | None, n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``n`` class-balanced training images (training split of ``data_dir``, else the bundled calib sample)."""
    data, desc = load_images(dataset, "train", data_dir)
    x = calibration_images(data, int(n), seed, get_info(dataset).num_classes)
    return x, f"{x.shape[0]} images of the {desc}"
