"""Which ANN a run uses: shipped models named and pinned by their weights' content hash, uploads kept by hash.

A shipped model replaced on disk under the same name gets a new digest, so its weights and results are new cache
entries (nothing stale is served). Uploaded files are kept in the session only as long as a run may need to
rebuild the model: the last :data:`UPLOADS_KEPT` by hash.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from torch import nn

from dashboard import caches
from ftbc_core.assets import resolve_checkpoint
from ftbc_core.checkpoint import ModelCard

UPLOADS_KEPT = 3  # uploaded files (up to 200 MiB each) a session keeps to rebuild its models
UPLOAD = "upload a checkpoint…"


@dataclass(frozen=True)
class ModelRef:
    """A run's model.

    Attributes:
        kind: ``shipped`` or ``upload``.
        name: the shipped model's name, or the upload's key (its sha256, plus the import fields of a ``.pth``).
        digest: sha256 of the weights file (part of every cache key that depends on the weights).
    """

    kind: str
    name: str
    digest: str

    @property
    def model_field(self) -> str:
        """``ExperimentConfig.model`` for this reference."""
        return self.name if self.kind == "shipped" else f"upload:{self.digest[:16]}"


def shipped_ref(name: str) -> ModelRef:
    """A shipped model pinned to the weights on disk now (hash cached by path, mtime and size)."""
    path = resolve_checkpoint(name)
    stat = path.stat()
    return ModelRef("shipped", name, caches.file_digest(str(path), stat.st_mtime_ns, stat.st_size))


def upload_ref(file_name: str, data: bytes, public: dict) -> ModelRef:
    """An uploaded file's reference; a ``.pth`` carries the import fields (source, arch, dataset, levels)."""
    digest = hashlib.sha256(data).hexdigest()
    key = digest
    if Path(file_name).suffix.lower() in (".pth", ".pt"):
        key = ":".join([digest, public["source"], public["arch"], public["dataset"], str(public["levels"]),
                        file_name.replace(":", "_")])
    return ModelRef("upload", key, digest)


def keep_upload(ref: ModelRef, data: bytes) -> None:
    """Keep an upload's bytes in this session (the most recent :data:`UPLOADS_KEPT`, by hash)."""
    store: OrderedDict = st.session_state.setdefault("uploads", OrderedDict())
    store.pop(ref.name, None)
    store[ref.name] = data
    while len(store) > UPLOADS_KEPT:
        store.popitem(last=False)


def model_for(ref: ModelRef) -> tuple[nn.Module, ModelCard]:
    """The cached ANN and card of a run's model (never mutate them: deep-copy before running anything)."""
    if ref.kind == "shipped":
        return caches.load_shipped(ref.name, ref.digest)
    return caches.load_uploaded(ref.name, st.session_state.get("uploads", {}).get(ref.name))
