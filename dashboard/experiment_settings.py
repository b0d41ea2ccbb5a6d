"""The form's settings besides the methods: the conversion (v0, threshold mode, percentile, per-channel θ) and
the held-out choice of each method's options (``ExperimentConfig.select``, ``val_images``, ``select_max_t``).

With the bundled sample (no data folder) the training split is its 1,000-image calibration sample: the
selection holds out ``val_images`` of them, at most half (``ftbc_core.selection.split_held_out``), and
calibrates on the rest.
"""

from __future__ import annotations

from typing import Any, Mapping

import streamlit as st

from ftbc_core.experiment import ExperimentConfig

V0_CHOICES = ("half", "zero", "fraction")
V0_LABELS = {"half": "θ/2", "zero": "0", "fraction": "fraction of θ"}
THRESHOLD_MODES = ("auto", "lambda", "max", "percentile")
_CONFIG = ExperimentConfig(model="")  # the core's defaults
DEFAULTS: dict[str, Any] = {"v0_mode": "half", "v0_fraction": 0.5, "thresholds": _CONFIG.thresholds,
                            "percentile": _CONFIG.percentile, "per_channel": _CONFIG.per_channel,
                            "select": _CONFIG.select, "val_images": _CONFIG.val_images,
                            "select_max_t": _CONFIG.select_max_t}
KEYS = tuple(DEFAULTS)
THRESHOLD_HELP = {"auto": "from the activation where it has one (QCFS λ), else from statistics",
                  "lambda": "every θ from the activation (QCFS λ)", "max": "the largest activation",
                  "percentile": "a percentile of the activations"}
SELECT_HELP = ("Calibrate each method with every option set of its grid (FTBC: α and batches) on part of the "
               "training split and keep the one with the best held-out accuracy; options you changed from a "
               "method's default stay fixed. With the bundled sample, up to half of its 1,000 training-split "
               "images are held out and the rest calibrate; with a data folder, 'held-out images' of its "
               "training split (at most half).")


def initial_settings(params: Mapping[str, str]) -> dict[str, Any]:
    """:data:`DEFAULTS` updated from the page address (``v0=zero|half|0.3``, ``thresholds``, ``percentile``,
    ``per_channel=1``, ``select=1``, ``val_images``, ``select_max_t``); unusable values are ignored."""
    values = dict(DEFAULTS)
    flags = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    for key in ("percentile", "val_images", "select_max_t"):
        try:
            values[key] = type(DEFAULTS[key])(params[key]) if key in params else values[key]
        except ValueError:
            pass
    for key in ("per_channel", "select"):
        values[key] = flags.get(str(params.get(key, "")).lower(), values[key])
    if params.get("thresholds") in THRESHOLD_MODES:
        values["thresholds"] = params["thresholds"]
    v0 = params.get("v0")
    if v0 in ("half", "zero"):
        values["v0_mode"] = v0
    elif v0 is not None:
        try:
            values["v0_mode"], values["v0_fraction"] = "fraction", float(v0)
        except ValueError:
            pass
    return values


def config_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The settings as ``ExperimentConfig`` fields."""
    v0 = float(values["v0_fraction"]) if values["v0_mode"] == "fraction" else values["v0_mode"]
    return {"v0": v0, "thresholds": values["thresholds"], "percentile": float(values["percentile"]),
            "per_channel": bool(values["per_channel"]), "select": bool(values["select"]),
            "val_images": int(values["val_images"]), "select_max_t": int(values["select_max_t"])}


def conversion_widgets(values: dict[str, Any]) -> dict[str, Any]:
    """The "Conversion" expander (in a form)."""
    with st.expander("Conversion"):
        v0_mode = st.radio("Initial potential v0", V0_CHOICES, V0_CHOICES.index(values["v0_mode"]), key="v0_mode",
                           horizontal=True, format_func=lambda v: V0_LABELS[v])
        v0_fraction = st.number_input("v0 as a fraction of θ (when 'fraction')", 0.0, 1.0,
                                      float(values["v0_fraction"]), 0.05, key="v0_fraction")
        thresholds = st.selectbox("Thresholds θ", THRESHOLD_MODES, THRESHOLD_MODES.index(values["thresholds"]),
                                  key="thresholds", format_func=lambda m: f"{m}: {THRESHOLD_HELP[m]}")
        percentile = st.number_input("Percentile (auto, percentile)", 50.0, 100.0, float(values["percentile"]), 0.1,
                                     "%.2f", key="percentile")
        per_channel = st.checkbox("θ per channel (from statistics)", bool(values["per_channel"]), key="per_channel")
    return {"v0_mode": v0_mode, "v0_fraction": v0_fraction, "thresholds": thresholds, "percentile": percentile,
            "per_channel": per_channel}


def selection_widgets(values: dict[str, Any]) -> dict[str, Any]:
    """The held-out selection switch and its two numbers (in a form)."""
    select = st.toggle("Choose each method's options on held-out training images", bool(values["select"]),
                       key="select", help=SELECT_HELP)
    left, right = st.columns(2)
    val_images = left.number_input("Held-out images", 1, None, int(values["val_images"]), key="val_images",
                                   help="When choosing: training images held out (at most half the split).")
    select_max_t = right.number_input("Score over t ≤", 1, None, int(values["select_max_t"]), key="select_max_t",
                                      help="When choosing: the held-out accuracy is averaged over t ≤ this.")
    return {"select": select, "val_images": val_images, "select_max_t": select_max_t}
