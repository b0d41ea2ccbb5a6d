"""One experiment = one model, one dataset, T, a list of methods: calibrate each, simulate each once to T, and
collect accuracy at every t (and, when asked, the measurements behind every chart). Used by ``ftbc evaluate``
and by the dashboard."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from .assets import load_images, resolve_checkpoint
from .biases import biases_to_bytes, conversion_fingerprint, weights_fingerprint
from .calibration import METHODS, CalibrationReport, get_method
from .calibration.base import resolve_options
from .convert import activation_sites
from .checkpoint import ModelCard, atomic_write_bytes, load_checkpoint
from .data import ImageArrays, balanced_indices, get_info, iterate_batches, to_tensor
from . import distributed as dist
from .devices import check_device
from .memory import available_memory_bytes, estimate_memory_bytes
from .selection import Trial, select_options, split_held_out
from .measure import Measurements, Recorder
from .models import check_input_shape
from .snn import DEFAULT_MAX_BATCH_STEPS, SpikingNetwork, check_timesteps, running_mean, to_snn
from .user_model import CUSTOM_ARCH

__all__ = ["ExperimentConfig", "ExperimentResult", "Simulation", "run_experiment", "calibration_images",
           "simulate", "simulate_dataset", "calibrate_and_save", "prepare_model", "check_memory", "check_model_fits_data"]

Progress = Callable[[float, str], None]
Log = Callable[[str], None]
#: The memory policy: a run whose estimated peak exceeds ``ExperimentConfig.memory_fraction`` of the available
#: memory is refused up front. The CLI/API's share; an app that serves several sessions at once (the dashboard)
#: uses the smaller ``APP_MEMORY_FRACTION``.
MEMORY_FRACTION = 0.8
APP_MEMORY_FRACTION = 0.25


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
    seeds: int = 1  # calibration draws (seed, seed + 1, ...): accuracy is their mean, accuracy_std the spread
    v0: str | float = "half"  # conversion: initial potential (half: θ/2, zero, or a fraction of θ)
    thresholds: str = "auto"  # conversion: auto, lambda, max, percentile (θ of activations that do not fix it)
    percentile: float = 99.9
    per_channel: bool = False  # per-channel θ from statistics
    select: bool = False  # choose each method's options on held-out training images (selection.py)
    val_images: int = 1000  # held out of the training split for the selection
    select_max_t: int = 16  # held-out accuracy averaged over t <= this
    memory_fraction: float = MEMORY_FRACTION  # refuse runs estimated to need more than this share of the memory


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
    accuracy_std: dict[str, np.ndarray] = field(default_factory=dict)  # over calibration draws; 0 if one draw
    seeds: tuple[int, ...] = (0,)
    selection: dict[str, tuple[Trial, ...]] = field(default_factory=dict)  # --select auto: the options tried
    draws: dict[str, int] = field(default_factory=dict)  # calibration draws each method ran (1: it has no draw)
    # the first draw's [T, N] class of every evaluation image after every step (single process; the per-image
    # pages read them instead of simulating again), and the [N] labels
    predicted: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None

    def truncated(self, timesteps: int) -> "ExperimentResult":
        """This result for a smaller T, read from the stored run (accuracy, biases and measurements are causal)."""
        if not 1 <= timesteps <= self.timesteps:
            raise ValueError(f"can only truncate to 1..{self.timesteps} steps, got {timesteps}")
        reports = {m: replace(r, biases={k: v[:timesteps] for k, v in r.biases.items()})
                   for m, r in self.reports.items()}
        return replace(self, timesteps=timesteps, accuracy={m: a[:timesteps] for m, a in self.accuracy.items()},
                       accuracy_std={m: a[:timesteps] for m, a in self.accuracy_std.items()},
                       reports=reports, predicted={m: p[:timesteps] for m, p in self.predicted.items()},
                       measurements={m: (x.truncated(timesteps) if x is not None else None)
                                     for m, x in self.measurements.items()})

    def accuracy_table(self, timesteps: list[int] | None = None) -> pd.DataFrame:
        """Wide table: rows T, one column per method (percent)."""
        ts = timesteps or list(range(1, self.timesteps + 1))
        return pd.DataFrame({m: [float(self.accuracy[m][t - 1]) for t in ts] for m in self.methods},
                            index=pd.Index(ts, name="T"))

    def accuracy_std_table(self, timesteps: list[int] | None = None) -> pd.DataFrame:
        """Like :meth:`accuracy_table`, the std over the calibration draws (0 for methods run once)."""
        ts = timesteps or list(range(1, self.timesteps + 1))
        std = {m: self.accuracy_std.get(m, np.zeros(self.timesteps)) for m in self.methods}
        return pd.DataFrame({m: [float(std[m][t - 1]) for t in ts] for m in self.methods},
                            index=pd.Index(ts, name="T"))

    def to_json_dict(self, timesteps: list[int] | None = None) -> dict[str, Any]:
        """Plain JSON: accuracy (the mean over draws) and accuracy_std per method and T, latency, each method's
        options and its convergence curve (mean |Δb| per calibration batch)."""
        ts = timesteps or list(range(1, self.timesteps + 1))
        std = {m: self.accuracy_std.get(m, np.zeros(self.timesteps)) for m in self.methods}
        rows = [{"method": m, "T": int(t), "latency": int(t + self.reports[m].latency),
                 "accuracy": round(float(self.accuracy[m][t - 1]), 4),
                 "accuracy_std": round(float(std[m][t - 1]), 4)} for m in self.methods for t in ts]
        methods = {m: {"options": {k: (v if isinstance(v, (int, float, str, type(None))) else str(v))
                                   for k, v in self.reports[m].options.items()},
                       "calibration_seconds": round(self.reports[m].seconds, 3), "draws": self.draws.get(m, 1),
                       "bias_change": [round(float(c), 6) for c in self.reports[m].bias_change]}
                   for m in self.methods}
        return {"model": self.model_name, "dataset": self.dataset, "n_images": self.n_images,
                "ann_accuracy": round(self.ann_accuracy, 4), "data": self.data_description,
                "seeds": list(self.seeds), "method_options": _plain(self.method_options), "methods": methods,
                "selection": {m: [{"options": t.options, "held_out_accuracy": round(t.score, 4)} for t in trials]
                              for m, trials in self.selection.items()},
                "rows": rows}

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: method, T, accuracy (percent), latency (T + the method's extra steps)."""
        rows = [{"method": m, "T": t + 1, "accuracy": float(acc[t]), "latency": t + 1 + self.reports[m].latency}
                for m, acc in self.accuracy.items() for t in range(len(acc))]
        return pd.DataFrame(rows)


