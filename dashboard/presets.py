"""Comparisons a lecturer starts with one click. Each preset is a few experiments built from the sidebar form's
values with some fields replaced, run through the same path as the form (cached results reused)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import streamlit as st

from dashboard import caches, runs, sidebar
from dashboard.models import UPLOAD, ModelRef, shipped_ref
from ftbc_core.calibration import get_method
from ftbc_core.checkpoint import CheckpointError
from ftbc_core.experiment import ExperimentConfig


@dataclass(frozen=True)
class Preset:
    title: str
    description: str
    axis: str  # the compare page's x axis: T or latency


PRESETS = {
    "relu-vs-qcfs": Preset("ReLU vs QCFS model", "The same ResNet-20 trained with plain ReLU and with QCFS "
                           "(resnet20-cifar10-relu vs resnet20-cifar10), each converted without and with FTBC.", "T"),
    "ftbc-vs-cos": Preset("FTBC vs COS at equal latency", "FTBC over T steps against COS with ρ pre-steps over "
                          "T − ρ counted steps (ρ at most T/2): both answer after T steps of the input.",
                          "latency"),
    "t4-vs-t16": Preset("T = 4 vs T = 16", "The same model and methods with 4 and with 16 time steps (the T = 4 "
                        "run is read from the T = 16 one: the simulation is causal).", "T"),
}
RELU_MODEL, QCFS_MODEL = "resnet20-cifar10-relu", "resnet20-cifar10"


def _base_model(values: dict) -> ModelRef:
    """The form's model, or the shown run's when the form is set to upload."""
    if values["model"] != UPLOAD:
        return shipped_ref(values["model"])
    run = runs.current_run()
    if run is None:
        raise CheckpointError("run the uploaded model once first, or choose a shipped model in the sidebar")
    return run.model


def preset_runs(key: str, values: dict) -> list[tuple[ExperimentConfig, ModelRef]]:
    """The experiments of preset ``key`` from the form's ``values`` (see :func:`sidebar.form_values`)."""
    def config(model: ModelRef, methods: tuple[str, ...], **changes) -> tuple[ExperimentConfig, ModelRef]:
        chosen = {**values, "methods": list(methods)}  # each method's own options from the form
        return dataclasses.replace(sidebar.config_from_form(chosen, model), **changes), model

    timesteps = int(values["timesteps"])
    if key == "relu-vs-qcfs":
        return [config(shipped_ref(name), ("none", "ftbc")) for name in (RELU_MODEL, QCFS_MODEL)]
    model = _base_model(values)
    if key == "ftbc-vs-cos":
        timesteps = max(timesteps, 2)  # COS replays its ρ pre-steps on counted frames: ρ <= T - ρ
        form_rho = values["method_options"].get("cos", {}).get("rho", get_method("cos").defaults["rho"])
        rho = min(max(int(form_rho), 1), timesteps // 2)
        ftbc = config(model, ("none", "ftbc"), timesteps=timesteps)
        cos_cfg, _ = config(model, ("cos",), timesteps=timesteps - rho)
        cos_cfg = dataclasses.replace(cos_cfg, method_options={**cos_cfg.method_options, "cos": {"rho": rho}})
        return [ftbc, (cos_cfg, model)]
    if key == "t4-vs-t16":
        methods = tuple(values["methods"]) or ("none", "ftbc")
        return [config(model, methods, timesteps=t) for t in (4, 16)]
    raise ValueError(f"unknown preset {key!r}")


def available(key: str) -> bool:
    """Whether the preset's models are shipped (the ReLU/QCFS pair needs both ResNet-20 checkpoints)."""
    return key != "relu-vs-qcfs" or {RELU_MODEL, QCFS_MODEL} <= set(caches.shipped_models())


def run_preset(key: str) -> list[runs.Run]:
    """Run (or read) a preset's experiments, longest T first so shorter ones are read from it; returns the runs
    in the preset's order ([] after an error, which is shown)."""
    try:
        planned = preset_runs(key, sidebar.form_values())
    except (CheckpointError, ValueError) as err:
        st.error(f"Cannot start '{PRESETS[key].title}': {err}")
        return []
    order = sorted(range(len(planned)), key=lambda i: -planned[i][0].timesteps)
    done: dict[int, runs.Run] = {}
    for i in order:
        run = runs.start_run(*planned[i])
        if run is None:
            return []
        done[i] = run
    shown = [done[i] for i in range(len(planned))]
    runs.show(shown[-1])
    return shown
