"""ANN-to-SNN conversion and multi-step simulation.

:func:`to_snn` deep-copies a trained ANN and swaps every QCFS/ReLU for an :class:`~ftbc_core.neuron.IFNeuron`.
:class:`SpikingNetwork` runs the copy for T steps on a static image: every stateless layer (normalisation, conv,
BN, pooling, linear, residual add) runs once on the whole flattened sequence ``[T*B, ...]``; the layers before the
first spiking layer run once on ``[B, ...]`` because their input does not change over time. Each Conv-BN pair
is folded into one conv by default (:func:`fold_batchnorm`).
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import nn

from .convert import (Mapping, Site, activation_sites, fold_batchnorm_graph, observe_activations, spiking_graph,
                      trace_model)
from .neuron import IFNeuron, Run, StepHook, StepRule, running

__all__ = ["SpikingNetwork", "to_snn", "activation_thresholds", "check_timesteps", "fold_batchnorm", "MAX_TIMESTEPS",
           "DEFAULT_MAX_BATCH_STEPS", "GPU_MAX_BATCH_STEPS", "GPU_MEMORY_FRACTION"]

MAX_TIMESTEPS = 4096
# Images x steps simulated at once. Small enough that a layer's [T*B, ...] tensor stays near the CPU caches,
# large enough that the per-step Python overhead of the IF loop stays small: on ResNet-20 with channels-last
# tensors 64-128 were fastest at T = 8 and 32 (256 was ~20% slower, 2048 ~40% slower; see benchmarks/README.md).
DEFAULT_MAX_BATCH_STEPS = 128
# On a GPU the chunk is as many image-steps as fit GPU_MEMORY_FRACTION of its free memory (the per-image-step
# estimate of ftbc_core.memory; ftbc_core.distributed.device_max_batch_steps), at most GPU_MAX_BATCH_STEPS: on an
# H200, 128 image-steps ran 4 images at a time at T = 32 (174 images/s), 16k-64k ran 6,900-7,060 images/s.
GPU_MAX_BATCH_STEPS = 65536
GPU_MEMORY_FRACTION = 0.5
Progress = Callable[[float, str], None]


def check_timesteps(timesteps: int, limit: int = MAX_TIMESTEPS) -> int:
    """Validate a number of time steps: an integer in ``[1, limit]``."""
    if isinstance(timesteps, bool) or int(timesteps) != timesteps:
        raise ValueError(f"the number of time steps must be an integer, got {timesteps!r}")
    if not 1 <= int(timesteps) <= limit:
        raise ValueError(f"the number of time steps T must be between 1 and {limit}, got {timesteps}")
    return int(timesteps)


class SpikingNetwork(nn.Module):
    """A converted network; ``forward(x, T)`` returns the running-average output at every step.

    Attributes:
        net: the converted module tree (a copy of the ANN with IF layers).
        layer_names: names of the spiking layers in forward order.
        max_batch_steps: images x steps simulated at once; larger batches are split into chunks.
    """

    def __init__(self, net: nn.Module, layer_names: list[str], max_batch_steps: int = DEFAULT_MAX_BATCH_STEPS) -> None:
        super().__init__()
        self.net = net
        self.layer_names = list(layer_names)
        self.max_batch_steps = int(max_batch_steps)
        self.latency = 0  # steps simulated before the T counted ones (COS pre-simulation)

    @property
    def neurons(self) -> list[IFNeuron]:
        """The IF layers in forward order."""
        return [self.net.get_submodule(n) for n in self.layer_names]

    def step_rules(self) -> dict[IFNeuron, StepRule]:
        """The step rules this network always runs with (none; a variant such as lock-step COS has its own)."""
        return {}

    def simulate(
        self,
        x: torch.Tensor,
        timesteps: int,
        *,
        rules: dict[IFNeuron, StepRule] | None = None,
        hooks: dict[IFNeuron, Sequence[StepHook]] | None = None,
    ) -> torch.Tensor:
        """One chunk, no averaging: ``x: [B, C, H, W]`` -> per-step outputs ``[T, B, classes]``.

        Args:
            rules: ``{layer: step rule}`` deciding those layers' steps in this call (calibration methods).
            hooks: ``{layer: observers}`` called after each step of those layers in this call (measurements).
        """
        timesteps = check_timesteps(timesteps)
        run = Run(timesteps, x.shape[0], {**self.step_rules(), **(rules or {})}, dict(hooks or {}))
        with running(run):
            out = self.net(x)
        if out.shape[0] == x.shape[0] and timesteps > 1:  # no spiking layer on the path: constant output
            out = out.unsqueeze(0).expand(timesteps, *out.shape)
        return out.reshape(timesteps, x.shape[0], *out.shape[1:])

    def chunk_size(self, timesteps: int, max_batch_steps: int | None = None) -> int:
        """How many images are simulated together for a given T (bounded memory): ``max_batch_steps`` (default:
        this network's, 128 on the CPU) image-steps at most; the per-device budget is
        :func:`ftbc_core.distributed.device_max_batch_steps`."""
        return max(1, (max_batch_steps or self.max_batch_steps) // timesteps)

    def forward(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        """Run T steps on static images.

        Args:
            x: images in [0, 1], ``[B, C, H, W]``.
            timesteps: T.

        Returns:
            ``[T, B, classes]``: at index t, the mean of the output layer over steps ``0..t`` (the SNN's output
            after t+1 steps), so accuracy at every T' <= T comes from one run. With ``latency`` > 0 (COS), that
            many steps run first and are not counted.
        """
        timesteps = check_timesteps(timesteps)
        if not torch.is_floating_point(x):
            raise TypeError(f"the SNN takes float images in [0, 1], got dtype {x.dtype} (convert uint8 pixels "
                            "with ftbc_core.data.to_tensor)")
        total = timesteps + self.latency
        step = self.chunk_size(total)
        outs = [self.simulate(x[i : i + step], total)[self.latency :] for i in range(0, x.shape[0], step)]
        return running_mean(torch.cat(outs, dim=1))


def running_mean(per_step: torch.Tensor) -> torch.Tensor:
    """Cumulative mean over the time axis: ``[T, ...] -> [T, ...]``."""
    counts = torch.arange(1, per_step.shape[0] + 1, device=per_step.device, dtype=per_step.dtype)
    return per_step.cumsum(0) / counts.view(-1, *([1] * (per_step.dim() - 1)))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A traced copy of ``model`` in eval mode with every BatchNorm2d that directly follows a Conv2d (the conv's
    only use) folded into that conv (weight and bias rescaled by the BN's running statistics); every other
    module keeps its name. ``model`` itself is not modified.

    In eval mode BN is an affine map per channel, ``y = (x - μ) / sqrt(σ² + ε) · γ + β``, so the folded conv
    computes the same function up to float rounding, one layer call fewer per pair.
    """
    return fold_batchnorm_graph(trace_model(copy.deepcopy(model).eval(), {}))


@torch.no_grad()
def activation_thresholds(
    ann: nn.Module,
    images: torch.Tensor,
    *,
    mode: str = "percentile",
    percentile: float = 99.9,
    per_channel: bool = False,
    batch_size: int = 256,
    max_samples: int = 1_000_000,
    seed: int = 0,
    mapping: Mapping | None = None,
) -> dict[str, torch.Tensor]:
    """Thresholds for a ReLU network from its activations on (training) images.

    Args:
        images: ``[N, C, H, W]`` in [0, 1].
        mode: ``max`` or ``percentile``.
        per_channel: one threshold per channel instead of per layer.
        max_samples: values kept per layer (a seeded random subsample) to compute a percentile.

    Returns:
        ``{activation call site name: thresholds [C] or [1]}`` (see :mod:`ftbc_core.convert` for the names).
    """
    if mode not in ("max", "percentile"):
        raise ValueError(f"threshold mode must be 'max' or 'percentile', got {mode!r}")
    if images.shape[0] == 0:
        raise ValueError("threshold statistics need at least one image")
    store: dict[str, list[torch.Tensor]] = {site.name: [] for site in activation_sites(ann, mapping)[1]}
    gen = torch.Generator().manual_seed(seed)
    per_batch = max(1, max_samples * batch_size // max(images.shape[0], 1))

    def collect(name: str, out: torch.Tensor) -> None:
        a = out.detach().float().transpose(0, 1).reshape(out.shape[1], -1)  # [C, N*H*W]
        if mode == "max":
            store[name].append(a.amax(dim=1) if per_channel else a.max().view(1))
            return
        keep = min(a.shape[1], max(1, per_batch // a.shape[0]))
        idx = torch.randperm(a.shape[1], generator=gen)[:keep].to(a.device)
        store[name].append(a[:, idx])

    batches = (images[i : i + batch_size] for i in range(0, images.shape[0], batch_size))
    observe_activations(ann, list(batches), collect, mapping)
    result = {}
    for name, chunks in store.items():
        if mode == "max":
            value = torch.stack(chunks).amax(dim=0)
        else:
            a = torch.cat(chunks, dim=1)
            a = a if per_channel else a.reshape(1, -1)
            value = torch.quantile(a, percentile / 100.0, dim=1)
        result[name] = value.clamp_min(1e-4).cpu()
    return result


def to_snn(
    ann: nn.Module,
    *,
    thresholds: str | dict[str, torch.Tensor] = "auto",
    images: torch.Tensor | None = None,
    percentile: float = 99.9,
    per_channel: bool = False,
    v0: str | float = "half",
    max_batch_steps: int = DEFAULT_MAX_BATCH_STEPS,
    channels_last: bool = True,
    fold_bn: bool = True,
    mapping: Mapping | None = None,
) -> SpikingNetwork:
    """Convert an ANN into a :class:`SpikingNetwork`; the ANN itself is not modified.

    Every activation *call* becomes its own IF layer (:mod:`ftbc_core.convert`: a module used twice gives two
    layers, ``F.relu`` gives one); whatever cannot be simulated faithfully raises
    :class:`~ftbc_core.convert.ConversionError` before any work.

    Args:
        ann: a model whose activations the mapping knows (QCFS, ReLU, ReLU6, Hardtanh(0, a), the public QCFS
            code's MyFloor/TCL, functional relu/clamp calls).
        thresholds: ``auto`` (θ from the activation where it has one: QCFS λ, a clip value; ``percentile``
            statistics for plain ReLU), ``lambda`` (every θ from the activation), ``max``, ``percentile``, or
            an explicit ``{call site name: θ [C] or [1]}``.
        images: training images ``[N, C, H, W]`` in [0, 1]; needed for ``max``/``percentile``.
        per_channel: per-channel thresholds from statistics (QCFS λ is per layer).
        v0: initial potential, ``half`` (θ/2, default), ``zero``, or a fraction of θ.
        max_batch_steps: memory bound, images x steps simulated at once.
        channels_last: store conv weights channels-last, so every conv and IF layer works on channels-last
            tensors (oneDNN's native layout on the CPU: no reorder per call; several times faster for the
            16-channel convolutions of ResNet-20). Results equal the contiguous layout's up to float rounding.
        fold_bn: fold every Conv-BN pair into one conv (:func:`fold_batchnorm`); the same function up to float
            rounding, one layer call fewer per pair.
        mapping: extra ``{activation class: fn(module) -> ActivationSpec}`` entries (sinabs-style), e.g. for
            your own clipped activation: ``{MyClip: lambda m: ActivationSpec("MyClip", torch.tensor([m.a]))}``.
    """
    fraction = {"half": 0.5, "zero": 0.0}.get(v0, v0) if isinstance(v0, str) else float(v0)
    if isinstance(fraction, str):
        raise ValueError(f"v0 must be 'half', 'zero' or a number, got {v0!r}")
    _, sites = activation_sites(ann, mapping)
    theta = _thresholds(ann, sites, thresholds, images, percentile, per_channel, mapping)
    device = next(iter(ann.parameters()), torch.zeros(0)).device

    def make_neuron(site: Site) -> IFNeuron:
        return IFNeuron(theta[site.name], v0_fraction=fraction, name=site.name).to(device)

    net, _ = spiking_graph(ann, make_neuron, mapping=mapping, fold_bn=fold_bn)
    net = net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for p in net.parameters():
        p.requires_grad_(False)
    return SpikingNetwork(net, [site.name for site in sites], max_batch_steps=max_batch_steps).eval()


def _thresholds(ann: nn.Module, sites: list[Site], thresholds: str | dict[str, torch.Tensor],
                images: torch.Tensor | None, percentile: float, per_channel: bool,
                mapping: Mapping | None) -> dict[str, torch.Tensor]:
    """θ per call site: given, from the activation (λ, clip value), or from statistics on ``images``."""
    if isinstance(thresholds, dict):
        theta = dict(thresholds)
    else:
        mode = thresholds
        if mode not in ("auto", "lambda", "max", "percentile"):
            raise ValueError(f"unknown threshold mode {mode!r}")
        needs_stats = mode in ("max", "percentile") or (mode == "auto" and any(s.spec.theta is None for s in sites))
        stats = {}
        if needs_stats:
            if images is None:
                raise ValueError("a ReLU network (or threshold mode max/percentile) needs training images for θ")
            stat_mode = "percentile" if mode == "auto" else mode
            stats = activation_thresholds(ann, images, mode=stat_mode, percentile=percentile, per_channel=per_channel,
                                          mapping=mapping)
        theta = {}
        for site in sites:
            if site.spec.theta is not None and mode in ("auto", "lambda"):
                theta[site.name] = site.spec.theta.clamp_min(1e-4)
            elif mode == "lambda":
                raise ValueError(f"layer {site.name!r} is a {site.spec.kind}: it has no λ; use max or percentile "
                                 "thresholds")
            else:
                theta[site.name] = stats[site.name]
    missing = [s.name for s in sites if s.name not in theta]
    if missing:
        raise ValueError(f"no threshold given for layers {missing}")
    return theta
