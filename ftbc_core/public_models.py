"""The networks of the public QCFS code (Bu et al., ICLR 2022), re-implemented so its checkpoints load one for one.

The public code (github.com/putshua/SNN_conversion_QCFS, reused by the COS and FTBC code) builds VGG-16 and
ResNet-18/20/34 with ``nn.ReLU`` and ``nn.MaxPool2d``, then swaps every ReLU for ``MyFloor(up, t)`` and every max
pool for an average pool of the same size. The module trees below have that final layout, so the public
state_dict keys (``layer1.0.weight``, ``conv2_x.0.residual_function.2.up``, ``classifier.7.bias``, ...) map one
for one onto ``net.<key>`` here. Which classifier VGG-16 gets is decided as in the public code: 512*7*7 inputs
(224x224 ImageNet images) for 1000 classes, 512 inputs (32x32 CIFAR images) otherwise; the ResNets are the same
module tree for every input size (3x3 stride-1 stem, no stem pooling, global average pooling).

Every model here takes [0, 1] images and normalises them itself: :class:`PublicModel` is
``Normalize(mean, std)`` followed by the public network.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .neuron import QCFS

__all__ = ["MyFloor", "TCL", "PUBLIC_NORMALIZATION", "PUBLIC_ARCHS", "PublicModel", "public_network",
           "QCFSVGG16", "QCFSResNet18", "QCFSResNet20", "QCFSResNet34"]

ActFactory = Callable[[], nn.Module]

# The per-channel normalisation of the public code's data loaders (Preprocess/getdataloader.py), on [0, 1] pixels.
PUBLIC_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": (tuple(v / 255 for v in (129.3, 124.1, 112.4)), tuple(v / 255 for v in (68.2, 65.4, 70.4))),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class MyFloor(QCFS):
    """The public code's QCFS activation: ``up · clamp(floor(x/up · t + 1/2) / t, 0, 1)``.

    ``up`` (λ, shape ``[1]``) is the trainable threshold and ``t`` the number of quantization levels L. A
    subclass of :class:`~ftbc_core.neuron.QCFS` (``threshold`` is ``up``, ``levels`` is ``t``), so conversion
    treats it like our own QCFS; the gradient is not needed here (imported models are only evaluated).
    """

    def __init__(self, up: float = 8.0, t: int = 32) -> None:
        nn.Module.__init__(self)  # not QCFS.__init__: the parameter is named ``up`` as in the public state_dicts
        if int(t) < 1:
            raise ValueError(f"MyFloor needs t (levels L) >= 1, got {t}")
        self.up = nn.Parameter(torch.tensor([float(up)]))
        self.t = int(t)

    @property
    def threshold(self) -> nn.Parameter:  # type: ignore[override]
        return self.up

    @property
    def levels(self) -> int:  # type: ignore[override]
        return self.t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the public code's operation order, so quantization boundaries round the same way
        x = torch.floor(x / self.up * self.t + 0.5) / self.t
        return torch.clamp(x, 0.0, 1.0) * self.up

    def extra_repr(self) -> str:
        return f"t={self.t}"


class TCL(nn.Module):
    """The public code's trainable clipping layer (used when L = 0): ``clamp(x, 0, up)``, ``up`` of shape ``[1]``."""

    def __init__(self, up: float = 4.0) -> None:
        super().__init__()
        self.up = nn.Parameter(torch.tensor([float(up)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.relu(x), self.up)


def _conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3, bias: bool = False) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=bias), nn.BatchNorm2d(cout)]


class PublicVGG16(nn.Module):
    """VGG-16 as ``Models/VGG.py`` builds it: five stages ``layer1..layer5`` of conv(+bias)-BN-act-dropout, each
    ending in a 2x2 pool, and a ``Flatten``-Linear-act-Dropout-Linear-act-Dropout-Linear classifier (4096 wide)."""

    STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

    def __init__(self, act: ActFactory, num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        cin = in_channels
        for i, stage in enumerate(self.STAGES, start=1):
            layers: list[nn.Module] = []
            for cout in stage:
                layers += [*_conv_bn(cin, cout, bias=True), act(), nn.Dropout(dropout)]
                cin = cout
            layers.append(nn.AvgPool2d(kernel_size=2, stride=2))
            self.add_module(f"layer{i}", nn.Sequential(*layers))
        features = 512 * 7 * 7 if num_classes == 1000 else 512
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(features, 4096), act(), nn.Dropout(dropout),
            nn.Linear(4096, 4096), act(), nn.Dropout(dropout), nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 6):
            x = getattr(self, f"layer{i}")(x)
        return self.classifier(x)


