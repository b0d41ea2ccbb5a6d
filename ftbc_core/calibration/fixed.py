"""Biases from a file (``ftbc evaluate --biases FILE``, the dashboard's bias upload): no fitting, the biases a
bias method wrote earlier, checked against this model before they are used."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from ..biases import apply_biases, conversion_fingerprint, read_biases, weights_fingerprint
from ..checkpoint import CheckpointError
from .base import CalibrationMethod, CalibrationReport, copy_snn, register

__all__ = ["BiasesFromFile"]


@register
class BiasesFromFile(CalibrationMethod):
    name = "file"
    label = "biases from a file"
    description = ("The [T, C] biases a bias method (ftbc calibrate, the dashboard) wrote to a file, applied to "
                   "this model after checking its layers, channels, T and weights.")
    defaults: dict[str, Any] = {"path": None}
    selectable = False

    def calibrate(self, snn, ann, images, timesteps, options=None, progress=None):
        opts = self.options(options)
        source = opts["path"]
        if source is None:
            raise ValueError("method file needs a bias file (option path; ftbc evaluate --biases FILE)")
        start = time.perf_counter()
        label = "the bias file" if isinstance(source, (bytes, bytearray)) else str(source)
        tensors, meta = read_biases(source)
        fitted_on = meta.get("weights_sha256")
        if fitted_on and fitted_on != weights_fingerprint(ann):
            raise CheckpointError(f"{label} was fitted on other weights (model {meta.get('model', '?')!r}): its "
                                  "biases do not belong to this model")
        converted_as = meta.get("conversion_sha256")
        if converted_as and converted_as != conversion_fingerprint(snn):
            raise CheckpointError(f"{label} was fitted on a conversion with other thresholds or v0: use the threshold "
                                  "mode and v0 it was calibrated with")
        new = copy_snn(snn)
        apply_biases(new, tensors, timesteps, tuple(images.shape[1:]), label)
        biases = {n: neuron.bias[:timesteps].detach().cpu().numpy().astype(np.float32)
                  for n, neuron in zip(new.layer_names, new.neurons)}
        shown = {"path": label, **{k: v for k, v in meta.items() if k in ("method", "timesteps", "options")}}
        return new, CalibrationReport(self.name, shown, time.perf_counter() - start, 0, biases,
                                      bias_change=_bias_change(meta))


def _bias_change(meta: dict[str, str]) -> tuple[float, ...]:
    """The convergence curve the fitting method recorded in the file (empty if it has none or it is unreadable)."""
    try:
        values = json.loads(meta.get("bias_change", "[]"))
        return tuple(float(v) for v in values) if isinstance(values, list) else ()
    except (ValueError, TypeError):
        return ()
