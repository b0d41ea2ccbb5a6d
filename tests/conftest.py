"""Shared fixtures: tiny seeded models and images, so the math tests run in seconds."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from ftbc_core.models import build_model
from ftbc_core.neuron import QCFS

torch.set_num_threads(int(os.environ.get("FTBC_TEST_THREADS", min(2, torch.get_num_threads()))))


def randomize(model: nn.Module, seed: int = 0, threshold: float | None = None) -> nn.Module:
    """Give BatchNorm non-trivial statistics (and QCFS thresholds) so converted nets are not degenerate."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.5)
        if isinstance(m, QCFS) and threshold is not None:
            m.threshold.data.fill_(threshold)
    return model.eval()


def module_activations(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The QCFS/ReLU modules of a model whose activations are each used once, in registration order: an
    independent listing for tests (the conversion front end traces call sites itself)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QCFS, nn.ReLU))]


@pytest.fixture
def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return randomize(build_model("cnn", "qcfs", 4), threshold=1.0)


@pytest.fixture
def mnist_like() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(48, 1, 28, 28, generator=gen)


@pytest.fixture
def calls(monkeypatch):
    """The experiments the dashboard actually computed (not read from its cache), as the core received them."""
    from dashboard import runs  # local: only the dashboard tests import streamlit

    seen = []
    real = runs.run_experiment

    def counting(cfg, **kwargs):
        seen.append(cfg)
        return real(cfg, **kwargs)

    monkeypatch.setattr(runs, "run_experiment", counting)
    return seen
