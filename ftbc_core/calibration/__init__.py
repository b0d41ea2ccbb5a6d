"""Correction methods behind one interface, registered by name (``none``, ``ftbc``, ``ftbc-exact``,
``ftbc-layer``, ``cos``); the CLI and the dashboard list :data:`METHODS` without knowing each one."""

from . import ftbc as _ftbc  # noqa: F401  (registers ftbc, ftbc-exact, ftbc-layer after none)
from . import cos as _cos  # noqa: F401  (registers cos)
from .base import METHODS, CalibrationMethod, CalibrationReport, ann_channel_means, get_method
from .cos import CosNetwork
from .ftbc import fit_biases

__all__ = ["METHODS", "CalibrationMethod", "CalibrationReport", "get_method", "ann_channel_means", "fit_biases",
           "CosNetwork"]
