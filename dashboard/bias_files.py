"""Uploaded bias files (``.safetensors`` written by ``ftbc calibrate``), evaluated as the method ``file``.

A run's configuration names an upload by its hash (``upload:SHA256`` as the ``file`` method's ``path``: part of
the cache key); the bytes are kept in the session only for the most recent :data:`BIAS_FILES_KEPT` files and
handed to the core when the run starts. Whether a file fits the model, conversion and T is the core's call
(``ftbc_core.calibration.fixed``): it refuses in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict

import streamlit as st

from ftbc_core.biases import read_biases
from ftbc_core.checkpoint import CheckpointError
from ftbc_core.experiment import ExperimentConfig, ExperimentResult

BIAS_FILES_KEPT = 3
METHOD = "file"
PREFIX = "upload:"


def keep_bias_file(data: bytes) -> str:
    """Keep an uploaded bias file in this session (the most recent :data:`BIAS_FILES_KEPT`) and return its
    reference for the ``file`` method's ``path``. CheckpointError (one line) if it is not a bias file."""
    read_biases(data)
    ref = PREFIX + hashlib.sha256(data).hexdigest()
    store: OrderedDict = st.session_state.setdefault("bias_files", OrderedDict())
    store.pop(ref, None)
    store[ref] = data
    while len(store) > BIAS_FILES_KEPT:
        store.popitem(last=False)
    return ref


def _ref(cfg: ExperimentConfig) -> str | None:
    path = (cfg.method_options.get(METHOD) or {}).get("path")
    return path if isinstance(path, str) and path.startswith(PREFIX) else None


def with_bytes(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` as the core takes it: an uploaded bias file's reference replaced by its bytes."""
    ref = _ref(cfg)
    if ref is None:
        return cfg
    data = st.session_state.get("bias_files", {}).get(ref)
    if data is None:
        raise CheckpointError("this run's bias file is no longer kept in the session: upload it again")
    options = {**cfg.method_options, METHOD: {**cfg.method_options[METHOD], "path": data}}
    return dataclasses.replace(cfg, method_options=options)


def without_bytes(result: ExperimentResult, cfg: ExperimentConfig) -> ExperimentResult:
    """``result`` naming the bias file by its reference again (stored results keep no uploaded bytes)."""
    return dataclasses.replace(result, method_options=dict(cfg.method_options)) if _ref(cfg) else result
