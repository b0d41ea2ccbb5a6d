"""The one bias file format: FTBC biases ``{spiking layer: [T, C]}`` in safetensors with string metadata (the
model, the method and its options, T). Written by ``ftbc calibrate`` and the dashboard, read back by
``ftbc evaluate --biases`` and the dashboard's upload; never unpickled."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from .checkpoint import CheckpointError
from .snn import SpikingNetwork

__all__ = ["biases_to_bytes", "read_biases", "apply_biases", "layer_channels", "weights_fingerprint",
           "conversion_fingerprint",
           "MAX_BIAS_BYTES"]

MAX_BIAS_BYTES = 256 * 2**20


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's state_dict (names, shapes and float32 values): which ANN a bias file was fitted on."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def conversion_fingerprint(net: SpikingNetwork) -> str:
    """sha256 of a converted network's layer names, thresholds θ and v0: biases only fit the conversion they
    were fitted on (another threshold mode or v0 moves every membrane potential)."""
    digest = hashlib.sha256()
    for name, neuron in zip(net.layer_names, net.neurons):
        digest.update(f"{name}|{neuron.v0_fraction!r}|".encode())
        digest.update(neuron.theta.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def biases_to_bytes(net: SpikingNetwork, metadata: dict[str, str]) -> bytes:
    """The biases of ``net`` as a safetensors file (``{layer: [T, C]}``) with string metadata."""
    tensors = {name: neuron.bias.detach().cpu().contiguous() for name, neuron in zip(net.layer_names, net.neurons)}
    return st_save_bytes(tensors, metadata={k: str(v) for k, v in metadata.items()})


def read_biases(source: str | Path | bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``({layer: [T, C] float32}, metadata)`` of a bias file (a path or its bytes); one line if it is not one."""
    label = "the bias file" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"bias file {path} does not exist")
        if path.stat().st_size > MAX_BIAS_BYTES:
            raise CheckpointError(f"{path} is larger than {MAX_BIAS_BYTES >> 20} MiB; not a bias file")
        source = path.read_bytes()
    data = bytes(source)
    try:
        tensors = st_load_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except Exception as err:  # safetensors raises several types for garbage input
        raise CheckpointError(f"{label} is not a bias file ({' '.join(str(err).split())[:120]})") from None
    for name, bias in tensors.items():
        if bias.dim() != 2 or not bias.is_floating_point() or not torch.isfinite(bias).all():
            raise CheckpointError(f"{label}: the bias of layer {name!r} is not a finite [T, C] array")
    return {k: v.float() for k, v in tensors.items()}, meta


@torch.no_grad()
def layer_channels(net: SpikingNetwork, image_shape: tuple[int, int, int]) -> dict[str, int]:
    """``{spiking layer: channels}`` from one dry step on a blank image ``(C, H, W)``."""
    found: dict[str, int] = {}
    handles = [n.register_forward_pre_hook(lambda m, args: found.__setitem__(m.name, int(args[0].shape[1])))
               for n in net.neurons]
    try:
        device = next(net.parameters()).device
        net.simulate(torch.zeros(1, *image_shape, device=device), 1)
    finally:
        for h in handles:
            h.remove()
    return found


def apply_biases(net: SpikingNetwork, tensors: dict[str, torch.Tensor], timesteps: int,
                 image_shape: tuple[int, int, int], label: str = "the bias file") -> None:
    """Set ``net``'s biases in place; refuses (one line) a file for another layer set, channel count or a T
    shorter than ``timesteps`` (biases fitted for T serve every T' <= T).

    Args:
        image_shape: one input image ``(C, H, W)``, to learn each layer's channels.
    """
    if sorted(tensors) != sorted(net.layer_names):
        missing = sorted(set(net.layer_names) - set(tensors))
        extra = sorted(set(tensors) - set(net.layer_names))
        what = f"lacks layer {missing[0]!r}" if missing else f"has layer {extra[0]!r}, which this model lacks"
        raise CheckpointError(f"{label} was fitted for another model: it {what}")
    channels_of = layer_channels(net, image_shape)
    for name, neuron in zip(net.layer_names, net.neurons):
        bias = tensors[name]
        channels = channels_of[name]
        if bias.shape[1] not in (1, channels):
            raise CheckpointError(f"{label}: layer {name!r} has {bias.shape[1]} channels of biases, the model's "
                                  f"layer has {channels}")
        if bias.shape[0] < timesteps:
            raise CheckpointError(f"{label} holds biases for T = {bias.shape[0]}, shorter than the T = {timesteps} "
                                  "asked for; calibrate for a T at least that large")
        neuron.set_bias(bias)
