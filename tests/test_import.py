"""``ftbc import``: state_dicts of the public QCFS / COS / FTBC code become checkpoints with the same logits.

The reference networks below are typed here from the public code's description (``Models/VGG.py``,
``Models/ResNet.py``, ``modules.py`` of putshua/SNN_conversion_QCFS), independently of
``ftbc_core.public_models``: built with ReLU and max pooling, then every ReLU swapped for the QCFS floor module
and every max pool for an average pool, as the public training script does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ftbc_core.checkpoint import load_checkpoint
from ftbc_core.cli import main
from ftbc_core.public_models import MyFloor
from ftbc_core.snn import to_snn

NORM = {  # the public data loaders' transforms.Normalize constants
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "cifar100": ([n / 255.0 for n in (129.3, 124.1, 112.4)], [n / 255.0 for n in (68.2, 65.4, 70.4)]),
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}
CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


class RefFloor(nn.Module):
    """The public QCFS activation: parameter ``up`` of shape [1], ``t`` levels."""

    def __init__(self, up: float = 8.0, t: int = 32) -> None:
        super().__init__()
        self.up = nn.Parameter(torch.tensor([up]))
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / self.up
        x = torch.floor(x * self.t + 0.5) / self.t
        return torch.clamp(x, 0, 1) * self.up


class RefVGG16(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        cin = 3
        for i, stage in enumerate([[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3], 1):
            mods: list[nn.Module] = []
            for c in stage:
                mods += [nn.Conv2d(cin, c, kernel_size=3, padding=1), nn.BatchNorm2d(c), nn.ReLU(True),
                         nn.Dropout(0.0)]
                cin = c
            setattr(self, f"layer{i}", nn.Sequential(*mods, nn.MaxPool2d(2, 2)))
        width = 512 * 49 if classes == 1000 else 512
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width, 4096), nn.ReLU(True), nn.Dropout(0.0),
                                        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(0.0),
                                        nn.Linear(4096, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layer5(self.layer4(self.layer3(self.layer2(self.layer1(x))))))


class RefBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.residual_function = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual_function(x) + self.shortcut(x))


class RefResNet(nn.Module):
    def __init__(self, counts: list[int], classes: int) -> None:
        super().__init__()
        widths = [64, 128, 256, 512] if len(counts) == 4 else [16, 32, 64]
        self.conv1 = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                                   nn.ReLU(True))
        self.names, cin = [], widths[0]
        for k, (n, w) in enumerate(zip(counts, widths)):
            blocks = []
            for j in range(n):
                blocks.append(RefBlock(cin, w, 1 if k == 0 or j else 2))
                cin = w
            self.names.append(f"conv{k + 2}_x")
            setattr(self, self.names[-1], nn.Sequential(*blocks))
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for name in self.names:
            x = getattr(self, name)(x)
        return self.fc(self.avg_pool(x).view(x.shape[0], -1))


def swap(module: nn.Module, levels: int) -> nn.Module:
    """ReLU -> RefFloor(8, L), MaxPool2d -> AvgPool2d, recursively (what the public script does)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.ReLU):
            setattr(module, name, RefFloor(8.0, levels))
        elif isinstance(child, nn.MaxPool2d):
            setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
        else:
            swap(child, levels)
    return module


def reference(arch: str, dataset: str, levels: int, seed: int, x: torch.Tensor) -> nn.Module:
    """A public-layout network with random weights, BN statistics and ``up`` values that keep every layer alive."""
    torch.manual_seed(seed)
    classes = CLASSES[dataset]
    counts = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3], "resnet20": [3, 3, 3]}
    net = swap(RefVGG16(classes) if arch == "vgg16" else RefResNet(counts[arch], classes), levels).eval()
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.2)

    def pick_up(m: nn.Module, inputs: tuple) -> None:  # random up near the layer's input scale, set once
        scale = float(torch.quantile(inputs[0].flatten()[:100_000].float(), 0.95).clamp_min(1e-3))
        m.up.data.fill_(scale * float(torch.empty(1).uniform_(0.6, 1.4, generator=gen)))

    floors = [m for m in net.modules() if isinstance(m, RefFloor)]
    handles = [m.register_forward_pre_hook(pick_up) for m in floors]
    with torch.no_grad():
        net(normalise(x, dataset))
    for h in handles:
        h.remove()
    assert len({m.up.item() for m in floors}) == len(floors)
    return net


def normalise(x: torch.Tensor, dataset: str) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORM[dataset])
    return (x - mean) / std


