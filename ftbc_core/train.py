"""Training of the ANNs (``ftbc train``): SGD + cosine schedule, batch-level augmentation, resumable.

On the CPU the fast path is on by default: channels_last memory format, and bfloat16 autocast where the CPU
computes bfloat16 natively (AVX512-BF16/AMX; elsewhere bfloat16 is emulated and slower than float32: 134.8 vs
207.8 images/s for ResNet-20 on a 2-core Xeon without it, ``benchmarks/train_speed.py``); QCFS itself computes
in float32. ``--compile`` adds ``torch.compile`` (a one-time compilation, then 2.2x faster QCFS training there).
Augmentation (random crop with zero padding, horizontal flip for CIFAR) works on whole uint8 batches with tensor
ops. A resumable state is written after every epoch; the final model is evaluated in
float32 on the full test split and saved with its card.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .devices import check_device
from .checkpoint import ModelCard, atomic_write_bytes, save_checkpoint
from .data import ImageArrays, get_info, load_split
from .models import build_model, check_input_shape

__all__ = ["TrainConfig", "train", "evaluate_ann", "augment_batch"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the resume state and summarised on the card)."""

    arch: str
    dataset: str
    out: str
    data_dir: str
    activation: str = "qcfs"
    levels: int = 4
    init_threshold: float = 8.0
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    cutout: int = 0
    warmup_epochs: float = 1.0
    seed: int = 0
    device: str = "cpu"
    fast: bool = True
    compile: bool = False
    limit: int | None = None
    half: bool = False
    init_from: str | None = None
    name: str | None = None
    notes: str = ""
    command: str = ""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 AVX512-BF16 or AMX, Arm BF16); True when unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    flags = set(" ".join(line.split(":", 1)[1] for line in text.splitlines()
                         if line.lower().startswith(("flags", "features")) and ":" in line).split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def augment_batch(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator, cutout: int = 0,
                  fill: tuple[int, ...] = (0,)) -> torch.Tensor:
    """Random crop with zero padding, optional horizontal flip and optional Cutout of a whole batch.

    Cutout (DeVries & Taylor 2017, as in the public QCFS training code) paints one ``cutout`` x ``cutout`` square
    per image, centred anywhere in the image and clipped at its borders, with ``fill`` (per channel; the dataset's
    mean pixel is what a cut-out after normalisation gives).

    Args:
        x: uint8 ``[B, C, H, W]``.
    Returns:
        uint8 ``[B, C, H, W]``.
    """
    b, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        rows = (oy[:, None] + torch.arange(h))[:, :, None]  # [B, H, 1]
        cols = (ox[:, None] + torch.arange(w))[:, None, :]  # [B, 1, W]
        x = padded[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # [B, C, H, W]
    if flip:
        mask = torch.rand(b, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    if cutout > 0:
        cy = torch.randint(0, h, (b,), generator=gen)
        cx = torch.randint(0, w, (b,), generator=gen)
        half = cutout // 2
        in_rows = (torch.arange(h) >= (cy - half)[:, None]) & (torch.arange(h) < (cy - half + cutout)[:, None])
        in_cols = (torch.arange(w) >= (cx - half)[:, None]) & (torch.arange(w) < (cx - half + cutout)[:, None])
        hole = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [B, 1, H, W]
        x = torch.where(hole, torch.tensor(fill, dtype=x.dtype).view(1, -1, 1, 1), x)
    return x.contiguous()


def _as_nchw(data: ImageArrays) -> torch.Tensor:
    return torch.from_numpy(data.x).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def evaluate_ann(model: nn.Module, data: ImageArrays, batch_size: int = 500, device: torch.device | None = None,
                 autocast: bool = False) -> float:
    """Top-1 accuracy (percent) of an ANN on uint8 arrays, in float32 unless ``autocast``."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    x_all, y_all = _as_nchw(data), torch.from_numpy(data.y)
    correct = 0
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        for i in range(0, len(data), batch_size):
            x = x_all[i : i + batch_size].to(device).float().div_(255)
            correct += (model(x).argmax(1).cpu() == y_all[i : i + batch_size]).sum().item()
    model.train(was_training)
    return 100.0 * correct / len(data)


def _lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    total = cfg.epochs * steps_per_epoch
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1.0, total - warm)))


def _init_from(model: nn.Module, cfg: TrainConfig, log: Callable[[str], None]) -> None:
    """Start from a checkpoint's weights (a new schedule: the optimizer state and epochs start afresh)."""
    from .assets import resolve_checkpoint
    from .checkpoint import CheckpointError, load_checkpoint

    path = resolve_checkpoint(cfg.init_from)
    source, card = load_checkpoint(path, arch=cfg.arch, dataset=cfg.dataset)
    if card.activation != cfg.activation or (cfg.activation == "qcfs" and card.levels != cfg.levels):
        raise CheckpointError(f"--init-from {path} is a {card.activation} model (L = {card.levels}), not "
                              f"{cfg.activation} (L = {cfg.levels}); pass the same --activation/--levels")
    model.load_state_dict(source.state_dict())
    log(f"initialised from {path} (ANN {card.ann_test_accuracy:.2f}% on its card); a new {cfg.epochs}-epoch "
        f"schedule starts at lr {cfg.lr:g}")


def _resume_path(out: str) -> Path:
    return Path(out).with_name(Path(out).name + ".resume.pt")


def train(cfg: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print,
          progress: bool = True) -> tuple[nn.Module, ModelCard]:
    """Train ``cfg.arch`` on ``cfg.dataset`` and save it to ``cfg.out`` (+ ``.safetensors``/``.json``)."""
    from tqdm import tqdm  # local: the core does not need tqdm otherwise

    info = get_info(cfg.dataset)
    check_input_shape(cfg.arch, info.image_shape)
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    if not 0 <= cfg.cutout <= min(info.image_shape[:2]):
        raise ValueError(f"cutout must be 0 (off) to {min(info.image_shape[:2])} pixels, got {cfg.cutout}")
    device = check_device(cfg.device)
    train_set = load_split(cfg.dataset, "train", cfg.data_dir)
    test_set = load_split(cfg.dataset, "test", cfg.data_dir)
    if cfg.limit:
        train_set = train_set.subset(range(min(cfg.limit, len(train_set))))
        test_set = test_set.subset(range(min(cfg.limit, len(test_set))))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, cfg.activation, cfg.levels, info.num_classes, info.image_shape[2],
                        info.mean, info.std, cfg.init_threshold).to(device)
    if cfg.init_from and not (resume and _resume_path(cfg.out).exists()):
        _init_from(model, cfg, log)
    fast = cfg.fast
    autocast = fast and (device.type != "cpu" or cpu_has_native_bf16())
    if fast:
        model = model.to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() <= 1 and not name.endswith("threshold") else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, momentum=0.9, nesterov=True)
    start_epoch, history = 0, []
    state_path = _resume_path(cfg.out)
    if resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state["config"]["arch"] != cfg.arch or state["config"]["dataset"] != cfg.dataset:
            raise ValueError(f"{state_path} is a {state['config']['arch']}/{state['config']['dataset']} run, "
                             f"not {cfg.arch}/{cfg.dataset}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        log(f"resumed from {state_path} after epoch {start_epoch}")
    log(f"training on {device}: channels_last {fast}, bfloat16 autocast {autocast}, torch.compile {cfg.compile}")
    forward = torch.compile(model) if cfg.compile else model

    x_train, y_train = _as_nchw(train_set), torch.from_numpy(train_set.y)
    pad, flip = (4, True) if cfg.dataset == "cifar10" else (2, False)
    fill = tuple(round(255 * m) for m in info.mean)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(start_epoch, cfg.epochs):
        gen.manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(train_set), generator=gen)
        model.train()
        t0, seen, correct, loss_sum = time.time(), 0, 0, 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False, mininterval=2.0)
        for i in bar:
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = augment_batch(x_train[idx], pad, flip, gen, cfg.cutout, fill).to(device).float().div_(255)
            y = y_train[idx].to(device)
            if fast:
                x = x.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(cfg, epoch * steps_per_epoch + i, steps_per_epoch)
            ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            with ctx:
                out = forward(x)
                loss = F.cross_entropy(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
        test_acc = evaluate_ann(model, test_set, device=device, autocast=autocast)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": 100 * correct / seen,
                  "test_acc_fast": test_acc, "seconds": time.time() - t0}
        history.append(record)
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f} train {record['train_acc']:.2f}% "
            f"test {test_acc:.2f}% ({record['seconds']:.0f} s, {seen / record['seconds']:.0f} img/s)")
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                    "history": history, "config": dataclasses.asdict(cfg)}, buf)
        atomic_write_bytes(state_path, buf.getvalue())

    model = model.to(memory_format=torch.contiguous_format).float().eval()
    if cfg.half:  # measure the accuracy of what is actually shipped: float16-rounded weights
        with torch.no_grad():
            for t in model.state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.half().float())
    accuracy = evaluate_ann(model, test_set, device=device)
    card = ModelCard(
        name=cfg.name or Path(cfg.out).name, arch=cfg.arch, activation=cfg.activation,
        levels=cfg.levels if cfg.activation == "qcfs" else 0, dataset=cfg.dataset,
        num_classes=info.num_classes, in_channels=info.image_shape[2], image_size=info.image_shape[0],
        class_names=tuple(info.class_names), mean=tuple(info.mean), std=tuple(info.std),
        epochs=cfg.epochs, seed=cfg.seed, command=cfg.command, ann_test_accuracy=round(accuracy, 2),
        date=_dt.date.today().isoformat(), notes=cfg.notes,
        extra={"test_images": len(test_set), "train_images": len(train_set), "batch_size": cfg.batch_size,
               "lr": cfg.lr, "cutout": cfg.cutout, "init_threshold": cfg.init_threshold,
               "weight_decay": cfg.weight_decay,
               "fast_path": fast, "device": str(device),
               "bf16_autocast": autocast, "compile": cfg.compile,
               "stored_as": "float16" if cfg.half else "float32",
               "train_seconds": round(sum(h["seconds"] for h in history), 1), "history": history,
               **({"init_from": str(cfg.init_from)} if cfg.init_from else {})},
    )
    path = save_checkpoint(model, card, cfg.out, half=cfg.half)
    log(f"saved {path}: ANN test accuracy {accuracy:.2f}% on {len(test_set)} images (float32)")
    return model, card
