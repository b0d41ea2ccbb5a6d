"""Several processes or GPUs through PyTorch's own distributed engine, and the per-device settings of a run.

``torchrun --nproc_per_node=N -m ftbc_core evaluate ...`` (or ``calibrate``) runs N copies of the same command.
The CLI (:func:`ftbc_core.cli.main`) reads torchrun's environment (:func:`launch_info`), checks the flags, then
starts the process group (:func:`process_group`: gloo on CPUs, NCCL with ``--device cuda``, one GPU per process,
``cuda:LOCAL_RANK``). The core stays single-process code with a few calls into this module, each a no-op (the
input returned unchanged, nothing communicated) when no process group of ours is active:

* evaluation: :func:`shard` (rank r takes images r, r + N, r + 2N, ...: every image once, none twice) and
  :func:`all_reduce_sum` of the per-step correct counts; :func:`accuracy_over_shards` for the ANN;
* calibration: every rank draws the same seeded batches and simulates :func:`local_part` of each. The spike
  means FTBC needs per layer, step and channel are combined from the ranks' exact counts of spikes
  (:func:`all_reduce_sum` and :func:`all_reduce_count` in the default rule, :func:`all_reduce_mean` with
  ``binary=True`` in the α-rule: the union's mean bitwise as one process computes it), and ``ftbc-exact``'s
  quantile gathers the values (:func:`all_gather_cat`). The ANN targets are computed by every rank on the whole
  batch (one ANN forward of the batch, no communication): a weighted all-reduce of the ranks' means
  (:func:`all_reduce_means`) equals the single-process targets only up to float rounding, and the fitted biases
  are chaotic in the targets (a 2e-7 relative change of the targets moved cnn-mnist's classifier biases by up
  to 1.0 in one process), so only bitwise-equal targets give the single process's biases. COS works per input
  and needs no communication.

Failure: the group's timeout (:data:`DEFAULT_TIMEOUT_S`, ``FTBC_DIST_TIMEOUT`` seconds) bounds every wait, not
torch's default 30 minutes. A rank that raises prints one line and exits; with gloo that closes its connections
and the others' next collective fails at once with a :class:`DistributedError`; with NCCL the others stop when
the watchdog's timeout expires (``TORCH_NCCL_ASYNC_ERROR_HANDLING``), or sooner when torchrun, seeing a worker
exit with an error, stops the rest.

Per-device settings used by single-process runs too: :func:`device_max_batch_steps` (the simulation chunk: 128
image-steps on the CPU, as many as fit a memory budget on a GPU), :func:`exact_float32` (no TF32 while simulating
or calibrating) and :func:`to_device` (pinned, asynchronous host-to-GPU copies).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from .snn import DEFAULT_MAX_BATCH_STEPS, GPU_MAX_BATCH_STEPS, GPU_MEMORY_FRACTION

__all__ = ["DEFAULT_TIMEOUT_S", "DISTRIBUTED_METHODS", "DistributedError", "Launch", "launch_info", "rank_device",
           "process_group", "active", "rank", "world_size", "is_main", "shard", "shard_of", "local_part",
           "all_reduce_sum", "all_reduce_count", "all_reduce_mean", "all_reduce_means", "all_gather_cat",
           "accuracy_over_shards", "check_methods", "check_calibration_batch", "per_process", "local_world_size",
           "check_gpu_memory", "traffic", "reset_traffic",
           "device_max_batch_steps", "per_image_step_bytes", "exact_float32", "to_device"]

#: Seconds a process waits for the others (start-up, every collective) before it gives up.
DEFAULT_TIMEOUT_S = 60.0
#: Methods whose calibration is correct when split over processes (the others run as one process only).
#: ``ftbc-official`` averages per element inside its own module without all-reducing: refused when distributed.
DISTRIBUTED_METHODS = frozenset({"none", "ftbc", "ftbc-root", "ftbc-alpha", "ftbc-exact", "ftbc-layer", "cos",
                                 "cos-causal", "file"})


class DistributedError(RuntimeError):
    """A collective failed or timed out (another process died, raised or hangs), or the group could not start."""


@dataclass(frozen=True)
class Launch:
    """What torchrun tells each process: its rank among ``world_size`` and its rank on this machine."""

    rank: int
    world_size: int
    local_rank: int


def launch_info(environ: dict[str, str] | None = None) -> Launch | None:
    """The torchrun launch of this process from ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` (None when not launched);
    ValueError on inconsistent values."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank_ = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank_)))
    except ValueError:
        raise ValueError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from None
    if world < 1 or not 0 <= rank_ < world or local < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank_}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return Launch(rank_, world, local)


def rank_device(device: str, launch: Launch) -> str:
    """The device of this process: ``cpu``, or ``cuda:LOCAL_RANK`` for ``cuda`` (one GPU per process)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return str(dev)
    if dev.index is not None and launch.world_size > 1:
        raise ValueError(f"under torchrun name --device cuda, not {device}: process r uses cuda:LOCAL_RANK")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but no GPU is available")
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise ValueError(f"LOCAL_RANK {launch.local_rank} needs GPU cuda:{launch.local_rank}, but this machine has "
                         f"{count}: start at most {count} processes per node")
    return f"cuda:{launch.local_rank}"


# -- the process group ---------------------------------------------------------------------------------------------
@dataclass
class _Group:
    rank: int
    world_size: int
    backend: str
    device: torch.device  # where collectives run: this process's GPU for NCCL, the CPU for gloo


_GROUP: _Group | None = None
_TRAFFIC = {"all_reduce_calls": 0, "all_reduce_bytes": 0, "all_gather_calls": 0, "all_gather_bytes": 0}


def _timeout_s() -> float:
    text = os.environ.get("FTBC_DIST_TIMEOUT")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"FTBC_DIST_TIMEOUT must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"FTBC_DIST_TIMEOUT must be > 0 seconds, got {text!r}")
    return value


@contextlib.contextmanager
def process_group(device: str | torch.device, launch: Launch | None = None,
                  timeout_s: float | None = None) -> Iterator[_Group]:
    """Start the process group for ``launch`` (default: :func:`launch_info`) and make the helpers of this module
    communicate inside the context; destroy it on the way out. gloo for the CPU, NCCL for a GPU (the device must
    be this process's own, ``cuda:LOCAL_RANK``). A process group someone else started is used, not destroyed."""
    global _GROUP
    launch = launch or launch_info()
    if launch is None:
        raise ValueError("not launched by torchrun (WORLD_SIZE is not set)")
    dev = torch.device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = dt.timedelta(seconds=timeout_s if timeout_s is not None else _timeout_s())
    owned = not tdist.is_initialized()
    if owned:
        kwargs = {}
        if backend == "nccl":
            torch.cuda.set_device(dev)
            # a failed or timed-out NCCL collective tears the process down instead of hanging
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
            if "device_id" in inspect.signature(tdist.init_process_group).parameters:
                kwargs["device_id"] = dev
        try:
            tdist.init_process_group(backend, init_method="env://", rank=launch.rank, world_size=launch.world_size,
                                     timeout=timeout, **kwargs)
        except Exception as err:  # noqa: BLE001  (rendezvous timeout, port in use, NCCL missing, ...)
            raise DistributedError(f"could not start the {backend} process group of {launch.world_size} processes "
                                   f"within {timeout.total_seconds():.0f} s: {_first_line(err)}") from err
    elif tdist.get_world_size() != launch.world_size or tdist.get_rank() != launch.rank:
        raise ValueError("a process group is already running with another rank or size than torchrun's")
    _GROUP = _Group(launch.rank, launch.world_size, backend, dev if backend == "nccl" else torch.device("cpu"))
    failed = False
    try:
        yield _GROUP
    except BaseException:
        failed = True
        raise
    finally:
        _GROUP = None
        # After a failure NCCL's destroy may wait for peers that are gone: the process exits and the driver cleans
        # up. gloo's destroy is local.
        if owned and tdist.is_initialized() and not (failed and backend == "nccl"):
            tdist.destroy_process_group()


def active() -> bool:
    """True inside :func:`process_group` with more than one process."""
    return _GROUP is not None and _GROUP.world_size > 1


def rank() -> int:
    return _GROUP.rank if _GROUP is not None else 0


def world_size() -> int:
    return _GROUP.world_size if _GROUP is not None else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that prints and writes files."""
    return rank() == 0


# -- sharding ------------------------------------------------------------------------------------------------------
def shard(n: int, rank_: int | None = None, world: int | None = None) -> np.ndarray:
    """The indices of ``n`` items this rank takes: ``rank, rank + world, ...`` (every item once over the ranks,
    none twice; the first ``n % world`` ranks take one more; ranks past ``n`` take none)."""
    r = rank() if rank_ is None else int(rank_)
    w = world_size() if world is None else int(world)
    if n < 0 or w < 1 or not 0 <= r < w:
        raise ValueError(f"cannot shard {n} items for rank {r} of {w}")
    return np.arange(r, n, w, dtype=np.int64)


def shard_of(data):
    """This rank's part of an :class:`~ftbc_core.data.ImageArrays` (the data itself when not distributed)."""
    return data.subset(shard(len(data))) if active() else data


def local_part(batch: torch.Tensor) -> torch.Tensor:
    """This rank's part of one calibration batch (its images ``rank, rank + N, ...`` along dim 0; the whole
    batch when not distributed)."""
    return batch[torch.from_numpy(shard(len(batch))).to(batch.device)] if active() else batch


# -- collectives ---------------------------------------------------------------------------------------------------
def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _collective(fn: Callable[[], object], what: str) -> None:
    try:
        fn()
    except Exception as err:  # noqa: BLE001  (DistBackendError, RuntimeError from gloo/NCCL)
        raise DistributedError(f"lost contact with the other processes during {what} (another rank failed, was "
                               f"stopped or timed out): {_first_line(err)}") from err


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum over ranks (a new tensor on ``tensor``'s device; ``tensor`` itself when not
    distributed)."""
    if not active():
        return tensor
    buf = tensor.detach().to(_GROUP.device, copy=True).contiguous()
    _TRAFFIC["all_reduce_calls"] += 1
    _TRAFFIC["all_reduce_bytes"] += buf.numel() * buf.element_size()
    _collective(lambda: tdist.all_reduce(buf, op=tdist.ReduceOp.SUM), "an all-reduce")
    return buf.to(tensor.device)


def all_reduce_count(n: int) -> int:
    """The sum of an integer over ranks."""
    if not active():
        return int(n)
    return int(all_reduce_sum(torch.tensor([int(n)], dtype=torch.int64)).item())


def all_reduce_mean(mean: torch.Tensor, count: int, *, binary: bool = False) -> torch.Tensor:
    """The mean over the union of the ranks' values from each rank's ``mean`` over ``count`` values:
    ``Σ_r count_r · mean_r / Σ_r count_r`` (float64 while combining; ``mean``'s dtype and device back).

    ``binary``: the values are 0/1 (spikes fired or not). Each rank's count of ones is then recovered exactly
    (``round(mean · count)``, below 2**24) and the union's mean computed as torch's own mean computes it (the exact
    sum divided by the count, in ``mean``'s dtype): bitwise what one process gets on the union.
    """
    if not active():
        return mean
    if not binary:
        return all_reduce_means({"": mean}, count)[""]
    ones = torch.round(mean.detach().to(torch.float64) * count).reshape(-1).cpu()
    total = all_reduce_sum(torch.cat([ones, torch.tensor([float(count)], dtype=torch.float64)]))
    n = int(total[-1].item())
    return (total[:-1].to(mean.dtype) / n).reshape(mean.shape).to(mean.device)


def all_reduce_means(means: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """:func:`all_reduce_mean` of several tensors averaged over the same ``count`` values, in one collective."""
    if not active():
        return means
    keys = list(means)
    weight = float(count)
    parts = [(means[k].detach().to(torch.float64) * weight if count > 0 else torch.zeros_like(means[k],
              dtype=torch.float64)).reshape(-1).cpu() for k in keys]  # a rank without values adds nothing
    packed = torch.cat(parts + [torch.tensor([weight], dtype=torch.float64)])
    total = all_reduce_sum(packed)
    if total[-1] <= 0:
        raise ValueError("no process had any values to average")
    out, start = {}, 0
    for k in keys:
        ref = means[k]
        size = ref.numel()
        out[k] = (total[start : start + size] / total[-1]).reshape(ref.shape).to(ref.device, ref.dtype)
        start += size
    return out


def all_gather_cat(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` in rank order (sizes along ``dim`` may differ)."""
    if not active():
        return tensor
    dim = dim % tensor.dim()
    sizes = torch.zeros(_GROUP.world_size, dtype=torch.int64)
    sizes[_GROUP.rank] = tensor.shape[dim]
    sizes = all_reduce_sum(sizes)
    longest = int(sizes.max())
    buf = tensor.detach().to(_GROUP.device)
    if buf.shape[dim] < longest:  # pad to the longest: all_gather takes equal shapes
        pad_shape = list(buf.shape)
        pad_shape[dim] = longest - buf.shape[dim]
        buf = torch.cat([buf, buf.new_zeros(pad_shape)], dim)
    buf = buf.contiguous()
    parts = [torch.empty_like(buf) for _ in range(_GROUP.world_size)]
    _TRAFFIC["all_gather_calls"] += 1
    _TRAFFIC["all_gather_bytes"] += buf.numel() * buf.element_size()
    _collective(lambda: tdist.all_gather(parts, buf), "an all-gather")
    kept = [p.narrow(dim, 0, int(s)) for p, s in zip(parts, sizes)]
    return torch.cat(kept, dim).to(tensor.device)


def accuracy_over_shards(accuracy: Callable[[object], float], data) -> float:
    """``accuracy(data)`` (percent) computed as ``accuracy(shard_of(data))`` on every rank and combined over
    all images (the correct counts summed)."""
    if not active():
        return accuracy(data)
    part = shard_of(data)
    correct = round(accuracy(part) * len(part) / 100.0) if len(part) else 0
    total = all_reduce_sum(torch.tensor([correct, len(part)], dtype=torch.int64))
    return 100.0 * int(total[0]) / int(total[1])


def check_methods(methods) -> None:
    """ValueError for a method that cannot be split over processes (when more than one process runs, or
    torchrun starts more than one)."""
    launch = launch_info() if _GROUP is None else None
    world = world_size() if _GROUP is not None else (launch.world_size if launch else 1)
    if world <= 1:
        return
    bad = [m for m in methods if m not in DISTRIBUTED_METHODS]
    if bad:
        raise ValueError(f"method {bad[0]} runs as one process only (its calibration is not split over processes): "
                         f"run it without torchrun; with torchrun: {', '.join(sorted(DISTRIBUTED_METHODS))}")


def check_calibration_batch(batch: int | None, world: int | None = None) -> None:
    """ValueError if a calibration batch of ``batch`` images leaves a process without any."""
    launch = launch_info() if _GROUP is None and world is None else None
    w = world if world is not None else (world_size() if _GROUP is not None else (launch.world_size if launch else 1))
    if batch is not None and w > 1 and batch < w:
        raise ValueError(f"a calibration batch of {batch} images cannot be split over {w} processes (each needs at "
                         "least one): raise --calib-batch-size/--calib-images or start fewer processes")


def per_process(batch: int) -> int:
    """Images of a calibration batch of ``batch`` that one process simulates (the largest part)."""
    return -(-int(batch) // world_size())


def local_world_size() -> int:
    """Processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 when not distributed): they share its RAM."""
    if not active():
        return 1
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_gpu_memory(model: nn.Module, image_shape: tuple[int, ...], runs: list[tuple[int, int]],
                     device: str | torch.device, fraction: float = 0.8) -> None:
    """ValueError if simulating any ``(steps, images at once)`` of ``runs`` on the GPU ``device`` would need more
    than ``fraction`` of its free memory (:func:`~ftbc_core.memory.estimate_memory_bytes`); nothing on the CPU.
    A calibration batch is simulated whole (its spike means are per step), so its size, divided over the
    processes, is what must fit; evaluation chunks are sized to fit (:func:`device_max_batch_steps`)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not runs:
        return
    from .memory import estimate_memory_bytes  # local: memory imports snn

    steps, images = max(runs, key=lambda r: r[0] * r[1])
    need = estimate_memory_bytes(model, image_shape, steps, images)
    free, _total = torch.cuda.mem_get_info(dev)
    if need > fraction * free:
        raise ValueError(f"a calibration batch of {images} images per process at T = {steps} would need about "
                         f"{need / 2**30:.1f} GiB on {dev}, more than {fraction:.0%} of its {free / 2**30:.1f} GiB "
                         "free: lower --calib-batch-size or T, or start more processes (the batch is split)")