def run_import(src: Path, out: Path, arch: str, dataset: str, *extra: str) -> int:
    return main(["import", str(src), "--arch", arch, "--dataset", dataset, "--out", str(out), *extra])


CASES = [("vgg16", "cifar10", 4, 32), ("resnet18", "cifar100", 8, 32), ("resnet20", "cifar10", 2, 32),
         ("resnet34", "cifar100", 16, 32), ("resnet18", "imagenet", 8, 224)]


@pytest.mark.parametrize("arch,dataset,levels,size", CASES, ids=[f"{a}-{d}" for a, d, _, _ in CASES])
def test_imported_model_gives_the_public_models_logits(tmp_path, capsys, arch, dataset, levels, size):
    x = torch.rand(2 if size == 224 else 6, 3, size, size, generator=torch.Generator().manual_seed(3))
    ref = reference(arch, dataset, levels, seed=len(arch) + levels, x=x)
    src = tmp_path / f"{arch}.pth"
    torch.save(ref.state_dict(), src)
    out = tmp_path / "imported" / f"{arch}-{dataset}"
    assert run_import(src, out, arch, dataset, "--levels", str(levels)) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}.safetensors" in printed and f"qcfs-{arch}" in printed

    model, card = load_checkpoint(f"{out}.safetensors")
    assert (card.arch, card.activation, card.levels, card.dataset) == (f"qcfs-{arch}", "qcfs", levels, dataset)
    assert (card.num_classes, card.in_channels, card.image_size) == (CLASSES[dataset], 3, size)
    assert card.mean == pytest.approx(NORM[dataset][0]) and card.std == pytest.approx(NORM[dataset][1])
    assert card.extra["source_sha256"] in card.notes and card.extra["source_file"] == src.name
    assert card.command.startswith("ftbc import")
    floors = [m for m in model.modules() if isinstance(m, MyFloor)]
    assert len(floors) == sum(isinstance(m, RefFloor) for m in ref.modules())
    assert all(m.t == levels for m in floors)
    with torch.no_grad():
        want = ref(normalise(x, dataset))
        got = model(x)
    assert (want - want[0]).abs().amax() > 1e-3 * want.abs().amax() > 0  # alive: the logits depend on the image
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert json.loads(out.with_suffix(".json").read_text())["arch"] == f"qcfs-{arch}"


def test_ftbc_layout_nested_and_dataparallel_files_import(tmp_path):
    """The newer QCFS code that FTBC uses names the threshold ``thresh`` and the block output act ``act``."""
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ref = reference("resnet20", "cifar10", 4, seed=11, x=x)
    renamed = {("module." + k.replace("relu.up", "act.thresh").replace(".up", ".thresh")): v
               for k, v in ref.state_dict().items()}
    assert any(k.endswith("act.thresh") for k in renamed)
    src = tmp_path / "ftbc.pth"
    torch.save({"state_dict": renamed, "L": 4, "epoch": 299}, src)
    out = tmp_path / "ftbc-r20"
    assert run_import(src, out, "qcfs-resnet20", "cifar10", "--from", "ftbc") == 0  # L comes from the file
    model, card = load_checkpoint(out)
    assert card.levels == 4 and card.extra["source"] == "ftbc" and card.extra["source_layout"] == "thresh"
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(normalise(x, "cifar10")), rtol=1e-4, atol=1e-5)
    snn = to_snn(model)  # MyFloor layers are QCFS layers for conversion: θ = up
    assert len(snn.layer_names) == 19
    assert snn(x[:2], 4).shape == (4, 2, 10)


def test_custom_normalisation_is_used(tmp_path):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    ref = reference("resnet20", "cifar10", 4, seed=2, x=x)
    torch.save(ref.state_dict(), tmp_path / "m.pth")
    assert run_import(tmp_path / "m.pth", tmp_path / "m", "resnet20", "cifar10", "--levels", "4",
                      "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25") == 0
    model, card = load_checkpoint(tmp_path / "m.safetensors")
    assert card.mean == (0.5, 0.5, 0.5) and card.std == (0.25, 0.25, 0.25)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref((x - 0.5) / 0.25), rtol=1e-4, atol=1e-5)