def _plain(value: Any) -> Any:
    """JSON-safe copy of an options dict (file bytes become their size)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return value


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


def _calibration_batch(opts: dict[str, Any], calib_images: int) -> int | None:
    """Images a method simulates at once during calibration (None for methods without calibration batches)."""
    return min(int(opts["batch_size"]), calib_images) if "batch_size" in opts else None


def prepare_model(
    model: str | nn.Module, card: ModelCard | None, device: torch.device, calib: torch.Tensor,
    cfg: ExperimentConfig | None = None,
) -> tuple[nn.Module, ModelCard, SpikingNetwork]:
    """Load the ANN (unless given) and convert it with ``cfg``'s conversion options (v0, thresholds);
    thresholds that the activations do not fix (plain ReLU) come from statistics on the ``calib`` images."""
    if isinstance(model, nn.Module):
        if card is None:
            raise ValueError("a model object needs its card")
        ann = model
    else:
        ann, card = load_checkpoint(resolve_checkpoint(model), device=device)
    check_model_fits_data(card)
    ann = ann.to(device).eval()
    conv = cfg or ExperimentConfig(model=card.name)
    snn = to_snn(ann, images=calib.to(device), thresholds=conv.thresholds, percentile=conv.percentile,
                 per_channel=conv.per_channel, v0=conv.v0)
    return ann, card, snn


@dataclass(frozen=True)
class Simulation:
    """What :func:`simulate` measured on a dataset.

    Attributes:
        accuracy: ``[T]`` percent after every step.
        measurements: the recorded measurements (``record``; None otherwise or on a torchrun rank other than 0).
        predicted: ``[T, N]`` int32 class of every image after every step (None under torchrun: each process
            sees its shard only).
    """

    accuracy: np.ndarray
    measurements: Measurements | None
    predicted: np.ndarray | None


@torch.no_grad()
def simulate(
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
) -> Simulation:
    """Accuracy after every step and every image's prediction, from one simulation to T, plus measurements if
    ``record``.

    Args:
        record_images: measure on the first N images only (rounded up to whole simulation chunks; the accuracy
            still uses every image). ``Measurements.n_images`` says how many were measured.

    Images are simulated in chunks of ``min(batch_size, 128 // T)`` on the CPU and, on a GPU, of as many
    image-steps as fit its memory budget (:func:`~ftbc_core.distributed.device_max_batch_steps`; ``batch_size``
    does not bound it there), without TF32. Under torchrun (:mod:`ftbc_core.distributed`) each process simulates
    its shard of ``data`` and the correct counts are summed over processes, so the accuracy is over every image;
    measurements are then taken on rank 0's shard only (the others return None), and no predictions are kept.
    """
    timesteps = check_timesteps(timesteps)
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    device = next(net.parameters()).device
    total_steps = timesteps + net.latency
    if device.type == "cuda":
        shape = tuple(to_tensor(data.x[0:1]).shape[1:])
        chunk = net.chunk_size(total_steps, dist.device_max_batch_steps(ann, shape, device))
    else:
        chunk = min(batch_size, net.chunk_size(total_steps))
    correct = torch.zeros(timesteps, dtype=torch.long, device=device)  # on the device: one copy at the end
    if record_images is not None and record_images < 1:
        raise ValueError(f"the number of measured images must be >= 1, got {record_images}")
    part = dist.shard_of(data)  # this process's images (all of them in a single process)
    recorder = Recorder(net, ann, timesteps) if record and dist.is_main() else None
    predicted: list[torch.Tensor] | None = [] if dist.world_size() == 1 else None
    done = 0
    with dist.exact_float32():
        for x, y in iterate_batches(part, chunk):
            x, y = dist.to_device(x, device), dist.to_device(y, device)
            hooks = None  # enough images measured (or no measuring): the batch runs without observers
            if recorder is not None and (record_images is None or done < record_images):
                recorder.observe_ann(x)
                hooks = recorder.hooks
            guess = running_mean(net.simulate(x, total_steps, hooks=hooks)[net.latency :]).argmax(-1)  # [T, B]
            correct += (guess == y.view(1, -1)).sum(1)
            if predicted is not None:
                predicted.append(guess.to(torch.int32))  # on the device: one copy at the end
            done += len(y)
            if progress:
                progress(done / len(part), f"{label}simulating T={timesteps}: {done}/{len(part)} images")
    correct = dist.all_reduce_sum(correct).cpu()
    accuracy = (100.0 * correct.double() / len(data)).numpy()
    return Simulation(accuracy, recorder.result() if recorder is not None else None,
                      torch.cat(predicted, dim=1).cpu().numpy() if predicted is not None else None)


def simulate_dataset(net: SpikingNetwork, ann: nn.Module, data: ImageArrays, timesteps: int,
                     **options: Any) -> tuple[np.ndarray, Measurements | None]:
    """``(accuracy [T], measurements)`` of :func:`simulate` (same options)."""
    sim = simulate(net, ann, data, timesteps, **options)
    return sim.accuracy, sim.measurements


@dist.exact_float32()
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
    Everything runs without TF32 (:func:`~ftbc_core.distributed.exact_float32`), so a GPU agrees with the CPU.
    Under torchrun (:mod:`ftbc_core.distributed`) the evaluation images are sharded over the processes and the
    calibration batches split; the accuracies are over every image, the measurements over rank 0's shard.
    """
    timesteps = check_timesteps(cfg.timesteps)
    methods = [get_method(m) for m in cfg.methods]
    if not methods:
        raise ValueError("choose at least one method")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ValueError(f"a method is listed twice: {', '.join(cfg.methods)}")
    given = resolve_options(cfg.methods, cfg.method_options)
    options = {m.name: m.options(given[m.name]) for m in methods}  # defaults filled in, values checked
    dist.check_methods(cfg.methods)  # under torchrun: only methods whose calibration splits over processes
    if cfg.record_images is not None and cfg.record_images < 1:
        raise ValueError(f"the number of measured images must be >= 1, got {cfg.record_images}")
    if cfg.calib_images < 1 or cfg.batch_size < 1:
        raise ValueError(f"calib_images and batch_size must be >= 1, got {cfg.calib_images} and {cfg.batch_size}")
    if not 1 <= cfg.seeds <= 100:
        raise ValueError(f"the number of calibration draws (seeds) must be in 1..100, got {cfg.seeds}")
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
    latency = max((int(options[m.name].get("rho", 0)) for m in methods), default=0)
    runs = [(timesteps + latency, min(cfg.batch_size, max(1, DEFAULT_MAX_BATCH_STEPS // (timesteps + latency))))]
    runs += [(timesteps, b) for m in methods if (b := _calibration_batch(options[m.name], cfg.calib_images))]
    for _, b in runs[1:]:
        dist.check_calibration_batch(b)  # under torchrun: every process gets part of every calibration batch
    runs = runs[:1] + [(t, dist.per_process(b)) for t, b in runs[1:]]  # a process simulates its part of a batch
    if device.type == "cuda":  # the evaluation chunk fits the GPU by construction; a calibration batch must
        dist.check_gpu_memory(ann, (card.in_channels, card.image_size, card.image_size), runs[1:], device)
    else:
        check_memory(ann, card, runs, cfg.memory_fraction / dist.local_world_size())
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
    held_out = None
    if cfg.select:  # held-out images for choosing options; calibration draws from the rest
        held_out, train_data = split_held_out(train_data, cfg.val_images, cfg.seed)
        say(f"choosing options on {len(held_out)} held-out training images (mean accuracy over "
            f"T <= {min(cfg.select_max_t, timesteps)}); calibrating on the other {len(train_data)}")
    seeds = tuple(range(cfg.seed, cfg.seed + cfg.seeds))
    calib = calibration_images(train_data, cfg.calib_images, seeds[0], info.num_classes).to(device)
    ann, card, snn = prepare_model(ann, card, device, calib, cfg)
    # θ from statistics depends on the calibration draw too: then every method is repeated per draw
    drawn_theta = any(site.spec.theta is None for site in activation_sites(ann)[1]) and cfg.thresholds != "lambda"
    drawn_theta = drawn_theta or cfg.thresholds in ("max", "percentile")

    from .evaluate import ann_accuracy  # local: tiny module, avoids a cycle in type checkers

    ann_acc = dist.accuracy_over_shards(lambda part: ann_accuracy(ann, part, cfg.batch_size), test_data)
    accuracy, accuracy_std, reports, measurements, seconds, n_draws, predicted = {}, {}, {}, {}, {}, {}, {}
    n = len(methods)
    draws = {seeds[0]: (calib, snn)}

    def draw(seed: int) -> tuple[torch.Tensor, SpikingNetwork]:
        """The calibration images of one draw, and the SNN converted with them when θ depends on them."""
        if seed not in draws:
            images = calibration_images(train_data, cfg.calib_images, seed, info.num_classes).to(device)
            draws[seed] = (images, prepare_model(ann, card, device, images, cfg)[2] if drawn_theta else snn)
        return draws[seed]

    selection: dict[str, tuple[Trial, ...]] = {}
    for i, method in enumerate(methods):
        repeat = seeds if (drawn_theta or "seed" in method.defaults) else seeds[:1]
        runs_acc = []
        if held_out is not None and method.selection_grid:
            report(i / n, f"[{method.name}] choosing options on held-out training images")
            images, converted = draw(seeds[0])
            user_set = {k: v for k, v in given[method.name].items() if k != "seed"}
            chosen, trials = select_options(
                method.name, converted, ann, images, held_out, timesteps, cfg.select_max_t,
                lambda net, data, steps: simulate_dataset(net, ann, data, steps, batch_size=cfg.batch_size)[0],
                fixed=user_set)
            options[method.name] = method.options({**given[method.name], **chosen})
            selection[method.name] = tuple(trials)
            say(f"{method.name}: chose {chosen} (held-out mean {max(t.score for t in trials):.2f}% over "
                f"{len(trials)} option sets)")
        for k, seed in enumerate(repeat):
            def sub(lo: float, hi: float, prefix: str) -> Progress:
                span = (hi - lo) / len(repeat)
                return lambda f, m: report((i + lo + span * (k + f)) / n, f"{prefix}{m}")

            prefix = f"[{method.name}{f' seed {seed}' if len(repeat) > 1 else ''}] "
            images, converted = draw(seed)
            opts = {**options[method.name], **({"seed": seed} if "seed" in method.defaults else {})}
            net, rep = method.calibrate(converted, ann, images, timesteps, opts, sub(0.0, 0.3, prefix))
            start = time.perf_counter()
            sim = simulate(net, ann, test_data, timesteps, batch_size=cfg.batch_size,
                           record=cfg.record and k == 0, record_images=cfg.record_images,
                           progress=sub(0.3, 1.0, prefix))
            runs_acc.append(sim.accuracy)
            if k == 0:  # the first draw's calibration, measurements and predictions are the ones shown
                seconds[method.name], reports[method.name], measurements[method.name] = \
                    time.perf_counter() - start, rep, sim.measurements
                if sim.predicted is not None:
                    predicted[method.name] = sim.predicted
        stacked = np.stack(runs_acc)
        n_draws[method.name] = len(runs_acc)
        accuracy[method.name] = stacked.mean(0)
        accuracy_std[method.name] = stacked.std(0, ddof=1) if len(runs_acc) > 1 else np.zeros(timesteps)
        spread = f" ± {accuracy_std[method.name][-1]:.2f} over {len(runs_acc)} draws" if len(runs_acc) > 1 else ""
        say(f"{method.name}: calibrated in {reports[method.name].seconds:.1f} s, simulated in "
            f"{seconds[method.name]:.1f} s; accuracy at T={timesteps}: {accuracy[method.name][-1]:.2f}%{spread}")
    report(1.0, "done")
    return ExperimentResult(
        model_name=card.name, dataset=card.dataset, data_description=test_desc, n_images=len(test_data),
        timesteps=timesteps, ann_accuracy=ann_acc, methods=tuple(m.name for m in methods), accuracy=accuracy,
        reports=reports, measurements=measurements, method_options=_plain(cfg.method_options), seconds=seconds,
        accuracy_std=accuracy_std, seeds=seeds, selection=selection, draws=n_draws, predicted=predicted,
        labels=np.asarray(test_data.y).astype(np.int32) if predicted else None)


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
    v0: str | float = "half",
    thresholds: str = "auto",
    percentile: float = 99.9,
    per_channel: bool = False,
    progress: Progress | None = None,
    log: Log | None = None,
) -> Path:
    """``ftbc calibrate``: fit a bias method and write the biases next to the model (atomically), with what
    ``ftbc evaluate --biases`` checks before using them (weights, thresholds and v0 fingerprints, T).

    Without TF32. Under torchrun every process calibrates on its slice of every calibration batch and fits the
    same biases (the channel means are all-reduced, :mod:`ftbc_core.distributed`); rank 0 alone writes the file.
    """
    timesteps = check_timesteps(timesteps)
    chosen = get_method(method)
    fitting = [m.name for m in METHODS.values() if m.fits_biases]
    if not chosen.fits_biases:
        raise ValueError(f"{method!r} fits no biases; choose one of {', '.join(fitting)}")
    options = chosen.options(options)
    dist.check_methods([method])
    if calib_images < 1:
        raise ValueError(f"calib_images must be >= 1, got {calib_images}")
    dist.check_calibration_batch(_calibration_batch(options, calib_images))
    dev = check_device(device)
    if isinstance(model, nn.Module):
        if card is None or out is None:
            raise ValueError("calibrating a model object needs its card and an output file")
        path, ann = Path(out), model.to(dev).eval()
    else:
        path = resolve_checkpoint(model)
        ann, card = load_checkpoint(path, device=dev)
    check_model_fits_data(card)
    batch = _calibration_batch(options, calib_images)
    runs = [(timesteps, dist.per_process(batch))] if batch else []
    if dev.type == "cuda":
        dist.check_gpu_memory(ann, (card.in_channels, card.image_size, card.image_size), runs, dev)
    elif runs:
        check_memory(ann, card, runs, MEMORY_FRACTION / dist.local_world_size())
    train_data, desc = load_images(card.dataset, "train", data_dir)
    if log:
        log(f"calibrating {card.name} with {method} on the {desc}")
    calib = calibration_images(train_data, calib_images, options.get("seed", 0),
                               get_info(card.dataset).num_classes).to(dev)
    conversion = ExperimentConfig(model=card.name, v0=v0, thresholds=thresholds, percentile=percentile,
                                  per_channel=per_channel)
    with dist.exact_float32():
        ann, card, snn = prepare_model(ann, card, dev, calib, conversion)
        net, rep = chosen.calibrate(snn, ann, calib, timesteps, options, progress)
    target = Path(out) if out else path.with_name(f"{path.stem}.{method}-T{timesteps}.safetensors")
    meta = {"model": card.name, "method": method, "timesteps": str(timesteps),
            "options": json.dumps(rep.options), "calibration_images": desc,
            "seconds": f"{rep.seconds:.3f}", "weights_sha256": weights_fingerprint(ann),
            "conversion_sha256": conversion_fingerprint(snn),
            "bias_change": json.dumps([round(c, 6) for c in rep.bias_change]),
            "world_size": str(dist.world_size())}
    if dist.is_main():  # every process fitted the same biases: one writes them
        atomic_write_bytes(target, biases_to_bytes(net, meta))
    dist.all_reduce_count(0)  # a barrier: the file exists when any process returns (and a failed write fails all)
    return target
