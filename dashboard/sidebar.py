"""The sidebar: the experiment form (pressing Run starts or reads the experiment), the presenter switch, the
picker of the run the pages show, and a one-line summary of it.

The form's first values can come from the page address, so a lecture can open on a chosen experiment:
``?model=cnn-mnist&T=4&methods=none,ftbc&limit=200`` (also ``record_images``). Method options:
``METHOD.OPTION=VALUE`` for one method (``ftbc-layer.alpha=0.1``, ``ftbc-official.reference_levels=none``), or
``OPTION=VALUE`` for every method that has the option (``alpha=0.3``, ``batches=1``, ``batch_size=16``,
``rho=2``: the older links keep working, now per method; a per-method field wins). Conversion and selection:
``v0=half|zero|0.3``, ``thresholds=auto|lambda|max|percentile``, ``percentile=99.9``, ``per_channel=1``,
``select=1``, ``val_images=500``, ``select_max_t=16``. Unusable values are ignored.
"""

from __future__ import annotations

import streamlit as st
import torch

from dashboard import bias_files, caches, experiment_settings, method_options, runs
from dashboard.models import UPLOAD, ModelRef, keep_upload, shipped_ref, upload_ref
from ftbc_core.calibration import METHODS
from ftbc_core.calibration.base import selectable_methods
from ftbc_core.checkpoint import CheckpointError
from ftbc_core.experiment import APP_MEMORY_FRACTION, ExperimentConfig
from ftbc_core.importer import SOURCES
from ftbc_core.public_models import PUBLIC_ARCHS, PUBLIC_NORMALIZATION

# T = 8: where FTBC matters most in a lecture (about 3 points on ResNet-20, under 1 point at T = 16), and a first
# run that renders in about 8 s on 2 cores (benchmarks/README.md, dashboard latency); the form takes 1-64.
# Charts are measured on 64 images (4 simulation chunks at T = 8, about a million values per layer histogram):
# measuring costs 3-4x a plain simulation step.
DEFAULTS = {"model": "resnet20-cifar10", "timesteps": 8, "limit": 200, "record_images": 64,
            "methods": ["none", "ftbc"]}
ADDRESS_FIELDS = {"T": "timesteps", "model": "model", "methods": "methods", "limit": "limit",
                  "record_images": "record_images"}
FORM_KEYS = ("model", "data_source", "data_dir", "timesteps", "methods", "limit", "record_images", "device",
             *experiment_settings.KEYS)


def initial_values() -> dict:
    """The form's first values: :data:`DEFAULTS`, each method's defaults and the core's conversion and
    selection defaults, updated from the page address (unusable fields ignored)."""
    params = st.query_params.to_dict()
    values = dict(DEFAULTS)
    for param, field in ADDRESS_FIELDS.items():
        raw = params.get(param)
        if raw is None:
            continue
        try:
            if field == "methods":
                chosen = [m for m in raw.split(",") if m in selectable_methods()]
                values[field] = chosen or values[field]
            elif field == "model":
                values[field] = raw
            else:
                values[field] = type(DEFAULTS[field])(raw)
        except ValueError:
            continue
    values["method_options"] = method_options.initial_options(params)
    values.update(experiment_settings.initial_settings(params))
    return values


def config_from_form(values: dict, model: ModelRef) -> ExperimentConfig:
    """An experiment configuration from the form's values (``values["data_dir"]``: None for the bundled sample;
    ``values["bias_file"]``: an uploaded bias file's reference, evaluated first as the method ``file``)."""
    limit = int(values["limit"])
    methods = list(values["methods"])
    options = method_options.config_options(methods, values["method_options"])
    if values.get("bias_file"):  # first: a file that does not fit is refused before any other method runs
        methods = [bias_files.METHOD] + methods
        options[bias_files.METHOD] = {"path": values["bias_file"]}
    return ExperimentConfig(model=model.model_field, data_dir=values["data_dir"], timesteps=int(values["timesteps"]),
                            methods=tuple(methods), limit=limit, device=values["device"], record=True,
                            record_images=min(int(values["record_images"]), limit), method_options=options,
                            memory_fraction=APP_MEMORY_FRACTION, **experiment_settings.config_fields(values))


def form_values() -> dict:
    """The form's values as last submitted (or its first values), for runs started elsewhere (presets; without
    the bias file). ValueError if a method option's text is unusable."""
    values = {**initial_values(), "device": "cpu", "data_source": "bundled sample", "data_dir": ""}
    values.update({k: st.session_state[k] for k in FORM_KEYS if k in st.session_state})
    values["method_options"] = method_options.checked(method_options.submitted_options(values["method_options"]))
    values["data_dir"] = values["data_dir"].strip() if values["data_source"] == "data folder" else None
    return values