class Payload:
    """Unpickling this creates the marker file (builtins.open in write mode)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _small_state(seed: int = 0) -> dict[str, torch.Tensor]:
    x = torch.rand(2, 3, 32, 32)
    return reference("resnet20", "cifar10", 4, seed=seed, x=x).state_dict()


def _bad_files(tmp: Path) -> dict[str, tuple[Path, list[str], str]]:
    """name -> (file, extra CLI args, a phrase the one-line error must contain)."""
    good = tmp / "good.pth"
    torch.save(_small_state(), good)
    files = {}
    trunc = tmp / "truncated.pth"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["truncated"] = (trunc, ["--levels", "4"], "not a readable PyTorch checkpoint")
    torch.save([torch.zeros(3), torch.ones(2)], tmp / "list.pth")
    files["non-dict"] = (tmp / "list.pth", ["--levels", "4"], "not a state_dict")
    torch.save({"a": torch.zeros(1), "b": "text"}, tmp / "mixed.pth")
    files["not-tensors"] = (tmp / "mixed.pth", ["--levels", "4"], "not a dict of tensors")
    files["other-arch"] = (good, ["--levels", "4", "--arch", "resnet18"], "does not fit the public resnet18")
    files["classes"] = (good, ["--levels", "4", "--dataset", "cifar100"], "fc.weight has shape (10, 64)")
    files["no-levels"] = (good, [], "pass --levels")
    files["unknown-dataset"] = (good, ["--levels", "4", "--dataset", "svhn"], "unknown dataset 'svhn'")
    files["unknown-arch"] = (good, ["--levels", "4", "--arch", "vgg11"], "unknown architecture 'vgg11'")
    files["levels-0"] = (good, ["--levels", "0"], "integer >= 1")
    for name, key, value in (("nan", "fc.weight", float("nan")), ("up-0", "conv1.2.up", 0.0)):
        state = _small_state()
        state[key] = state[key].clone().fill_(value)
        torch.save(state, tmp / f"{name}.pth")
        files[name] = (tmp / f"{name}.pth", ["--levels", "4"], "NaN or infinite" if name == "nan" else "must be > 0")
    return files


def test_bad_inputs_are_refused_in_one_line_and_nothing_is_written(tmp_path, capsys):
    cases = _bad_files(tmp_path)
    for name, (src, extra, phrase) in cases.items():
        args = {"--arch": "resnet20", "--dataset": "cifar10"}
        rest = []
        it = iter(extra)
        for item in it:
            if item in args:
                args[item] = next(it)
            else:
                rest.append(item)
        out = tmp_path / "out" / name
        capsys.readouterr()
        assert run_import(src, out, args["--arch"], args["--dataset"], *rest) == 2, name
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and phrase in err and err.startswith("ftbc import: error:"), (name, err)
        assert not (tmp_path / "out").exists(), name


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_pickle_payload_never_runs(tmp_path, capsys, zip_format):
    marker = tmp_path / "MARKER"
    state = {"conv1.0.weight": torch.zeros(16, 3, 3, 3), "evil": Payload(marker)}
    src = tmp_path / "evil.pth"
    torch.save(state, src, _use_new_zipfile_serialization=zip_format)
    torch.load(src, weights_only=False)  # the payload is live: an unsafe load creates the marker
    assert marker.exists()
    marker.unlink()

    assert run_import(src, tmp_path / "out" / "evil", "resnet20", "cifar10", "--levels", "4") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pickled Python code" in err and "open" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_oversized_source_is_refused_before_reading(tmp_path, monkeypatch, capsys):
    import ftbc_core.importer as importer

    src = tmp_path / "big.pth"
    torch.save(_small_state(), src)
    monkeypatch.setattr(importer, "MAX_SOURCE_BYTES", 1000)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must not be reached"))
    assert run_import(src, tmp_path / "out" / "big", "resnet20", "cifar10", "--levels", "4") == 2
    assert "import limit" in capsys.readouterr().err


def test_too_large_for_float32_needs_half(tmp_path, monkeypatch, capsys):
    """ImageNet VGG-16 (138 M parameters) is over the checkpoint size limit in float32; --half stores float16."""
    import ftbc_core.importer as importer

    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    ref = reference("resnet20", "cifar10", 4, seed=4, x=x)  # 0.27 M parameters: 1.1 MB in float32
    torch.save(ref.state_dict(), tmp_path / "r.pth")
    monkeypatch.setattr(importer, "MAX_CHECKPOINT_BYTES", 800_000)
    assert run_import(tmp_path / "r.pth", tmp_path / "out" / "r", "resnet20", "cifar10", "--levels", "4") == 2
    assert "--half" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert run_import(tmp_path / "r.pth", tmp_path / "out" / "r", "resnet20", "cifar10", "--levels", "4",
                      "--half") == 0
    model, card = load_checkpoint(tmp_path / "out" / "r.safetensors")
    assert card.extra["stored_as"] == "float16"
    with torch.no_grad():
        want = ref(normalise(x, "cifar10"))
        assert (model(x) - want).abs().max() < 0.2 * want.abs().max()  # float16 rounding, not exact
