"""The ``ftbc`` command line end to end, on tiny generated data and the bundled samples."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ftbc_core.cli import main


@pytest.fixture
def tiny_mnist_dir(tmp_path: Path) -> Path:
    """A fake MNIST in the .npz layout: 200 train and 60 test images with learnable labels."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    for split, n in (("train", 200), ("test", 60)):
        y = rng.integers(0, 10, n)
        x = np.zeros((n, 28, 28), np.uint8)
        for i, label in enumerate(y):  # a bright bar whose row encodes the class
            x[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        x = np.clip(x + rng.integers(0, 30, x.shape), 0, 255).astype(np.uint8)
        np.savez_compressed(root / "mnist" / f"{split}.npz", x=x, y=y.astype(np.int64))
    return root


def test_train_then_evaluate_with_json(tiny_mnist_dir, tmp_path, capsys):
    out = tmp_path / "models" / "tiny"
    code = main(["train", "--arch", "cnn", "--dataset", "mnist", "--data-dir", str(tiny_mnist_dir), "--out",
                 str(out), "--epochs", "2", "--batch-size", "50", "--lr", "0.05", "--init-threshold", "2",
                 "--threads", "1", "--notes", "a tiny test run"])
    assert code == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["arch"] == "cnn" and card["epochs"] == 2 and card["command"].startswith("ftbc train")
    assert card["notes"] == "a tiny test run" and isinstance(card["extra"]["bf16_autocast"], bool)
    # the labels are learnable (a bar whose row is the class): 2 epochs beat chance (10 %) by far
    assert card["ann_test_accuracy"] >= 50, card["ann_test_accuracy"]
    assert (out.parent / "tiny.resume.pt").exists()

    result = tmp_path / "res.json"
    code = main(["evaluate", "--model", str(out) + ".safetensors", "--data-dir", str(tiny_mnist_dir),
                 "--timesteps", "1,2,4", "--methods", "none,ftbc,cos", "--limit", "30", "--calib-batches", "1",
                 "--calib-batch-size", "16", "--json", str(result), "--threads", "1"])
    assert code == 0
    payload = json.loads(result.read_text())
    assert payload["n_images"] == 30 and payload["dataset"] == "mnist"
    assert {(r["method"], r["T"]) for r in payload["rows"]} == {(m, t) for m in ("none", "ftbc", "cos")
                                                                for t in (1, 2, 4)}
    best = max(r["accuracy"] for r in payload["rows"] if r["T"] == 4)
    assert best >= 40, payload["rows"]
    printed = capsys.readouterr().out
    assert "ANN accuracy" in printed and "ftbc" in printed


def test_resume_continues_after_the_last_epoch(tiny_mnist_dir, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["train", "--arch", "cnn", "--dataset", "mnist", "--data-dir", str(tiny_mnist_dir), "--out", str(out),
            "--batch-size", "100", "--threads", "1", "--init-threshold", "2"]
    assert main(args + ["--epochs", "1"]) == 0
    assert main(args + ["--epochs", "2", "--resume"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert [h["epoch"] for h in card["extra"]["history"]] == [1, 2]


def test_evaluate_without_data_dir_uses_the_bundled_sample(tmp_path, capsys):
    result = tmp_path / "r.json"
    code = main(["evaluate", "--model", "cnn-mnist", "--timesteps", "1,2", "--methods", "none", "--limit", "20",
                 "--json", str(result), "--threads", "1"])
    assert code == 0
    captured = capsys.readouterr()
    assert "bundled mnist eval sample" in captured.err
    assert json.loads(result.read_text())["n_images"] == 20


def test_calibrate_writes_biases_next_to_the_model(tmp_path, capsys):
    from ftbc_core.assets import resolve_checkpoint
    from ftbc_core.checkpoint import load_checkpoint
    from ftbc_core.biases import apply_biases, read_biases
    from ftbc_core.snn import to_snn

    out = tmp_path / "b.safetensors"
    code = main(["calibrate", "--model", "cnn-mnist", "--timesteps", "4", "--calib-batches", "1",
                 "--calib-batch-size", "16", "--out", str(out), "--threads", "1"])
    assert code == 0
    ann, _ = load_checkpoint(resolve_checkpoint("cnn-mnist"))
    snn = to_snn(ann)
    tensors, meta = read_biases(out)
    apply_biases(snn, tensors, 4, (1, 28, 28))
    assert meta["method"] == "ftbc" and meta["timesteps"] == "4"
    assert all(n.bias.shape[0] == 4 for n in snn.neurons)


@pytest.mark.parametrize("args,message", [
    (["evaluate", "--model", "no-such-model"], "no model 'no-such-model'"),
    (["evaluate", "--model", "cnn-mnist", "--timesteps", "0"], "between 1 and"),
    (["evaluate", "--model", "cnn-mnist", "--methods", "magic"], "unknown method 'magic'"),
    (["evaluate", "--model", "cnn-mnist", "--data-dir", "/nonexistent/dir"], "does not exist"),
    (["evaluate", "--model", "cnn-mnist", "--alpha", "-1", "--timesteps", "2", "--limit", "5"], "alpha"),
    (["calibrate", "--model", "cnn-mnist", "--method", "cos"], "fits no biases"),
])
def test_bad_input_is_one_line_on_stderr(args, message, capsys):
    code = main(args + ["--threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert main(["evaluate", "--model", str(bad), "--threads", "1"]) == 2
    assert "not a safetensors checkpoint" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "ftbc_core", "models"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cnn-mnist" in proc.stdout


def test_init_from_starts_at_the_given_weights_and_refuses_another_model(tiny_mnist_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    base = tmp_path / "base"
    common = ["--arch", "cnn", "--dataset", "mnist", "--data-dir", str(tiny_mnist_dir), "--batch-size", "50",
              "--init-threshold", "2", "--threads", "1"]
    assert main(["train", *common, "--out", str(base), "--epochs", "2", "--lr", "0.05"]) == 0
    tuned = tmp_path / "tuned"
    # lr 1e-9: one epoch leaves the weights where they started, so the tuned model is the base model
    assert main(["train", *common, "--out", str(tuned), "--epochs", "1", "--lr", "1e-9", "--init-from",
                 str(base) + ".safetensors"]) == 0
    a, b = load_file(str(base) + ".safetensors"), load_file(str(tuned) + ".safetensors")
    weights = [k for k in a if "running" not in k and "num_batches" not in k]  # BN statistics do move
    assert weights and all(np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-6) for k in weights)
    cards = [json.loads(p.with_suffix(".json").read_text()) for p in (base, tuned)]
    assert abs(cards[1]["ann_test_accuracy"] - cards[0]["ann_test_accuracy"]) <= 5
    assert cards[1]["extra"]["init_from"].endswith("base.safetensors")
    capsys.readouterr()
    # a model of another activation (or architecture) is refused in one line, exit code 2
    assert main(["train", *common, "--out", str(tmp_path / "x"), "--epochs", "1", "--activation", "relu",
                 "--init-from", str(base) + ".safetensors"]) == 2
    err = capsys.readouterr().err
    assert "--init-from" in err and "qcfs" in err and len(err.strip().splitlines()) == 1