def _model_ref(choice: str, upload, public: dict) -> ModelRef | None:
    """The form's model as a reference; shows an error and returns None if unusable."""
    if choice != UPLOAD:
        try:
            return shipped_ref(choice)
        except (CheckpointError, OSError) as err:
            st.error(f"Cannot use {choice}: {err}")
            return None
    if upload is None:
        st.error("Choose a checkpoint file to upload (.safetensors, or a public QCFS/COS/FTBC .pth), or pick a "
                 "shipped model.")
        return None
    data = upload.getvalue()
    ref = upload_ref(upload.name, data, public)
    try:
        caches.load_uploaded(ref.name, data)
    except CheckpointError as err:
        st.error(f"Cannot use {upload.name}: {err}")
        return None
    keep_upload(ref, data)
    return ref


def experiment_form() -> None:
    """The experiment form; pressing Run starts (or reads) the experiment, messages going to the main area."""
    values = initial_values()
    names = list(caches.shipped_models())
    default_model = values["model"] if values["model"] in names else (names[0] if names else UPLOAD)
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
            methods = st.multiselect("Methods to compare", selectable_methods(), values["methods"], key="methods",
                                     format_func=lambda m: METHODS[m].label)
            st.caption("Each method's options (a method not chosen ignores its own):")
            options = method_options.option_widgets(values["method_options"],
                                                    st.session_state.get("methods", values["methods"]))
            settings = experiment_settings.conversion_widgets(values)
            settings.update(experiment_settings.selection_widgets(values))
            with st.expander("Biases from a file"):
                bias_upload = st.file_uploader(
                    "Bias file", type=["safetensors"], key="bias_upload",
                    help="A .safetensors written by ftbc calibrate: evaluated as the method 'biases from a file' "
                         "next to the chosen ones (it must be fitted on this model, with this conversion and a T "
                         "at least this run's).")
            limit = st.number_input("Evaluation images", 1, 10_000, int(values["limit"]), key="limit")
            record_images = st.number_input(
                "Measured images (charts)", 1, 10_000, int(values["record_images"]), key="record_images",
                help="Per-layer errors, histograms and rates are measured on the first images only (the accuracy "
                     "uses every evaluation image): measuring costs about as much as simulating.")
            device = st.selectbox("Device", devices, key="device")
            submitted = st.form_submit_button("Run", type="primary", key="run_button")
    if not submitted:
        return
    if not methods and bias_upload is None:
        st.error("Choose at least one method (or upload a bias file).")
    elif source == "data folder" and not data_dir.strip():
        st.error("Enter the data folder, or choose the bundled sample.")
    elif (ref := _model_ref(choice, upload, public)) is not None:
        try:
            options = method_options.checked(options)
            bias_file = bias_files.keep_bias_file(bias_upload.getvalue()) if bias_upload is not None else None
        except (ValueError, CheckpointError) as err:
            name = f"Cannot use {bias_upload.name}: " if isinstance(err, CheckpointError) else ""
            st.error(f"{name}{err}")
            return
        form = {"timesteps": timesteps, "methods": methods, "method_options": options, "bias_file": bias_file,
                "limit": limit, "record_images": record_images, "device": device,
                "data_dir": data_dir.strip() if source == "data folder" else None, **settings}
        runs.start_run(config_from_form(form, ref), ref)


def presenter_switch() -> None:
    """A switch that enlarges fonts, lines and markers for a projector (charts and page text)."""
    st.sidebar.toggle("Presenter mode", key="presenter", help="Larger fonts, lines and markers for a projector; "
                      "exported figures get them too.")
    if st.session_state.get("presenter"):
        st.sidebar.markdown("<style>html { font-size: 21px; } .stMarkdown p, .stMarkdown li { font-size: 1.15rem; }"
                    "</style>", unsafe_allow_html=True)


def _pick(labels: dict) -> None:
    chosen = labels.get(st.session_state.get("pick_run"))
    if chosen is not None:
        st.session_state["run"] = chosen


def run_picker(slot) -> None:
    """In ``slot`` (a sidebar container): which of the session's runs the pages show, and a summary of it."""
    session = runs.session_runs()
    run = runs.current_run()
    with slot:
        if len(session) > 1:
            labels = {r.label: r for r in session}
            if st.session_state.get("pick_run") not in labels and run is not None:
                st.session_state["pick_run"] = run.label
            st.selectbox("Shown run", list(labels), key="pick_run", on_change=_pick, args=(labels,),
                         help=f"This session keeps its last {runs.RUNS_KEPT} runs; the Compare page overlays them.")
        if run is not None:
            r = run.result
            measured = max((m.n_images for m in r.measurements.values() if m is not None), default=0)
            part = f" (charts measured on the first {measured})" if 0 < measured < r.n_images else ""
            st.caption(f"Showing **{r.model_name}**, T = {r.timesteps}, {r.n_images} images of the "
                       f"{r.data_description}{part}; ANN {r.ann_accuracy:.2f}%.")
