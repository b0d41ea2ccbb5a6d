"""The sidebar experiment form, the caches and the per-session state every page reads.

Caches are shared by all sessions and hold objects nobody mutates: models (``st.cache_resource``) are deep-copied
before anything runs on them (runs attach temporary hooks), results (``st.cache_data``) are frozen dataclasses
keyed by the full experiment configuration. What a session is looking at lives only in ``st.session_state``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect as pysource
import json
import os
import time
from pathlib import Path
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch
from torch import nn

from ftbc_core.assets import list_pretrained, load_images, resolve_checkpoint
from ftbc_core.calibration import METHODS
from ftbc_core.checkpoint import CheckpointError, ModelCard, load_checkpoint
from ftbc_core.data import DataError, ImageArrays, get_info
from ftbc_core.experiment import ExperimentConfig, ExperimentResult, calibration_images, prepare_model, run_experiment
from ftbc_core.image_trace import ImageTrace, network_from_report, trace_image
from ftbc_core.importer import SOURCES, import_model
from ftbc_core.memory import available_memory_bytes, estimate_memory_bytes
from ftbc_core.public_models import PUBLIC_ARCHS, PUBLIC_NORMALIZATION
from ftbc_core.snn import DEFAULT_MAX_BATCH_STEPS, SpikingNetwork, check_timesteps
from ftbc_core.devices import check_device

from dashboard import figures

UPLOAD = "upload a checkpoint…"
# T = 8: where FTBC matters most in a lecture (about 3 points on ResNet-20, under 1 point at T = 16), and a first
# run that renders in about 16 s on 2 cores (benchmarks/README.md, dashboard latency); the form takes 1-64.
DEFAULTS = {"timesteps": 8, "limit": 200, "record_images": 100, "methods": ["none", "ftbc"], "alpha": 0.5,
            "batches": 4, "batch_size": 32, "rho": 4}
MEMORY_FRACTION = 0.25  # refuse runs whose estimated peak exceeds this share of the available memory
BIAS_METHODS = ("ftbc", "ftbc-exact", "ftbc-layer")


@dataclass(frozen=True)
class Run:
    """A finished experiment as this session shows it.

    Attributes:
        key: cache key of the stored simulation (its T may be larger than the one shown).
        config: the configuration asked for (T = the shown one).
        model_ref: ``("shipped", name)`` or ``("upload", sha256)``.
        result: the result shown (``stored.truncated(T)`` when read from a longer run).
    """

    key: str
    config: ExperimentConfig
    model_ref: tuple[str, str]
    result: ExperimentResult


def defaults() -> dict:
    """Form defaults, overridable with a JSON object in ``FTBC_DASHBOARD_DEFAULTS`` (used by tests)."""
    values = dict(DEFAULTS)
    values.update(json.loads(os.environ.get("FTBC_DASHBOARD_DEFAULTS", "{}") or "{}"))
    return values


def config_key(cfg: ExperimentConfig, drop: tuple[str, ...] = ()) -> str:
    """The configuration as canonical JSON (the cache key), optionally without some fields."""
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in drop}
    return json.dumps(data, sort_keys=True, default=list)


# -- caches (shared, never mutated) ------------------------------------------------------------------------
@st.cache_resource(ttl=60, show_spinner=False)
def shipped_models() -> dict[str, ModelCard]:
    """``{name: card}`` of ``pretrained/`` (re-read every minute: models may be added while the app runs)."""
    return list_pretrained()


@st.cache_resource(max_entries=6, show_spinner="loading the model…")
def load_shipped(name: str) -> tuple[nn.Module, ModelCard]:
    return load_checkpoint(resolve_checkpoint(name))


@st.cache_resource(max_entries=4, show_spinner="reading the checkpoint…")
def load_uploaded(key: str, _data: bytes) -> tuple[nn.Module, ModelCard]:
    """A ``.safetensors`` checkpoint (key: its sha256), or a public code's ``.pth`` imported through the same
    path as ``ftbc import`` (key: ``sha256:source:arch:dataset:levels:file name``)."""
    if ":" not in key:
        return load_checkpoint(_data)
    digest, source, arch, dataset, levels, name = key.split(":", 5)
    return import_model(_data, name, source=source, arch=arch, dataset=dataset, levels=int(levels),
                        name=f"{Path(name).stem} (imported)")


def model_for(model_ref: tuple[str, str]) -> tuple[nn.Module, ModelCard]:
    """The cached ANN and card of a run's model (an upload's bytes are kept in this session)."""
    kind, name = model_ref
    if kind == "shipped":
        return load_shipped(name)
    return load_uploaded(name, st.session_state["uploads"][name])


@st.cache_resource(max_entries=4, show_spinner="loading the evaluation images…")
def evaluation_images(dataset: str, data_dir: str | None, limit: int | None) -> ImageArrays:
    data, _ = load_images(dataset, "test", data_dir)
    return data.subset(slice(0, limit)) if limit is not None else data


@st.cache_data(max_entries=24, show_spinner=False)
def _stored_result(key: str, _result: ExperimentResult | None = None) -> ExperimentResult:
    """The result cache, keyed by the full configuration: a miss raises (exceptions are not cached), and
    calling with ``_result`` stores it. Computing happens outside so progress can be shown."""
    if _result is None:
        raise LookupError(key)
    return _result


def cached_result(key: str) -> ExperimentResult | None:
    try:
        return _stored_result(key)
    except LookupError:
        return None


@st.cache_resource(max_entries=4, show_spinner="rebuilding the calibrated networks…")
def calibrated_networks(key: str, _run: Run, _ann: nn.Module, _card: ModelCard) -> dict[str, SpikingNetwork]:
    """Every method's network of a stored run, rebuilt from its reports (biases, ρ) without recalibrating."""
    cfg = _run.config
    device = check_device(cfg.device)
    calib = torch.empty(0)
    if _card.activation != "qcfs":  # ReLU thresholds come from the same calibration images as in the run
        train, _ = load_images(_card.dataset, "train", cfg.data_dir)
        calib = calibration_images(train, cfg.calib_images, cfg.seed, get_info(_card.dataset).num_classes)
    _, _, snn = prepare_model(copy.deepcopy(_ann), _card, device, calib)
    stored = cached_result(key) or _run.result
    return {m: network_from_report(snn, stored.reports[m]) for m in stored.methods}


