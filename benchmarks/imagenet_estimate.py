"""Expected time and memory per 1,000 ImageNet images (224x224) for VGG-16 and ResNet-34 (the public QCFS code's
networks), per T and for 1, 2, 4, 8 GPUs, from a measurement on this CPU.

    python benchmarks/imagenet_estimate.py --threads 2

What is measured (here, on the CPU): for each network (``build_model("qcfs-vgg16" | "qcfs-resnet34",
num_classes=1000)``, random weights: dense convolutions cost the same whatever the weights), its multiply-adds
per image (forward hooks on every conv and linear layer) and the seconds one image-step costs in
``SpikingNetwork.simulate`` (the slope between T = ``--t-small`` and ``--t-large`` at one image, after a warm-up),
and the ANN forward of one image. Memory: :func:`ftbc_core.memory.estimate_memory_bytes` of the chunk each
device simulates at once (the CPU's 128 image-steps; on a GPU as many as fit half of ``--gpu-memory-gib``, as
:func:`ftbc_core.distributed.device_max_batch_steps` chooses).

What is ASSUMED (GPU rows are estimates, not measurements): each GPU sustains ``--gpu-tflops`` effective
float32 TFLOP/s (2 FLOPs per multiply-add; TF32 is off in simulation) on these networks, i.e. the GPU/CPU
throughput ratio printed with the table; evaluation splits perfectly over GPUs (one all-reduce of T counts per
chunk list, negligible), and input decoding keeps up. The CPU rows are this machine's measured cost times T.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

NAME = "imagenet_estimate"
ARCHS = {"VGG-16": "qcfs-vgg16", "ResNet-34": "qcfs-resnet34"}
IMAGE = (3, 224, 224)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timesteps", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--images", type=int, default=1000, help="images the rows are for")
    p.add_argument("--gpu-tflops", type=float, default=20.0,
                   help="ASSUMED effective float32 TFLOP/s of one GPU on these networks (default 20: about a "
                        "third of an H100/H200's FP32 peak)")
    p.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory of one GPU (for the chunk size)")
    p.add_argument("--t-small", type=int, default=1, help="T of the shorter timed simulation")
    p.add_argument("--t-large", type=int, default=3, help="T of the longer timed simulation")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats (the minimum is used)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/imagenet_estimate.json)")
    return p.parse_args(argv)


def count_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward of one image (convolutions and linear layers)."""
    total = 0

    def hook(module, inputs, out):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += out.numel() * k
        elif isinstance(module, nn.Linear):
            total += out.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    finally:
        for h in handles:
            h.remove()
    return total


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return min(runs)


@torch.no_grad()
def measure(arch: str, args: argparse.Namespace) -> dict:
    """Multiply-adds, CPU seconds per image-step and per ANN forward, memory per image-step of one network."""
    from ftbc_core.distributed import per_image_step_bytes
    from ftbc_core.models import build_model
    from ftbc_core.public_models import PUBLIC_NORMALIZATION
    from ftbc_core.snn import to_snn

    mean, std = PUBLIC_NORMALIZATION["imagenet"]
    torch.manual_seed(0)
    ann = build_model(arch, "qcfs", levels=8, num_classes=1000, mean=mean, std=std).eval()
    macs = count_macs(ann, IMAGE)
    snn = to_snn(ann)
    x = torch.rand(1, *IMAGE, generator=torch.Generator().manual_seed(0))
    small = _best_time(lambda: snn.simulate(x, args.t_small), args.repeats)
    large = _best_time(lambda: snn.simulate(x, args.t_large), args.repeats)
    per_step = max((large - small) / (args.t_large - args.t_small), 1e-9)
    ann_s = _best_time(lambda: ann(x), args.repeats)
    return {"arch": arch, "gmacs_per_image": macs / 1e9, "cpu_seconds_per_image_step": per_step,
            "cpu_seconds_simulate": {str(args.t_small): small, str(args.t_large): large},
            "cpu_seconds_ann_forward": ann_s, "cpu_gmacs_per_s": macs / 1e9 / per_step,
            "bytes_per_image_step": per_image_step_bytes(snn, IMAGE),
            "parameter_bytes": sum(p.numel() * p.element_size() for p in ann.parameters())}


