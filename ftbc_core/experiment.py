"""One experiment = one model, one dataset, T, a list of methods: calibrate each, simulate each once to T, and
collect accuracy at every t (and, when asked, the measurements behind every chart). Used by ``ftbc evaluate``
and by the dashboard."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes
from torch import nn

from .assets import load_images, resolve_checkpoint
from .calibration import CalibrationReport, get_method
from .calibration.base import check_options
from .checkpoint import CheckpointError, ModelCard, atomic_write_bytes, load_checkpoint
from .data import ImageArrays, balanced_indices, get_info, iterate_batches, to_tensor
from .devices import check_device
from .memory import available_memory_bytes, estimate_memory_bytes
from .measure import Measurements, Recorder
from .models import check_input_shape
from .snn import DEFAULT_MAX_BATCH_STEPS, SpikingNetwork, check_timesteps, running_mean, to_snn
from .user_model import CUSTOM_ARCH

__all__ = ["ExperimentConfig", "ExperimentResult", "run_experiment", "calibration_images", "simulate_dataset",
           "calibrate_and_save", "load_biases", "prepare_model", "check_memory", "check_model_fits_data"]

Progress = Callable[[float, str], None]
Log = Callable[[str], None]
#: Runs of the CLI/API whose estimated peak exceeds this share of the available memory are refused up front
#: (the dashboard refuses at a lower share, ``dashboard.state.MEMORY_FRACTION``).
MEMORY_FRACTION = 0.8


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines an experiment's numbers (the dashboard's cache key)."""

    model: str
    data_dir: str | None = None
    timesteps: int = 32
    methods: tuple[str, ...] = ("none", "ftbc")
    limit: int | None = None
    batch_size: int = 200
    device: str = "cpu"
    method_options: dict[str, Any] = field(default_factory=dict)
    calib_images: int = 1024
    record: bool = False
    record_images: int | None = None  # measure on the first N evaluation images only (None: all of them)
    seed: int = 0