def traffic() -> dict[str, int]:
    """Bytes this process contributed to collectives since :func:`reset_traffic` (payload sizes, not the wire
    bytes of the algorithm: a ring all-reduce sends about ``2 (N-1)/N`` times its payload per process)."""
    return dict(_TRAFFIC)


def reset_traffic() -> None:
    for key in _TRAFFIC:
        _TRAFFIC[key] = 0


# -- per-device settings -------------------------------------------------------------------------------------------
def per_image_step_bytes(model: nn.Module, image_shape: tuple[int, ...]) -> int:
    """Memory one image costs per simulated step, from :func:`~ftbc_core.memory.estimate_memory_bytes` (one dry
    forward of one image of ``model``, the ANN or its SNN): the difference between 2 steps and 1."""
    from .memory import estimate_memory_bytes  # local: memory imports snn

    one = estimate_memory_bytes(model, image_shape, 1, 1)
    return max(1, estimate_memory_bytes(model, image_shape, 2, 1) - one)


def device_max_batch_steps(model: nn.Module, image_shape: tuple[int, ...], device: str | torch.device,
                           fraction: float = GPU_MEMORY_FRACTION) -> int:
    """Image-steps to simulate at once on ``device``: :data:`~ftbc_core.snn.DEFAULT_MAX_BATCH_STEPS` (128, the
    fastest on CPUs) on the CPU; on a GPU as many as fit ``fraction`` of its free memory
    (``torch.cuda.mem_get_info``) at :func:`per_image_step_bytes` each, at most
    :data:`~ftbc_core.snn.GPU_MAX_BATCH_STEPS` and below 2**31 elements per layer tensor."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return DEFAULT_MAX_BATCH_STEPS
    per_step = per_image_step_bytes(model, image_shape)
    free, _total = torch.cuda.mem_get_info(dev)
    budget = int(fraction * free) // per_step
    largest_elements = max(1, per_step // (4 * 4 * 3 // 2))  # per_step = 1.5 · 4 live tensors · 4 bytes · elements
    return int(max(1, min(budget, GPU_MAX_BATCH_STEPS, (2**31 - 1) // largest_elements)))


_TF32_NEW = ("cuda.matmul", "cudnn.conv", "cudnn.rnn")  # torch >= 2.9: fp32_precision per backend and operator


def _backend(path: str):
    obj = torch.backends
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """No TF32 inside (cuBLAS matmuls and cuDNN convolutions in full float32), the previous settings restored
    after: TF32's 10-bit mantissa moves membrane potentials across the threshold, so a GPU run would not agree
    with the CPU. Uses ``torch.backends.cuda.matmul.allow_tf32`` / ``torch.backends.cudnn.allow_tf32`` or, where
    torch has them (and mixing the two APIs is an error), the ``fp32_precision`` settings."""
    if all(hasattr(_backend(p), "fp32_precision") for p in _TF32_NEW):
        saved = {p: _backend(p).fp32_precision for p in _TF32_NEW}
        try:
            for p in _TF32_NEW:
                _backend(p).fp32_precision = "ieee"
            yield
        finally:
            for p, value in saved.items():
                _backend(p).fp32_precision = value
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; to a GPU through pinned memory, asynchronously (the caching host allocator keeps
    the pinned buffer alive until the copy is done)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
