"""Correction methods behind one interface, registered by name (``none``, ``ftbc``, ``ftbc-exact``,
``ftbc-layer``, ``cos``, ``cos-causal``, ``ftbc-official``); the CLI and the dashboard list :data:`METHODS`
without knowing each one."""

from . import ftbc as _ftbc  # noqa: F401  (registers ftbc, ftbc-exact, ftbc-layer after none)
from . import cos as _cos  # noqa: F401  (registers cos, cos-causal)
from . import official as _official  # noqa: F401  (registers ftbc-official)
from . import fixed as _fixed  # noqa: F401  (registers file: biases from a file)
from .base import METHODS, CalibrationMethod, CalibrationReport, ann_channel_means, get_method
from .cos import CosCausalNetwork, CosNetwork
from .ftbc import fit_biases
from .official import fit_official_script

__all__ = ["METHODS", "CalibrationMethod", "CalibrationReport", "get_method", "ann_channel_means", "fit_biases",
           "CosNetwork", "CosCausalNetwork", "fit_official_script"]