@dataclass(frozen=True)
class ExperimentResult:
    """Plain results; ``accuracy[m]`` is ``[T]`` in percent, index t = after t+1 steps."""

    model_name: str
    dataset: str
    data_description: str
    n_images: int
    timesteps: int
    ann_accuracy: float
    methods: tuple[str, ...]
    accuracy: dict[str, np.ndarray]
    reports: dict[str, CalibrationReport]
    measurements: dict[str, Measurements | None]
    method_options: dict[str, Any]
    seconds: dict[str, float]

    def truncated(self, timesteps: int) -> "ExperimentResult":
        """This result for a smaller T, read from the stored run (accuracy, biases and measurements are causal)."""
        if not 1 <= timesteps <= self.timesteps:
            raise ValueError(f"can only truncate to 1..{self.timesteps} steps, got {timesteps}")
        reports = {m: replace(r, biases={k: v[:timesteps] for k, v in r.biases.items()})
                   for m, r in self.reports.items()}
        return replace(self, timesteps=timesteps, accuracy={m: a[:timesteps] for m, a in self.accuracy.items()},
                       reports=reports,
                       measurements={m: (x.truncated(timesteps) if x is not None else None)
                                     for m, x in self.measurements.items()})

    def accuracy_table(self, timesteps: list[int] | None = None) -> pd.DataFrame:
        """Wide table: rows T, one column per method (percent)."""
        ts = timesteps or list(range(1, self.timesteps + 1))
        return pd.DataFrame({m: [float(self.accuracy[m][t - 1]) for t in ts] for m in self.methods},
                            index=pd.Index(ts, name="T"))

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: method, T, accuracy (percent), latency (T + the method's extra steps)."""
        rows = [{"method": m, "T": t + 1, "accuracy": float(acc[t]), "latency": t + 1 + self.reports[m].latency}
                for m, acc in self.accuracy.items() for t in range(len(acc))]
        return pd.DataFrame(rows)


def calibration_images(data: ImageArrays, n: int, seed: int, num_classes: int) -> torch.Tensor:
    """A seeded, class-balanced subset of (training) images as float ``[n, C, H, W]``."""
    n = min(n, len(data))
    try:
        idx = balanced_indices(data.y, n, seed, num_classes)
    except ValueError:  # too few of some class: fall back to a seeded random subset
        idx = np.sort(np.random.default_rng(seed).permutation(len(data))[:n])
    return to_tensor(data.x[idx])


def check_model_fits_data(card: ModelCard) -> None:
    """Raise ValueError if the model of ``card`` cannot classify the images of the card's dataset."""
    info = get_info(card.dataset)
    c = info.image_shape[2]
    if card.in_channels != c:
        raise ValueError(f"model {card.name!r} takes {card.in_channels}-channel images, but {info.name} images have "
                         f"{c} channel(s)")
    if card.arch != CUSTOM_ARCH:  # a user's model was checked on a dry forward when it was built
        check_input_shape(card.arch, info.image_shape)
    if card.num_classes != info.num_classes:
        raise ValueError(f"model {card.name!r} has {card.num_classes} classes, but {info.name} has "
                         f"{info.num_classes}")
    if card.class_names and len(card.class_names) != card.num_classes:
        raise ValueError(f"model {card.name!r} names {len(card.class_names)} classes but has {card.num_classes}")


def check_memory(ann: nn.Module, card: ModelCard, runs: list[tuple[int, int]],
                 fraction: float = MEMORY_FRACTION) -> None:
    """Raise ValueError if simulating any ``(steps, images at once)`` of ``runs`` would need more than
    ``fraction`` of the available memory (estimated from one dry forward of one image; nothing large is made)."""
    shape = (card.in_channels, card.image_size, card.image_size)
    need = max(estimate_memory_bytes(ann, shape, steps, batch) for steps, batch in runs)
    have = available_memory_bytes()
    if need > fraction * have:
        raise ValueError(f"this run would need about {need / 2**30:.1f} GiB, more than {fraction:.0%} of the "
                         f"{have / 2**30:.1f} GiB available: lower T or the (calibration) batch size")


def _calibration_batch(method, options: dict[str, Any], calib_images: int) -> int | None:
    """Images a bias method simulates at once during calibration (None for methods without calibration)."""
    opts = method.options(options)
    return min(int(opts["batch_size"]), calib_images) if "batch_size" in opts else None


def prepare_model(
    model: str | nn.Module, card: ModelCard | None, device: torch.device, calib: torch.Tensor
) -> tuple[nn.Module, ModelCard, SpikingNetwork]:
    """Load the ANN (unless given) and convert it; thresholds that the activations do not fix (plain ReLU)
    come from statistics on the ``calib`` images."""
    if isinstance(model, nn.Module):
        if card is None:
            raise ValueError("a model object needs its card")
        ann = model
    else:
        ann, card = load_checkpoint(resolve_checkpoint(model), device=device)
    check_model_fits_data(card)
    ann = ann.to(device).eval()
    snn = to_snn(ann, images=calib.to(device))
    return ann, card, snn


@torch.no_grad()
def simulate_dataset(
    net: SpikingNetwork,
    ann: nn.Module,
    data: ImageArrays,
    timesteps: int,
    *,
    batch_size: int = 200,
    record: bool = False,
    record_images: int | None = None,
    progress: Progress | None = None,
    label: str = "",
) -> tuple[np.ndarray, Measurements | None]:
    """Accuracy ``[T]`` (percent) after every step, from one simulation to T, plus measurements if ``record``.

    Args:
        record_images: measure on the first N images only (rounded up to whole simulation chunks; the accuracy
            still uses every image). ``Measurements.n_images`` says how many were measured.
    """
    timesteps = check_timesteps(timesteps)
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    device = next(net.parameters()).device
    total_steps = timesteps + net.latency
    chunk = min(batch_size, net.chunk_size(total_steps))
    correct = torch.zeros(timesteps, dtype=torch.long)
    if record_images is not None and record_images < 1:
        raise ValueError(f"the number of measured images must be >= 1, got {record_images}")
    recorder = Recorder(net, ann, timesteps) if record else None
    done = 0
    with contextlib.ExitStack() as hooks:
        if recorder is not None:
            hooks.enter_context(recorder)
        for x, y in iterate_batches(data, chunk):
            x = x.to(device)
            if recorder is not None and (record_images is None or done < record_images):
                recorder.observe_ann(x)
            else:
                hooks.close()  # enough images measured: the remaining batches run without hooks
            out = running_mean(net.simulate(x, total_steps)[net.latency :])
            correct += (out.argmax(-1).cpu() == y.view(1, -1)).sum(1)
            done += len(y)
            if progress:
                progress(done / len(data), f"{label}simulating T={timesteps}: {done}/{len(data)} images")
    accuracy = (100.0 * correct.double() / len(data)).numpy()
    return accuracy, recorder.result() if recorder is not None else None


def run_experiment(
    cfg: ExperimentConfig,
    *,
    progress: Progress | None = None,
    log: Log | None = None,
    model: nn.Module | None = None,
    card: ModelCard | None = None,
) -> ExperimentResult:
    """Calibrate every method of ``cfg`` and simulate each once to ``cfg.timesteps`` on the evaluation images.

    Calibration images come from the training split (``data_dir``) or the bundled calibration sample;
    evaluation images from the test split or the bundled evaluation sample. The model is never modified.
    """
    timesteps = check_timesteps(cfg.timesteps)
    methods = [get_method(m) for m in cfg.methods]
    if not methods:
        raise ValueError("choose at least one method")
    check_options({k: v for k, v in cfg.method_options.items() if v is not None})
    if cfg.record_images is not None and cfg.record_images < 1:
        raise ValueError(f"the number of measured images must be >= 1, got {cfg.record_images}")
    if cfg.calib_images < 1 or cfg.batch_size < 1:
        raise ValueError(f"calib_images and batch_size must be >= 1, got {cfg.calib_images} and {cfg.batch_size}")
    device = check_device(cfg.device)
    report = progress or (lambda f, m: None)
    say = log or (lambda m: None)
    if model is None:
        path = resolve_checkpoint(cfg.model)
        ann, card = load_checkpoint(path, device=device)
    else:
        ann = model.to(device).eval()
        if card is None:
            raise ValueError("run_experiment(model=...) needs the model's card")
    check_model_fits_data(card)
    latency = max((int(m.options(cfg.method_options).get("rho", 0)) for m in methods if m.name == "cos"), default=0)
    runs = [(timesteps + latency, min(cfg.batch_size, max(1, DEFAULT_MAX_BATCH_STEPS // (timesteps + latency))))]
    runs += [(timesteps, b) for m in methods if (b := _calibration_batch(m, cfg.method_options, cfg.calib_images))]
    check_memory(ann, card, runs)
    info = get_info(card.dataset)
    report(0.0, "loading data")
    train_data, calib_desc = load_images(card.dataset, "train", cfg.data_dir)
    test_data, test_desc = load_images(card.dataset, "test", cfg.data_dir)
    if cfg.limit is not None:
        if cfg.limit < 1:
            raise ValueError(f"the number of evaluation images must be >= 1, got {cfg.limit}")
        if cfg.limit < len(test_data):
            test_data = test_data.subset(np.arange(cfg.limit))
            test_desc = f"first {cfg.limit} images of the {test_desc}"
    if cfg.data_dir is None:
        say(f"no --data-dir: using the {test_desc} and the {calib_desc}")
    calib = calibration_images(train_data, cfg.calib_images, cfg.seed, info.num_classes).to(device)
    ann, card, snn = prepare_model(ann, card, device, calib)

    from .evaluate import ann_accuracy  # local: tiny module, avoids a cycle in type checkers

    ann_acc = ann_accuracy(ann, test_data, cfg.batch_size)
    accuracy, reports, measurements, seconds = {}, {}, {}, {}
    n = len(methods)
    for i, method in enumerate(methods):
        def sub(lo: float, hi: float, prefix: str) -> Progress:
            return lambda f, m: report((i + lo + (hi - lo) * f) / n, f"{prefix}{m}")

        opts = dict(cfg.method_options)
        opts.setdefault("seed", cfg.seed)
        net, rep = method.calibrate(snn, ann, calib, timesteps, opts, sub(0.0, 0.3, f"[{method.name}] "))
        start = time.perf_counter()
        acc, meas = simulate_dataset(net, ann, test_data, timesteps, batch_size=cfg.batch_size, record=cfg.record,
                                     record_images=cfg.record_images, progress=sub(0.3, 1.0, f"[{method.name}] "))
        seconds[method.name] = time.perf_counter() - start
        accuracy[method.name], reports[method.name], measurements[method.name] = acc, rep, meas
        say(f"{method.name}: calibrated in {rep.seconds:.1f} s, simulated in {seconds[method.name]:.1f} s; "
            f"accuracy at T={timesteps}: {acc[-1]:.2f}%")
    report(1.0, "done")
    return ExperimentResult(
        model_name=card.name, dataset=card.dataset, data_description=test_desc, n_images=len(test_data),
        timesteps=timesteps, ann_accuracy=ann_acc, methods=tuple(m.name for m in methods), accuracy=accuracy,
        reports=reports, measurements=measurements, method_options=dict(cfg.method_options), seconds=seconds)


def biases_to_bytes(net: SpikingNetwork, metadata: dict[str, str]) -> bytes:
    """The FTBC biases of ``net`` as a safetensors file (``{layer: [T, C]}``) with string metadata."""
    tensors = {name: neuron.bias.detach().cpu().contiguous() for name, neuron in zip(net.layer_names, net.neurons)}
    return st_save_bytes(tensors, metadata=metadata)


def load_biases(net: SpikingNetwork, source: str | Path | bytes) -> dict[str, str]:
    """Set ``net``'s biases from a file written by :func:`calibrate_and_save`; returns its metadata."""
    data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    try:
        tensors = st_load_bytes(bytes(data))
    except Exception as err:  # safetensors raises several types for garbage input
        raise CheckpointError(f"not a bias file ({str(err).splitlines()[0]})") from None
    if sorted(tensors) != sorted(net.layer_names):
        raise CheckpointError("the bias file's layers do not match this model")
    for name, neuron in zip(net.layer_names, net.neurons):
        bias = tensors[name].float()
        if bias.dim() != 2 or not torch.isfinite(bias).all():
            raise CheckpointError(f"bias of layer {name!r} is malformed or not finite")
        neuron.set_bias(bias)
    header_len = int.from_bytes(bytes(data[:8]), "little")
    return json.loads(bytes(data[8 : 8 + header_len])).get("__metadata__", {})


def calibrate_and_save(
    model: str | nn.Module,
    *,
    card: ModelCard | None = None,
    data_dir: str | None,
    timesteps: int,
    method: str = "ftbc",
    options: dict[str, Any] | None = None,
    device: str = "cpu",
    out: str | None = None,
    calib_images: int = 1024,
    progress: Progress | None = None,
    log: Log | None = None,
) -> Path:
    """``ftbc calibrate``: fit a bias method and write the biases next to the model (atomically)."""
    timesteps = check_timesteps(timesteps)
    chosen = get_method(method)
    if chosen.name not in ("ftbc", "ftbc-exact", "ftbc-layer"):
        raise ValueError(f"{method!r} fits no biases; choose ftbc, ftbc-exact or ftbc-layer")
    check_options({k: v for k, v in (options or {}).items() if v is not None})
    if calib_images < 1:
        raise ValueError(f"calib_images must be >= 1, got {calib_images}")
    dev = check_device(device)
    if isinstance(model, nn.Module):
        if card is None or out is None:
            raise ValueError("calibrating a model object needs its card and an output file")
        path, ann = Path(out), model.to(dev).eval()
    else:
        path = resolve_checkpoint(model)
        ann, card = load_checkpoint(path, device=dev)
    check_model_fits_data(card)
    check_memory(ann, card, [(timesteps, _calibration_batch(chosen, options or {}, calib_images))])
    train_data, desc = load_images(card.dataset, "train", data_dir)
    if log:
        log(f"calibrating {card.name} with {method} on the {desc}")
    calib = calibration_images(train_data, calib_images, (options or {}).get("seed", 0),
                               get_info(card.dataset).num_classes).to(dev)
    ann, card, snn = prepare_model(ann, card, dev, calib)
    net, rep = chosen.calibrate(snn, ann, calib, timesteps, options, progress)
    target = Path(out) if out else path.with_name(f"{path.stem}.{method}-T{timesteps}.safetensors")
    meta = {"model": card.name, "method": method, "timesteps": str(timesteps),
            "options": json.dumps(rep.options), "calibration_images": desc,
            "seconds": f"{rep.seconds:.3f}"}
    atomic_write_bytes(target, biases_to_bytes(net, meta))
    return target
