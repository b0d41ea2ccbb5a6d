"""Each correction method's options in the form, built from the method registry (``METHODS``: a method's
``defaults`` and ``option_specs()``), so a method registered in the core gets its widgets with no dashboard edit.

Every selectable method with options gets a block of widgets (keys ``opt.METHOD.OPTION``), first set to the
method's own defaults. Not widgets: ``seed`` (the run's seed), ``str`` options (the bias file's ``path``: the
bias upload fills it in), and options without a spec (they keep their default). An optional option (None: the
method's own choice) gets that as its first choice.

A chosen method's options reach ``ExperimentConfig.method_options`` as ``{method: {option: value}}`` (what
:func:`ftbc_core.calibration.base.resolve_options` and the CLI's ``--option METHOD.KEY=VALUE`` give), and only
where they differ from the method's defaults: the held-out selection (``select``) keeps the options one set and
chooses the others from the method's grid.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import streamlit as st

from ftbc_core.calibration import METHODS, get_method
from ftbc_core.calibration.base import OptionSpec, resolve_options, selectable_methods
from ftbc_core.experiment import ExperimentConfig

OWN_CHOICE = "method's own choice"
NOT_WIDGETS = ("seed",)  # the run's seed (ExperimentConfig.seed), not a per-method choice
FLOAT_STEP = 0.01
OPEN_MIN = 0.001  # the smallest value of a float option whose lower bound is excluded (α > 0)
CHOICES_MAX = 256  # an optional int option with at most this many values is a select box, else a text field


def widget_specs(method: str) -> dict[str, OptionSpec]:
    """``{option: spec}`` of the options of ``method`` that the form shows."""
    return {k: s for k, s in get_method(method).option_specs().items() if k not in NOT_WIDGETS and s.kind is not str}


def widget_key(method: str, option: str) -> str:
    return f"opt.{method}.{option}"


def parse(spec: OptionSpec, option: str, raw: str) -> Any:
    """A text value (page address, text field) as the option's value; ``none`` or blank: None where optional.
    ValueError (naming the option, from the core's check) if unusable."""
    text = raw.strip()
    if spec.optional and text.lower() in ("", "none"):
        return None
    return spec.check(option, text)


def initial_options(params: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Every selectable method's first widget values: its defaults, then shared page-address fields
    (``alpha=0.3``: every method that has α), then per-method ones (``ftbc-layer.alpha=0.1``). Unusable
    values are ignored."""
    values = {}
    for method in selectable_methods():
        specs = widget_specs(method)
        own = {k: get_method(method).defaults[k] for k in specs}
        for source in (lambda k: k, lambda k: f"{method}.{k}"):
            for option, spec in specs.items():
                raw = params.get(source(option))
                if raw is None:
                    continue
                try:
                    own[option] = parse(spec, option, raw)
                except ValueError:
                    continue
        if own:
            values[method] = own
    return values


def submitted_options(initial: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The widget values as last submitted (``initial`` where a widget has not been shown yet)."""
    return {m: {k: st.session_state.get(widget_key(m, k), v) for k, v in opts.items()} for m, opts in initial.items()}


def config_options(methods: list[str] | tuple[str, ...], values: dict[str, dict[str, Any]]) -> dict[str, dict]:
    """``ExperimentConfig.method_options`` for the chosen ``methods``: each one's values that differ from its
    defaults."""
    chosen = {}
    for method in methods:
        defaults = get_method(method).defaults
        changed = {k: v for k, v in values.get(method, {}).items() if v != defaults.get(k)}
        if changed:
            chosen[method] = changed
    return chosen


def resolved_options(cfg: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """Every chosen method's full options (defaults filled in) as the core will use them; ValueError if any
    is unusable."""
    given = resolve_options(cfg.methods, cfg.method_options)
    return {m: get_method(m).options(given[m]) for m in cfg.methods}


def _widget(method: str, option: str, spec: OptionSpec, value: Any, where: Any) -> Any:
    """One option's widget in ``where`` (a column): a number field, or for an optional option a choice that
    starts with the method's own (a text field where the range is too large to list)."""
    key, unbounded = widget_key(method, option), spec.high == math.inf
    label = spec.label[:1].upper() + spec.label[1:]
    if spec.optional:
        if spec.kind is int and not unbounded and spec.high - spec.low < CHOICES_MAX:
            choices = [None] + list(range(int(spec.low) + int(spec.low_open), int(spec.high) + 1))
            return where.selectbox(label, choices, choices.index(value) if value in choices else 0, key=key,
                                   format_func=lambda v: OWN_CHOICE if v is None else str(v), help=spec.help)
        return where.text_input(label, "" if value is None else str(value), key=key, placeholder=OWN_CHOICE,
                                help=f"{spec.help} ({spec.rule()}; blank: the {OWN_CHOICE})")
    if spec.kind is int:
        return where.number_input(label, int(spec.low) + int(spec.low_open), None if unbounded else int(spec.high),
                                  int(value), 1, key=key, help=spec.help)
    low = spec.low + OPEN_MIN if spec.low_open else spec.low
    return where.number_input(label, float(low), None if unbounded else float(spec.high), float(value),
                              FLOAT_STEP, "%.3f", key=key, help=spec.help)


def option_widgets(initial: dict[str, dict[str, Any]], chosen: list[str]) -> dict[str, dict[str, Any]]:
    """Every method's option widgets (in a form), one expander per method, open for the ``chosen`` ones.

    Returns:
        ``{method: {option: value}}``; an optional option from a text field is still text (see :func:`checked`).
    """
    values = {}
    for method, opts in initial.items():
        specs = widget_specs(method)
        with st.expander(f"{METHODS[method].label}: options", expanded=method in chosen):
            cols = st.columns(2)
            values[method] = {k: _widget(method, k, specs[k], v, cols[i % 2]) for i, (k, v) in enumerate(opts.items())}
    return values


def checked(values: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The widget values with text fields parsed (ValueError naming the method and option if unusable)."""
    out = {}
    for method, opts in values.items():
        specs = widget_specs(method)
        try:
            out[method] = {k: parse(specs[k], k, v) if isinstance(v, str) else v for k, v in opts.items()}
        except ValueError as err:
            raise ValueError(f"{METHODS[method].label}: {err}") from None
    return out