class PublicBasicBlock(nn.Module):
    """``residual_function`` (conv-BN-act-conv-BN), ``shortcut`` (empty, or 1x1 conv-BN), then the act ``relu``."""

    def __init__(self, cin: int, cout: int, stride: int, act: ActFactory) -> None:
        super().__init__()
        self.residual_function = nn.Sequential(*_conv_bn(cin, cout, stride), act(), *_conv_bn(cout, cout))
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, stride, kernel=1)) if stride != 1 or cin != cout \
            else nn.Sequential()
        self.relu = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual_function(x) + self.shortcut(x))


class PublicResNet(nn.Module):
    """``Models/ResNet.py``'s ResNet (18/34: 64 stem channels, stages ``conv2_x..conv5_x``) and ResNet4Cifar
    (20: 16 stem channels, stages ``conv2_x..conv4_x``); 3x3 stride-1 stem, global average pooling, ``fc``."""

    def __init__(self, blocks: Sequence[int], widths: Sequence[int], act: ActFactory, num_classes: int,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*_conv_bn(in_channels, widths[0]), act())
        cin = widths[0]
        for i, (n, cout) in enumerate(zip(blocks, widths)):
            stage = []
            for j in range(n):
                stage.append(PublicBasicBlock(cin, cout, 2 if i > 0 and j == 0 else 1, act))
                cin = cout
            self.add_module(f"conv{i + 2}_x", nn.Sequential(*stage))
        self.stages = len(blocks)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for i in range(self.stages):
            x = getattr(self, f"conv{i + 2}_x")(x)
        return self.fc(torch.flatten(self.avg_pool(x), 1))


PUBLIC_ARCHS = ("vgg16", "resnet18", "resnet20", "resnet34")


def public_network(arch: str, act: ActFactory, num_classes: int, in_channels: int = 3) -> nn.Module:
    """The public code's network ``arch`` (``vgg16``, ``resnet18``, ``resnet20``, ``resnet34``) with ``act``."""
    if arch == "vgg16":
        return PublicVGG16(act, num_classes, in_channels)
    if arch == "resnet18":
        return PublicResNet((2, 2, 2, 2), (64, 128, 256, 512), act, num_classes, in_channels)
    if arch == "resnet34":
        return PublicResNet((3, 4, 6, 3), (64, 128, 256, 512), act, num_classes, in_channels)
    if arch == "resnet20":
        return PublicResNet((3, 3, 3), (16, 32, 64), act, num_classes, in_channels)
    raise ValueError(f"unknown public architecture {arch!r}; choose one of {', '.join(PUBLIC_ARCHS)}")


class PublicModel(nn.Module):
    """``Normalize(mean, std)`` (module ``normalize``) followed by a public network (module ``net``)."""

    public_arch = ""

    def __init__(self, act: ActFactory, num_classes: int, in_channels: int, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__()
        from .models import Normalize  # noqa: PLC0415  (models imports this module for its registry)

        self.normalize = Normalize(mean, std)
        self.net = public_network(self.public_arch, act, num_classes, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


class QCFSVGG16(PublicModel):
    """The QCFS code's VGG-16 (CIFAR classifier, or the 224x224 ImageNet one for 1000 classes)."""

    public_arch = "vgg16"


class QCFSResNet18(PublicModel):
    """The QCFS code's ResNet-18 (3x3 stride-1 stem at every input size)."""

    public_arch = "resnet18"


class QCFSResNet20(PublicModel):
    """The QCFS code's CIFAR ResNet-20 (``ResNet4Cifar``)."""

    public_arch = "resnet20"


class QCFSResNet34(PublicModel):
    """The QCFS code's ResNet-34 (3x3 stride-1 stem at every input size)."""

    public_arch = "resnet34"
