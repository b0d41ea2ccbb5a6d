"""The caches every session shares. Nothing in them is mutated by a page.

Models are keyed by their weights' content hash, results (with their per-image predictions) by the full
configuration plus that hash, rebuilt networks by the stored run and the number of steps their biases cover.
Models are deep-copied before anything runs on them (runs attach temporary hooks).
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import streamlit as st
import torch
from torch import nn

from ftbc_core.per_image import LayerTrace, trace_layer
from ftbc_core.assets import list_pretrained, load_images, resolve_checkpoint
from ftbc_core.checkpoint import CheckpointError, ModelCard, load_checkpoint
from ftbc_core.data import ImageArrays
from ftbc_core.experiment import ExperimentResult
from ftbc_core.image_trace import ImageTrace, trace_image
from ftbc_core.importer import import_model
from ftbc_core.selection import split_held_out
from ftbc_core.snn import SpikingNetwork


# -- models ----------------------------------------------------------------------------------------------------
@st.cache_resource(ttl=60, show_spinner=False)
def shipped_models() -> dict[str, ModelCard]:
    """``{name: card}`` of ``pretrained/`` (re-read every minute: models may be added while the app runs)."""
    return list_pretrained()


@st.cache_resource(max_entries=64, show_spinner=False)
def file_digest(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file, computed once per (path, modification time, size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@st.cache_resource(max_entries=6, show_spinner="loading the model…")
def load_shipped(name: str, digest: str) -> tuple[nn.Module, ModelCard]:
    """A shipped model with exactly the weights of ``digest`` (an error if the file has changed since)."""
    data = resolve_checkpoint(name).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"the model {name!r} was replaced on disk since this run: run it again")
    return load_checkpoint(data)


@st.cache_resource(max_entries=4, show_spinner="reading the checkpoint…")
def load_uploaded(key: str, _data: bytes | None) -> tuple[nn.Module, ModelCard]:
    """A ``.safetensors`` checkpoint (key: its sha256), or a public code's ``.pth`` imported through the same
    path as ``ftbc import`` (key: ``sha256:source:arch:dataset:levels:file name``)."""
    if _data is None:
        raise CheckpointError("this run's uploaded file is no longer kept in the session: upload it again")
    if ":" not in key:
        return load_checkpoint(_data)
    digest, source, arch, dataset, levels, name = key.split(":", 5)
    return import_model(_data, name, source=source, arch=arch, dataset=dataset, levels=int(levels),
                        name=f"{Path(name).stem} (imported)")


@st.cache_resource(max_entries=4, show_spinner="loading the evaluation images…")
def evaluation_images(dataset: str, data_dir: str | None, limit: int | None) -> ImageArrays:
    data, _ = load_images(dataset, "test", data_dir)
    return data.subset(slice(0, limit)) if limit is not None else data


# -- results ---------------------------------------------------------------------------------------------------
@st.cache_data(max_entries=24, show_spinner=False)
def _stored_result(key: str, _result: ExperimentResult | None = None) -> ExperimentResult:
    """The result cache: a miss raises (exceptions are not cached), calling with ``_result`` stores it.
    Computing happens outside so progress can be shown."""
    if _result is None:
        raise LookupError(key)
    return _result


def cached_result(key: str) -> ExperimentResult | None:
    try:
        return _stored_result(key)
    except LookupError:
        return None


def store_result(key: str, result: ExperimentResult) -> None:
    _stored_result(key, _result=result)


# -- networks, rebuilt in the background --------------------------------------------------------------------------
def _lower_priority() -> None:
    """Run this worker thread (and the threads it starts) at the lowest CPU priority: pages come first."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


class NetworkStore:
    """The last ``capacity`` runs' networks (every method's, with biases covering ``covered`` steps) by
    ``(key, covered)``; each set is made once, in one worker thread."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, int], Future] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ftbc-networks", initializer=_lower_priority)

    def get(self, key: str, covered: int, make: Callable[[], dict[str, SpikingNetwork]]) -> Future:
        """A future of the networks of ``(key, covered)`` (started on first use; a failed one is retried)."""
        with self._lock:
            found = self._items.get((key, covered))
            if found is not None and not (found.done() and found.exception() is not None):
                self._items.move_to_end((key, covered))
                return found
            item: Future = Future()
            self._items[(key, covered)] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        self._pool.submit(_make, item, make)
        return item


def _make(item: Future, make: Callable[[], dict[str, SpikingNetwork]]) -> None:
    try:
        item.set_result(make())
    except BaseException as err:  # noqa: BLE001 - handed to whoever waits on the future
        item.set_exception(err)


@st.cache_resource(show_spinner=False)
def network_store() -> NetworkStore:
    return NetworkStore()


# -- one image ---------------------------------------------------------------------------------------------------
@st.cache_data(max_entries=128, show_spinner=False)
def image_trace(key: str, covered: int, method: str, index: int, timesteps: int, _net: SpikingNetwork,
                _x: torch.Tensor) -> ImageTrace:
    """The output of one image after every step (:func:`trace_image` on a private copy of the network)."""
    net = copy.deepcopy(_net)
    return trace_image(net, _x, timesteps, net.layer_names[-1], max_neurons=1)


@st.cache_data(max_entries=64, show_spinner=False)
def layer_trace(key: str, covered: int, method: str, index: int, layer: str, timesteps: int, neurons: int,
                _net: SpikingNetwork, _ann: nn.Module, _x: torch.Tensor) -> LayerTrace:
    """A sample of one layer's neurons for one image (:func:`trace_layer`, on private copies)."""
    return trace_layer(_net, _ann, _x, timesteps, layer, neurons=neurons)


# -- the held-out selection ----------------------------------------------------------------------------------------
@st.cache_data(max_entries=16, show_spinner=False)
def held_out_split(dataset: str, data_dir: str | None, val_images: int, seed: int) -> tuple[int, int, str]:
    """``(held-out images, calibration pool, the training images' description)`` of a run with ``select`` (the
    core's own split, :func:`~ftbc_core.selection.split_held_out`)."""
    train, description = load_images(dataset, "train", data_dir)
    held_out, rest = split_held_out(train, val_images, seed)
    return len(held_out), len(rest), description
