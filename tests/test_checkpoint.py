"""Checkpoints: round trip, and a one-line error for every kind of bad file."""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import randomize
from ftbc_core.checkpoint import CheckpointError, ModelCard, load_checkpoint, read_card, save_checkpoint
from ftbc_core.models import build_model


def _card(**changes) -> ModelCard:
    base = dict(name="tiny", arch="cnn", activation="qcfs", levels=4, dataset="mnist", num_classes=10,
                in_channels=1, image_size=28, class_names=tuple("0123456789"), mean=(0.1307,), std=(0.3081,),
                epochs=1, seed=0, command="ftbc train ...", ann_test_accuracy=12.5, date="2026-11-25")
    base.update(changes)
    return ModelCard(**base)


@pytest.fixture
def saved(tmp_path: Path):
    torch.manual_seed(0)
    model = randomize(build_model("cnn", "qcfs", 4, mean=(0.1307,), std=(0.3081,)), threshold=1.3)
    path = save_checkpoint(model, _card(), tmp_path / "tiny")
    return model, path


def test_round_trip_is_exact(saved):
    model, path = saved
    assert path.suffix == ".safetensors" and path.with_suffix(".json").exists()
    loaded, card = load_checkpoint(path)
    assert card == _card()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert not loaded.training
    assert json.loads(path.with_suffix(".json").read_text())["ann_test_accuracy"] == 12.5
    assert read_card(path).arch == "cnn"


def test_half_storage_rounds_to_float16(tmp_path):
    model = build_model("cnn", "qcfs", 4)
    path = save_checkpoint(model, _card(), tmp_path / "half", half=True)
    loaded, _ = load_checkpoint(path)
    w = model.state_dict()["features.0.weight"]
    assert torch.equal(loaded.state_dict()["features.0.weight"], w.half().float())
    assert loaded.state_dict()["features.0.weight"].dtype == torch.float32


def test_loading_by_name_without_suffix(saved):
    _, path = saved
    load_checkpoint(path.with_suffix(""))


def test_wrong_architecture_is_refused(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="holds a cnn, not a resnet20"):
        load_checkpoint(path, arch="resnet20")


def test_dataset_mismatch_is_refused(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="trained on mnist, not cifar10"):
        load_checkpoint(path, dataset="cifar10")


def test_card_that_does_not_match_the_weights(tmp_path):
    model = build_model("cnn", "qcfs", 4)
    path = save_checkpoint(model, _card(arch="resnet20", in_channels=3, mean=(0, 0, 0), std=(1, 1, 1)),
                           tmp_path / "liar")
    with pytest.raises(CheckpointError, match="does not fit a resnet20"):
        load_checkpoint(path)


def test_wrong_number_of_classes(tmp_path):
    model = build_model("cnn", "qcfs", 4, num_classes=10)
    path = save_checkpoint(model, _card(num_classes=7), tmp_path / "seven")
    with pytest.raises(CheckpointError, match="7 classes"):
        load_checkpoint(path)


def test_truncated_file(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)


@pytest.mark.parametrize("content", [b"", b"abc", b"\x00" * 64, os.urandom(4096), b"PK\x03\x04" + b"z" * 100])
def test_files_that_are_not_checkpoints(tmp_path, content):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_checkpoint(content)  # as an upload


def test_missing_file():
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint("/nonexistent/model.safetensors")


def test_safetensors_without_card(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no FTBC model card"):
        load_checkpoint(path)


def test_nan_weights_are_refused(tmp_path):
    model = build_model("cnn", "qcfs", 4)
    with torch.no_grad():
        model.classifier[0].weight[0, 0] = float("nan")
    path = save_checkpoint(model, _card(), tmp_path / "nan")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(path)


def test_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"state_dict": Payload()}))
    torch_path = tmp_path / "evil.pt"
    torch_path.write_bytes(pickle.dumps(Payload()))
    for p in (path, torch_path):
        with pytest.raises(CheckpointError):
            load_checkpoint(p)
        with pytest.raises(CheckpointError):
            load_checkpoint(p.read_bytes())
    assert not marker.exists()


def test_card_with_bad_json(tmp_path):
    path = tmp_path / "badcard.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"ftbc_card": "{not json"})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_set_card_notes_rewrites_only_the_notes(saved):
    import importlib.util

    script = Path(__file__).parents[1] / "tools" / "set_card_notes.py"
    spec = importlib.util.spec_from_file_location("set_card_notes", script)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model, path = saved
    before = read_card(path)
    tool.set_notes(path.with_suffix(""), "resumed with other speed settings")
    loaded, card = load_checkpoint(path)
    assert card.notes == "resumed with other speed settings"
    assert {**vars(card), "notes": ""} == {**vars(before), "notes": ""}
    assert json.loads(path.with_suffix(".json").read_text())["notes"] == card.notes
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_relu_checkpoint_with_zero_levels_round_trips_and_qcfs_needs_levels(tmp_path):
    # ftbc train writes levels = 0 on a ReLU model's card; the card check once refused it, so no trained ReLU
    # model could be loaded (found when the shipped resnet20-cifar10-relu would not load)
    torch.manual_seed(0)
    relu = build_model("cnn", "relu", 4, mean=(0.1307,), std=(0.3081,)).eval()
    path = save_checkpoint(relu, _card(activation="relu", levels=0), tmp_path / "relu")
    loaded, card = load_checkpoint(path)
    assert card.activation == "relu" and card.levels == 0
    assert read_card(path).levels == 0
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), relu(x))
    bad = save_checkpoint(build_model("cnn", "qcfs", 4), _card(levels=0), tmp_path / "qcfs0")
    with pytest.raises(CheckpointError, match="levels must be an integer >= 1 for QCFS"):
        load_checkpoint(bad)
