"""Training throughput (images/s) of one SGD step on random data, for each CPU speed setting of ``ftbc train``.

    python benchmarks/train_speed.py --arch resnet20 --threads 2            # eager settings
    python benchmarks/train_speed.py --arch resnet20 --threads 2 --compile  # also torch.compile (slow start)

Settings: float32 contiguous, float32 channels_last (what ``ftbc train`` uses without native bf16), bfloat16
autocast + channels_last (its choice where the CPU has native bf16), and with ``--compile`` float32
channels_last under ``torch.compile`` (compilation time reported apart). Prints images/s, the ratio to float32
contiguous, and whether this CPU has native bfloat16 (``ftbc_core.train.cpu_has_native_bf16``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time

import torch
import torch.nn.functional as F

from ftbc_core.models import build_model
from ftbc_core.train import cpu_has_native_bf16


def images_per_s(arch: str, activation: str, batch: int, steps: int, channels_last: bool, bf16: bool,
                 compile_model: bool) -> tuple[float, float]:
    """(images/s over ``steps`` timed steps, seconds of the first two untimed steps incl. compilation)."""
    torch.manual_seed(0)
    channels, size = (1, 28) if arch == "cnn" else (3, 32)
    model = build_model(arch, activation, 4, 10, channels, (0.5,) * channels, (0.25,) * channels, 2.0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    forward = torch.compile(model) if compile_model else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, channels, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = F.cross_entropy(forward(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    for _ in range(2):
        step()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start), warm


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20", choices=("resnet20", "vgg16", "cnn"))
    p.add_argument("--activation", default="qcfs", choices=("qcfs", "relu"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="timed steps per setting")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = [("float32", False, False, False), ("float32 channels_last", True, False, False),
                ("bfloat16 autocast channels_last", True, True, False)]
    if args.compile:
        settings.append(("float32 channels_last torch.compile", True, False, True))
    native = cpu_has_native_bf16()
    print(f"{args.arch} ({args.activation}), batch {args.batch_size}, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}; native bfloat16: {native}")
    rows, base = [], None
    for name, cl, bf16, comp in settings:
        speed, warm = images_per_s(args.arch, args.activation, args.batch_size, args.steps, cl, bf16, comp)
        base = base or speed
        rows.append({"setting": name, "images_per_s": speed, "ratio": speed / base, "first_two_steps_s": warm})
        print(f"  {name:38s} {speed:7.1f} images/s  x{speed / base:4.2f}  (first 2 steps {warm:.1f} s)", flush=True)
    result = {"arch": args.arch, "activation": args.activation, "batch_size": args.batch_size,
              "threads": args.threads, "native_bf16": native, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