@st.cache_data(max_entries=128, show_spinner=False)
def image_trace(key: str, method: str, index: int, layer: str, timesteps: int, _net: SpikingNetwork,
                _x: torch.Tensor) -> ImageTrace:
    """:func:`trace_image` on a private copy of the (shared) network."""
    return trace_image(copy.deepcopy(_net), _x, timesteps, layer)


# -- the session's run -------------------------------------------------------------------------------------
def current_run() -> Run | None:
    return st.session_state.get("run")


RUN_HINT = "Choose an experiment in the sidebar and press **Run** (the defaults take a few seconds)."


def require_run() -> Run:
    """The session's finished run, or a hint to start one (and stop this page)."""
    run = current_run()
    if run is None:
        st.info(RUN_HINT)
        st.stop()
    return run


def require_measured_run() -> tuple[Run, list[str]]:
    """The session's run and the methods that have measurements (or a warning, and this page stops)."""
    run = require_run()
    measured = [m for m in run.result.methods if run.result.measurements.get(m) is not None]
    if not measured:
        st.warning("This run has no measurements.")
        st.stop()
    return run, measured


def _memory_check(ann: nn.Module, card: ModelCard, cfg: ExperimentConfig) -> str | None:
    """A message if the run's estimated peak memory exceeds :data:`MEMORY_FRACTION` of what is available."""
    shape = (card.in_channels, card.image_size, card.image_size)
    latency = int(cfg.method_options.get("rho", 0)) if "cos" in cfg.methods else 0
    steps = check_timesteps(cfg.timesteps) + latency  # a clear message for T <= 0 (not a division by zero)
    chunk = min(cfg.batch_size, max(1, DEFAULT_MAX_BATCH_STEPS // steps))  # SpikingNetwork.chunk_size
    need = estimate_memory_bytes(ann, shape, steps, chunk)
    if any(m in BIAS_METHODS for m in cfg.methods):
        need = max(need, estimate_memory_bytes(ann, shape, cfg.timesteps, int(cfg.method_options["batch_size"])))
    have = available_memory_bytes()
    if need > MEMORY_FRACTION * have:
        return (f"This run would need about {need / 2**30:.1f} GiB, more than {MEMORY_FRACTION:.0%} of the "
                f"{have / 2**30:.1f} GiB available: lower T or the calibration batch size.")
    return None


def _find_stored(cfg: ExperimentConfig) -> tuple[str, ExperimentResult] | None:
    """A stored run of this configuration, or of the same one with a larger T (read truncated)."""
    key = config_key(cfg)
    hit = cached_result(key)
    if hit is not None:
        return key, hit
    base = config_key(cfg, drop=("timesteps",))
    for other in st.session_state.get("history", []):
        other_cfg = json.loads(other)
        if other_cfg.pop("timesteps") >= cfg.timesteps and json.dumps(other_cfg, sort_keys=True) == base:
            hit = cached_result(other)
            if hit is not None:
                return other, hit.truncated(cfg.timesteps)
    return None


PROGRESS_INTERVAL_S = 0.25  # at most 4 progress updates per second: each one is a message the browser re-renders


def _throttled(bar, interval: float = PROGRESS_INTERVAL_S):
    """A progress callback that updates ``bar`` at most every ``interval`` seconds (and always at the end)."""
    last = [float("-inf")]

    def update(fraction: float, message: str) -> None:
        now = time.perf_counter()
        if now - last[0] >= interval or fraction >= 1.0:
            last[0] = now
            bar.progress(min(max(fraction, 0.0), 1.0), text=message)

    return update


def start_run(cfg: ExperimentConfig, model_ref: tuple[str, str]) -> None:
    """Run (or read from the cache) an experiment and make it this session's current run."""
    try:
        ann, card = model_for(model_ref)
        found = _find_stored(cfg)
        if found is None:
            work = copy.deepcopy(ann)  # runs attach hooks: never on the shared cached model
            problem = _memory_check(work, card, cfg)
            if problem:
                st.error(problem)
                return
            bar = st.progress(0.0, text="starting…")
            start = time.perf_counter()
            result = run_experiment(cfg, model=work, card=card, progress=_throttled(bar))
            bar.empty()
            key = config_key(cfg)
            _stored_result(key, _result=result)
            st.toast(f"Finished in {time.perf_counter() - start:.1f} s")
            found = key, result
    except (CheckpointError, DataError, ValueError) as err:
        hint = " Choose 'data folder' and give the dataset's folder." if isinstance(err, DataError) and \
            cfg.data_dir is None else ""
        st.error((str(err).splitlines()[0] if str(err) else type(err).__name__) + hint)
        return
    except Exception as err:  # anything else still ends as a message, not a traceback
        st.error(f"The experiment failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return
    key, result = found
    history = [k for k in st.session_state.get("history", []) if k != key]
    st.session_state["history"] = (history + [key])[-20:]
    st.session_state["run"] = Run(key, cfg, model_ref, result)


# -- the sidebar form --------------------------------------------------------------------------------------
def _model_ref(choice: str, upload, public: dict) -> tuple[str, str] | None:
    """Turn the form's model fields into a model reference; shows an error and returns None if unusable.

    Args:
        public: the import fields for a public code's ``.pth`` (source, arch, dataset, levels).
    """
    if choice != UPLOAD:
        return "shipped", choice
    if upload is None:
        st.error("Choose a checkpoint file to upload (.safetensors, or a public QCFS/COS/FTBC .pth), or pick a "
                 "shipped model.")
        return None
    data = upload.getvalue()
    key = hashlib.sha256(data).hexdigest()
    if Path(upload.name).suffix.lower() in (".pth", ".pt"):
        key = ":".join([key, public["source"], public["arch"], public["dataset"], str(public["levels"]),
                        upload.name.replace(":", "_")])
    try:
        load_uploaded(key, data)
    except CheckpointError as err:
        st.error(f"Cannot use {upload.name}: {err}")
        return None
    st.session_state.setdefault("uploads", {})[key] = data
    return "upload", key


def experiment_sidebar() -> None:
    """The experiment form in the sidebar; pressing Run starts (or reads) the experiment."""
    values = defaults()
    names = list(shipped_models())
    preferred = os.environ.get("FTBC_DASHBOARD_DEFAULT_MODEL", "resnet20-cifar10")
    default_model = preferred if preferred in names else (names[0] if names else UPLOAD)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with st.sidebar:
        st.header("Experiment")
        with st.form("experiment"):
            choices = names + [UPLOAD]
            choice = st.selectbox("Model", choices, index=choices.index(default_model), key="model")
            upload = st.file_uploader("Checkpoint (when uploading)", type=["safetensors", "pth", "pt"], key="upload",
                                      help="A .safetensors made by ftbc train / ftbc import, or a .pth state dict "
                                           "of the public QCFS, COS or FTBC code (fill in what it is below).")
            with st.expander("A public .pth: what it is"):
                public = {"source": st.selectbox("Written by", list(SOURCES), key="pth_source"),
                          "arch": st.selectbox("Architecture", list(PUBLIC_ARCHS), key="pth_arch"),
                          "dataset": st.selectbox("Dataset", list(PUBLIC_NORMALIZATION), key="pth_dataset"),
                          "levels": st.number_input("QCFS levels L it was trained with", 1, 64, 4, key="pth_levels")}
            source = st.radio("Data", ["bundled sample", "data folder"], horizontal=True, key="data_source")
            data_dir = st.text_input("Data folder (full dataset)", key="data_dir", placeholder="/path/to/data")
            timesteps = st.number_input("Time steps T", 1, 64, int(values["timesteps"]), key="timesteps")
            methods = st.multiselect("Methods to compare", list(METHODS), values["methods"], key="methods",
                                     format_func=lambda m: METHODS[m].label)
            alpha = st.number_input("FTBC step size α", 0.001, 1.0, float(values["alpha"]), 0.01, "%.3f", key="alpha")
            left, right = st.columns(2)
            batches = left.number_input("Calib. batches", 1, 64, int(values["batches"]), key="batches")
            batch_size = right.number_input("Batch size", 1, 512, int(values["batch_size"]), key="batch_size")
            rho = st.number_input("COS pre-steps ρ", 0, 16, int(values["rho"]), key="rho")
            limit = st.number_input("Evaluation images", 1, 10_000, int(values["limit"]), key="limit")
            record_images = st.number_input(
                "Measured images (charts)", 1, 10_000, int(values["record_images"]), key="record_images",
                help="Per-layer errors, histograms and rates are measured on the first images only (the accuracy "
                     "uses every evaluation image): measuring costs about as much as simulating.")
            device = st.selectbox("Device", devices, key="device")
            submitted = st.form_submit_button("Run", type="primary", key="run_button")
        summary = st.empty()
    if submitted:  # messages and progress go to the main area, above the page
        if not methods:
            st.error("Choose at least one method.")
        elif source == "data folder" and not data_dir.strip():
            st.error("Enter the data folder, or choose the bundled sample.")
        elif (ref := _model_ref(choice, upload, public)) is not None:
            cfg = ExperimentConfig(
                model=ref[1] if ref[0] == "shipped" else f"upload:{ref[1][:16]}",
                data_dir=data_dir.strip() if source == "data folder" else None, timesteps=int(timesteps),
                methods=tuple(methods), limit=int(limit), device=device, record=True,
                record_images=min(int(record_images), int(limit)),
                method_options={"alpha": float(alpha), "batches": int(batches), "batch_size": int(batch_size),
                                "rho": int(rho), "seed": 0})
            start_run(cfg, ref)
    run = current_run()
    if run is not None:
        r = run.result
        measured = max((m.n_images for m in r.measurements.values() if m is not None), default=0)
        part = f" (charts measured on the first {measured})" if 0 < measured < r.n_images else ""
        summary.caption(f"Showing **{r.model_name}**, T = {r.timesteps}, {r.n_images} images of the "
                        f"{r.data_description}{part}; ANN {r.ann_accuracy:.2f}%.")


# -- page helpers: teaching aids and exports ----------------------------------------------------------------
def show_code(*objects) -> None:
    """A "show the code" expander with the source of the core functions behind a chart."""
    with st.expander("Show the code"):
        for obj in objects:
            st.code(pysource.getsource(obj), language="python")


def download_table(df: pd.DataFrame, name: str, index: bool = False, label: str = "Table (CSV)") -> None:
    st.download_button(label, df.to_csv(index=index).encode(), f"{name}.csv", "text/csv",
                       on_click="ignore", key=f"csv-{name}", icon=":material/download:")


@st.cache_resource(show_spinner=False)
def _png_check() -> Future:
    """Whether kaleido can render offline, checked once per server in the background (it starts a browser)."""
    if os.environ.get("FTBC_DASHBOARD_PNG", "1") == "0":
        done: Future = Future()
        done.set_result(False)
        return done
    return ThreadPoolExecutor(1).submit(lambda: figures.figure_png(go.Figure()) is not None)


def download_figure(fig: go.Figure, name: str) -> None:
    """Download buttons for a figure: HTML (plotly.js embedded, works offline) and PNG when kaleido works."""
    left, right = st.columns(2)
    left.download_button("Figure (HTML)", lambda: figures.figure_html(fig), f"{name}.html", "text/html",
                         on_click="ignore", key=f"html-{name}", icon=":material/download:")
    check = _png_check()
    if check.done() and check.result():
        right.download_button("Figure (PNG)", lambda: figures.figure_png(fig) or b"", f"{name}.png", "image/png",
                              on_click="ignore", key=f"png-{name}", icon=":material/download:")
