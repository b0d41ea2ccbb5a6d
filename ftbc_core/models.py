"""The ANN architectures: CIFAR ResNet-20, CIFAR VGG-16 and a small CNN for 28x28 grey images.

Every model takes float images in [0, 1], ``[B, C, H, W]``, and normalises them itself (the constants are
buffers of its first module), so callers never need to know the dataset statistics. Every activation is its
own module instance (QCFS or ReLU), which is what conversion replaces with an IF layer; residual additions and
average pooling are linear and convert as they are.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .neuron import QCFS
from .public_models import MyFloor, QCFSResNet18, QCFSResNet20, QCFSResNet34, QCFSVGG16

__all__ = ["ARCHITECTURES", "ACTIVATIONS", "Normalize", "build_model"]

ActFactory = Callable[[], nn.Module]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the constants travel with the model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-act-conv-BN, plus a (projected) shortcut, then act."""

    def __init__(self, cin: int, cout: int, stride: int, act: ActFactory) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, stride), act(), *_conv_bn(cout, cout))
        self.shortcut = (
            nn.Sequential(*_conv_bn(cin, cout, stride, kernel=1)) if stride != 1 or cin != cout else nn.Identity()
        )
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016): 16-32-64 channels, 3 blocks per stage, global average pooling."""

    def __init__(self, act: ActFactory, num_classes: int, in_channels: int, mean, std) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(*_conv_bn(in_channels, 16), act())
        blocks: list[nn.Module] = []
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1, act))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class VGG16(nn.Module):
    """CIFAR VGG-16: 13 conv-BN-act layers with average pooling, then a 512-512-classes classifier."""

    CONFIG = (64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P")

    def __init__(self, act: ActFactory, num_classes: int, in_channels: int, mean, std, dropout: float = 0.2):
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        cin = in_channels
        for item in self.CONFIG:
            if item == "P":
                layers.append(nn.AvgPool2d(2))
            else:
                layers += [*_conv_bn(cin, int(item)), act()]
                cin = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512), act(), nn.Dropout(dropout),
            nn.Linear(512, 512), act(), nn.Dropout(dropout),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(self.normalize(x)), 1))


class SmallCNN(nn.Module):
    """A small CNN for 28x28 grey images: 3 conv-BN-act layers, 2 average pools, 2 linear layers."""

    def __init__(self, act: ActFactory, num_classes: int, in_channels: int, mean, std) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 32), act(),
            *_conv_bn(32, 32), act(), nn.AvgPool2d(2),
            *_conv_bn(32, 64), act(), nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 128), act(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(self.normalize(x)), 1))


# The networks of the public QCFS code (also used by the COS and FTBC code), for imported checkpoints; the
# number of classes picks VGG-16's classifier as there (1000: the 224x224 ImageNet one, else the 32x32 one).
PUBLIC_ARCHITECTURES: dict[str, type[nn.Module]] = {
    "qcfs-vgg16": QCFSVGG16, "qcfs-resnet18": QCFSResNet18, "qcfs-resnet20": QCFSResNet20,
    "qcfs-resnet34": QCFSResNet34,
}
ARCHITECTURES: dict[str, type[nn.Module]] = {"resnet20": ResNet20, "vgg16": VGG16, "cnn": SmallCNN,
                                             **PUBLIC_ARCHITECTURES}
ACTIVATIONS = ("qcfs", "relu")
INPUT_SHAPES = {"resnet20": (3, 32, 32), "vgg16": (3, 32, 32), "cnn": (1, 28, 28),
                **{name: (3, 32, 32) for name in PUBLIC_ARCHITECTURES}}
_GLOBAL_POOLING = ("resnet20", "qcfs-resnet18", "qcfs-resnet20", "qcfs-resnet34")


def check_input_shape(arch: str, image_shape: tuple[int, int, int], num_classes: int | None = None) -> None:
    """Raise ValueError if ``arch`` cannot take images of ``image_shape`` (H, W, C).

    The ResNets pool globally and take any size; VGG-16 and the small CNN have fixed-size classifiers
    (``qcfs-vgg16``: 224x224 for 1000 classes, 32x32 otherwise; either when ``num_classes`` is not given).
    """
    c, h, w = INPUT_SHAPES[arch]
    hh, ww, cc = image_shape
    if arch in _GLOBAL_POOLING:
        if hh < 8 or ww < 8:
            raise ValueError(f"{arch} needs images of at least 8x8 pixels, got {hh}x{ww}")
        return
    if arch == "qcfs-vgg16":
        sizes = {None: (32, 224), 1000: (224,)}.get(num_classes, (32,))
        if hh != ww or hh not in sizes:
            raise ValueError(f"{arch} takes {' or '.join(f'{s}x{s}' for s in sizes)} images; "
                             f"the data has {hh}x{ww}x{cc}")
        return
    if (hh, ww, cc) != (h, w, c):
        raise ValueError(f"{arch} takes {h}x{w} images with {c} channel(s); the data has {hh}x{ww}x{cc}")


def build_model(
    arch: str,
    activation: str = "qcfs",
    levels: int = 4,
    num_classes: int = 10,
    in_channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    init_threshold: float = 8.0,
) -> nn.Module:
    """Build an ANN by name.

    Args:
        arch: ``resnet20``, ``vgg16``, ``cnn``, or a public QCFS-code network: ``qcfs-vgg16``,
            ``qcfs-resnet18``, ``qcfs-resnet20``, ``qcfs-resnet34`` (whose QCFS layers are ``MyFloor`` modules).
        activation: ``qcfs`` (trainable threshold, ``levels`` quantization levels) or ``relu``.
        in_channels: image channels (default: 3 for the CIFAR models, 1 for ``cnn``).
        mean, std: per-channel normalisation of [0, 1] pixels (default: none).
        init_threshold: initial QCFS λ (trainable; the QCFS paper starts from 8).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if activation == "qcfs" and int(levels) < 1:
        raise ValueError(f"QCFS needs levels >= 1, got {levels}")
    in_channels = in_channels or INPUT_SHAPES[arch][0]
    mean = tuple(mean) if mean is not None else (0.0,) * in_channels
    std = tuple(std) if std is not None else (1.0,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values, got {len(mean)}/{len(std)}")

    def act() -> nn.Module:
        if arch in PUBLIC_ARCHITECTURES:  # the public code's QCFS module and state_dict keys (``up``)
            return MyFloor(init_threshold, levels) if activation == "qcfs" else nn.ReLU()
        return QCFS(levels, init_threshold) if activation == "qcfs" else nn.ReLU()

    return ARCHITECTURES[arch](act, num_classes, in_channels, mean, std)
