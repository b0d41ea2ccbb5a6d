"""The interface every correction method implements, and the registry the CLI and dashboard read."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from ..convert import ActivationProbe, clip_to_threshold
from ..snn import SpikingNetwork

__all__ = ["CalibrationMethod", "CalibrationReport", "METHODS", "register", "get_method", "ann_channel_means",
           "Progress", "check_options", "OptionSpec", "OPTIONS", "resolve_options", "nonconvergence",
           "selectable_methods"]

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class CalibrationReport:
    """What a method did: its options, time spent, and (for bias methods) the fitted biases.

    Attributes:
        biases: ``{layer name: [T, C]}`` float32 arrays (empty for methods without biases).
        bias_change: per calibration batch, the mean absolute change of all biases it caused (convergence).
        latency: extra steps every input pays before the T counted steps (COS's ρ; 0 otherwise).
    """

    method: str
    options: dict[str, Any]
    seconds: float
    n_images: int
    biases: dict[str, np.ndarray] = field(default_factory=dict)
    bias_change: tuple[float, ...] = ()
    latency: int = 0


@dataclass(frozen=True)
class OptionSpec:
    """What one method option is: the CLI's flags and the dashboard's widgets are built from these.

    Attributes:
        label: a short name for people (``step size α``).
        kind: ``int``, ``float`` or ``str`` (a file path, or a file's bytes).
        low, high: the allowed range (``high`` may be ``inf``; neither is used for ``str``).
        low_open: ``low`` itself is not allowed (α > 0).
        optional: None is allowed (it means "the method's own choice").
        help: one sentence.
    """

    label: str
    kind: type
    low: float = 0.0
    high: float = math.inf
    low_open: bool = False
    optional: bool = False
    help: str = ""

    def rule(self) -> str:
        """The allowed values in words: ``>= 1``, ``in (0, 10]``."""
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def check(self, name: str, value: Any) -> Any:
        """``value`` converted to ``kind`` and range-checked; ValueError naming the option otherwise."""
        if value is None and self.optional:
            return None
        what = name.replace("_", " ")
        if self.kind is str:
            if not isinstance(value, (str, bytes, bytearray)) or not value:
                raise ValueError(f"{what} must be a non-empty file path, got {value!r}")
            return value
        try:
            if isinstance(value, bool) or (self.kind is int and float(value) != int(float(value))):
                raise TypeError
            converted = self.kind(float(value)) if self.kind is int else self.kind(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{what} must be {'an integer' if self.kind is int else 'a number'} "
                             f"{self.rule()}, got {value!r}") from None
        low_ok = converted > self.low if self.low_open else converted >= self.low
        if not (low_ok and converted <= self.high):  # NaN fails both
            raise ValueError(f"{what} must be {self.rule()}, got {value!r}")
        return converted


#: Every option a method may take. A method's ``defaults`` name its options; the schema says what they are.
OPTIONS: dict[str, OptionSpec] = {
    "alpha": OptionSpec("step size α", float, 0.0, 10.0, low_open=True,
                        help="FTBC's step: b[t] += α·(E[s] − E[a]) per batch"),
    "batches": OptionSpec("calibration batches", int, 1, help="calibration batches drawn from the images"),
    "batch_size": OptionSpec("images per batch", int, 1, help="images in one calibration batch"),
    "passes": OptionSpec("passes", int, 1, help="times the same calibration batches are gone through"),
    "seed": OptionSpec("seed", int, 0, 2**31 - 1, help="seed of the calibration draw"),
    "rho": OptionSpec("pre-steps ρ", int, 0, 64, help="COS pre-simulation steps every input pays as latency"),
    "path": OptionSpec("bias file", str, help="a .safetensors bias file written by ftbc calibrate"),
    "reference_levels": OptionSpec("reference L", int, 1, 64, optional=True,
                                   help="the official script's reference ANN levels (None: the trained L)"),
}


class CalibrationMethod:
    """Base class: ``calibrate`` returns a *new* network (the given SNN and ANN are never modified).

    ``defaults`` names the method's options (each described in :data:`OPTIONS`) with their default values.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    description: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    #: the method fits per-step biases that ``ftbc calibrate`` can write to a file
    fits_biases: ClassVar[bool] = False
    #: offered in method lists (False for ``file``, which comes with a file: ``--biases``, the bias upload)
    selectable: ClassVar[bool] = True
    #: the option sets ``--select auto`` tries on held-out training images (empty: nothing to choose)
    selection_grid: ClassVar[tuple[dict[str, Any], ...]] = ()

    def option_specs(self) -> dict[str, OptionSpec]:
        """``{option: spec}`` of this method's options, in the order of ``defaults``."""
        return {k: OPTIONS[k] for k in self.defaults if k in OPTIONS}

    def options(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The defaults updated with ``overrides``; an option this method does not have is an error."""
        unknown = [k for k in (overrides or {}) if k not in self.defaults]
        if unknown:
            raise ValueError(f"method {self.name} has no option {unknown[0]!r}; its options: "
                             f"{', '.join(self.defaults) or 'none'}")
        opts = dict(self.defaults)
        opts.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return check_options(opts)

    def rebuild(self, snn: SpikingNetwork, report: "CalibrationReport") -> SpikingNetwork:
        """This method's network again from the uncorrected ``snn`` and its ``report`` (no recalibration): a copy
        with the report's ``[T, C]`` biases. Methods that change more than biases override it."""
        new = copy_snn(snn)
        for name, neuron in zip(new.layer_names, new.neurons):
            if name in report.biases:
                neuron.set_bias(torch.from_numpy(np.asarray(report.biases[name], dtype=np.float32)))
        return new

    def calibrate(
        self,
        snn: SpikingNetwork,
        ann: nn.Module,
        images: torch.Tensor,
        timesteps: int,
        options: dict[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> tuple[SpikingNetwork, CalibrationReport]:
        """Fit the method on calibration ``images`` ``[N, C, H, W]`` (training split) for ``timesteps`` steps."""
        raise NotImplementedError


def check_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Check every option of :data:`OPTIONS` in ``opts`` (others pass through); ValueError with a clear message."""
    return {k: (OPTIONS[k].check(k, v) if k in OPTIONS else v) for k, v in opts.items()}


METHODS: dict[str, CalibrationMethod] = {}


def nonconvergence(bias_change: tuple[float, ...] | list[float], min_batches: int = 4) -> str | None:
    """A one-line warning when the per-batch mean |Δb| does not decay (the α-iteration cycles), else None.

    Judged when there are at least ``min_batches`` batches: the last quarter of the batches must change the
    biases by less than half of what the first quarter did.
    """
    changes = [float(c) for c in bias_change]
    if len(changes) < min_batches or changes[0] == 0:
        return None
    quarter = max(1, len(changes) // 4)
    first, last = sum(changes[:quarter]) / quarter, sum(changes[-quarter:]) / quarter
    if last < 0.5 * first:
        return None
    return (f"the biases did not converge: mean |Δb| {first:.4g} over the first batches, {last:.4g} over the "
            f"last ones; the result depends on the calibration draw (several draws show the spread)")


def resolve_options(methods: list[str] | tuple[str, ...], method_options: dict[str, Any]) -> dict[str, dict]:
    """Each chosen method's own overrides from an experiment's ``method_options``.

    ``method_options`` may hold shared options (``{"alpha": 0.2}``: given to every chosen method that has that
    option) and per-method ones (``{"ftbc-layer": {"alpha": 0.1}}``, which win over shared ones). An option no
    registered method has, a per-method entry for a method not chosen, or an option that method does not have
    is an error (a shared option that none of the chosen methods takes is not used: the CLI refuses such flags,
    the dashboard's form holds every method's fields).
    """
    chosen = [get_method(m) for m in methods]
    shared = {k: v for k, v in method_options.items() if k not in METHODS and v is not None}
    per_method = {k: dict(v or {}) for k, v in method_options.items() if k in METHODS}
    for key in shared:
        if not any(key in m.defaults for m in METHODS.values()):
            raise ValueError(f"unknown method option {key!r}; options are {', '.join(OPTIONS)}")
    for name, opts in per_method.items():
        if name not in methods:
            raise ValueError(f"options given for {name}, which is not among the chosen methods")
        get_method(name).options(opts)  # unknown keys and bad values: an error now, before any work
    return {m.name: {**{k: v for k, v in shared.items() if k in m.defaults}, **per_method.get(m.name, {})}
            for m in chosen}


def register(cls: type[CalibrationMethod]) -> type[CalibrationMethod]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls()
    return cls


def selectable_methods() -> list[str]:
    """The method names a user picks from (CLI help, the dashboard's list), in registration order."""
    return [name for name, method in METHODS.items() if method.selectable]


def get_method(name: str) -> CalibrationMethod:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def copy_snn(snn: SpikingNetwork) -> SpikingNetwork:
    """A deep copy (the caller's network is never modified by a method)."""
    return copy.deepcopy(snn)


@register
class NoCorrection(CalibrationMethod):
    name = "none"
    label = "no correction"
    description = "The converted SNN as it is (θ from QCFS λ or activation statistics, v0 = θ/2)."
    defaults: dict[str, Any] = {}

    def calibrate(self, snn, ann, images, timesteps, options=None, progress=None):
        return copy_snn(snn), CalibrationReport(self.name, {}, 0.0, 0)


@torch.no_grad()
def ann_channel_means(ann: nn.Module | ActivationProbe, x: torch.Tensor,
                      thetas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per activation call site, the channel means of the ANN activation clipped to ``[0, θ]`` (what an IF layer
    with threshold θ can express): ``{name: [C]}`` from one hooked forward pass on ``x`` (pass an
    :class:`~ftbc_core.convert.ActivationProbe` of the ANN to trace it once for many batches)."""
    means: dict[str, torch.Tensor] = {}

    def keep(name: str, out: torch.Tensor) -> None:
        a = clip_to_threshold(out, thetas[name])
        means[name] = a.transpose(0, 1).reshape(a.shape[1], -1).mean(1)

    (ann if isinstance(ann, ActivationProbe) else ActivationProbe(ann)).observe(x, keep)
    return means
