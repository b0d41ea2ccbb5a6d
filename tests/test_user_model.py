"""Bring your own model: --model-code package.module:factory --weights FILE.safetensors on the CLI."""

import json
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from ftbc_core.cli import main

CODE = textwrap.dedent('''
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 14 * 14, 10)

        def forward(self, x):
            x = F.avg_pool2d(F.relu(self.conv(x)), 2)
            return self.fc(x.flatten(1))

    def build():
        return Net()

    def wrong():
        return nn.Linear(3, 3)
''')


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(CODE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib.util

    spec = importlib.util.spec_from_file_location("my_models_ref", tmp_path / "my_models.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    torch.manual_seed(0)
    weights = tmp_path / "net.safetensors"
    save_file(ref.build().state_dict(), str(weights))
    return tmp_path, weights


def test_evaluate_and_calibrate_a_users_model(user_code, capsys):
    folder, weights = user_code
    out = folder / "r.json"
    args = ["--model-code", "my_models:build", "--weights", str(weights), "--dataset", "mnist", "--limit", "40"]
    assert main(["evaluate", *args, "--timesteps", "1,4", "--methods", "none,ftbc", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "my_models:build" and {r["method"] for r in result["rows"]} == {"none", "ftbc"}
    biases = folder / "b.safetensors"
    assert main(["calibrate", *args[:6], "--timesteps", "4", "--out", str(biases)]) == 0
    assert biases.is_file()


@pytest.mark.parametrize("extra, message", [
    (["--model-code", "my_models:nothing", "--dataset", "mnist"], "has no callable 'nothing'"),
    (["--model-code", "no_such_module:build", "--dataset", "mnist"], "cannot import 'no_such_module'"),
    (["--model-code", "my_models", "--dataset", "mnist"], "must be package.module:factory"),
    (["--model-code", "my_models:build"], "needs --dataset"),
    (["--model-code", "my_models:wrong", "--dataset", "mnist"], "cannot take mnist images"),
    (["--model-code", "my_models:build", "--dataset", "cifar10"], "cannot take cifar10 images"),
    (["--model-code", "my_models:build", "--dataset", "mnist", "--weights", "net.pth"], "must be a .safetensors"),
    (["--model", "cnn-mnist", "--dataset", "mnist"], "--dataset only go with --model-code"),
    ([], "give either --model"),
])
def test_bad_user_model_arguments_end_in_one_line(user_code, capsys, extra, message):
    assert main(["evaluate", *extra, "--limit", "4", "--timesteps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_weights_of_another_model_are_refused(user_code, capsys):
    folder, _ = user_code
    other = folder / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    assert main(["evaluate", "--model-code", "my_models:build", "--weights", str(other), "--dataset", "mnist"]) == 2
    assert "does not fit the model: missing 'conv.weight'" in capsys.readouterr().err