def table(measured: dict[str, dict], args: argparse.Namespace) -> list[dict]:
    """Rows: network, device count (0 = this CPU, measured), T, seconds and memory per ``--images`` images."""
    from ftbc_core.snn import DEFAULT_MAX_BATCH_STEPS, GPU_MAX_BATCH_STEPS, GPU_MEMORY_FRACTION

    gpu_macs_per_s = args.gpu_tflops * 1e12 / 2
    rows = []
    for name, m in measured.items():
        per_step_gpu = m["gmacs_per_image"] * 1e9 / gpu_macs_per_s
        free = GPU_MEMORY_FRACTION * args.gpu_memory_gib * 2**30 - m["parameter_bytes"]
        budget = int(free) // m["bytes_per_image_step"]
        budget = max(1, min(budget, GPU_MAX_BATCH_STEPS))
        for t in args.timesteps:
            cpu_chunk = max(1, DEFAULT_MAX_BATCH_STEPS // t)
            rows.append({"network": name, "devices": "CPU (this machine, measured)", "gpus": 0, "T": t,
                         "seconds": round(args.images * t * m["cpu_seconds_per_image_step"], 1),
                         "images_at_once": cpu_chunk,
                         "memory_gib": round((cpu_chunk * t * m["bytes_per_image_step"] + m["parameter_bytes"])
                                             / 2**30, 2)})
            for g in args.gpus:
                per_gpu = -(-args.images // g)
                chunk = max(1, min(per_gpu, budget // t))
                rows.append({"network": name, "devices": f"{g} GPU{'s' if g > 1 else ''} (estimate)", "gpus": g,
                             "T": t, "seconds": round(per_gpu * t * per_step_gpu, 2), "images_at_once": chunk,
                             "memory_gib": round((chunk * t * m["bytes_per_image_step"] + m["parameter_bytes"])
                                                 / 2**30, 2)})
    return rows


def markdown(rows: list[dict], timesteps: list[int]) -> str:
    """One line per network and device count, one column per T: ``seconds (GiB per device)``."""
    head = "| network | devices | " + " | ".join(f"T = {t}" for t in timesteps) + " |"
    lines = [head, "|" + "---|" * (2 + len(timesteps))]
    keys = []
    for r in rows:
        if (r["network"], r["devices"]) not in keys:
            keys.append((r["network"], r["devices"]))
    for net, dev in keys:
        cells = []
        for t in timesteps:
            r = next(x for x in rows if x["network"] == net and x["devices"] == dev and x["T"] == t)
            secs = r["seconds"]
            shown = f"{secs / 60:.1f} min" if secs >= 120 else f"{secs:.1f} s"
            cells.append(f"{shown} ({r['memory_gib']:g} GiB)")
        lines.append(f"| {net} | {dev} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from common import set_threads, write_result

    set_threads(args.threads)
    measured = {name: measure(ARCHS[name], args) for name in args.archs}
    rows = table(measured, args)
    cpu_rate = {n: m["cpu_gmacs_per_s"] for n, m in measured.items()}
    ratio = {n: round(args.gpu_tflops * 1e3 / 2 / r, 1) for n, r in cpu_rate.items()}
    assumption = (f"GPU rows are ESTIMATES: each GPU is assumed to sustain {args.gpu_tflops:g} TFLOP/s of float32 "
                  f"(no TF32) on these networks, i.e. {', '.join(f'{ratio[n]}x' for n in ratio)} this CPU's "
                  f"measured rate ({', '.join(f'{n} {r:.0f} GMAC/s' for n, r in cpu_rate.items())} on "
                  f"{args.threads} threads), split perfectly over GPUs; memory is the chunk each GPU simulates at "
                  f"once (half of {args.gpu_memory_gib:g} GiB at most) plus the weights. CPU rows: this machine, "
                  "measured per image-step cost x T.")
    text = markdown(rows, args.timesteps)
    print(f"Time (and memory per device) for {args.images} ImageNet images, 224x224:\n")
    print(text)
    print()
    for n, m in measured.items():
        print(f"{n}: {m['gmacs_per_image']:.1f} GMAC per image-step, {m['cpu_seconds_per_image_step']:.3f} s per "
              f"image-step on this CPU ({m['cpu_gmacs_per_s']:.0f} GMAC/s), "
              f"ANN forward {m['cpu_seconds_ann_forward']:.3f} s, "
              f"{m['bytes_per_image_step'] / 2**20:.0f} MiB per image-step")
    print(assumption)
    figures = {"measured": measured, "rows": rows, "markdown": text, "assumption": assumption,
               "gpu_tflops_assumed": args.gpu_tflops, "gpu_over_cpu_ratio_assumed": ratio, "images": args.images}
    path = write_result(NAME, figures, args.out)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
