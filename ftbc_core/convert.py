"""The conversion front end: which activation *call* becomes which spiking layer, and what cannot convert.

The ANN is traced with ``torch.fx`` so that every activation call site is seen: a module used once, a module
used twice (torchvision's ``self.relu``), and functional calls (``F.relu``, ``torch.relu``, ``x.relu()``,
``torch.clamp(x, 0, a)``, ``F.relu6``, ``F.hardtanh(x, 0, a)``). Each call site gets its own name, its own
module and so its own θ, bias, calibration target and recorder slot:

- a module called once keeps its name (``layers.0.act``);
- the k-th call (k >= 2) of a shared module is ``NAME:k`` (``layer1.0.relu:2``);
- a functional call is named after the module whose ``forward`` makes it and the function (``block.relu``).

The *mapping* says what converts to what: ``{activation class: fn(module) -> ActivationSpec}`` (θ, and the
quantization levels when there are any). :data:`DEFAULT_MAPPING` covers this project's QCFS, ``nn.ReLU``,
``nn.ReLU6`` and ``nn.Hardtanh(0, a)``; :data:`NAMED_MAPPING` recognises the public codes' activation classes
by name (their code is the user's, not ours): the QCFS code's ``MyFloor(up, t)`` and ``TCL(up)``.

Whatever the simulator cannot run faithfully is refused before any work, with a :class:`ConversionError` whose
one line names the layer, what it is and what to do: activations with no IF equivalent (GELU, SiLU, LeakyReLU,
...), non-linear operations on spikes (MaxPool, a product of two spike tensors, ...), a tensor computed once
per image (e.g. the raw input) combined with per-step spikes, and forwards that ``torch.fx`` cannot trace
(data-dependent control flow).
"""

from __future__ import annotations

import copy
import numbers
import operator
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .neuron import QCFS, IFNeuron

__all__ = ["ConversionError", "ActivationSpec", "DEFAULT_MAPPING", "NAMED_MAPPING", "Site", "trace_sites",
           "activation_sites", "ActivationProbe", "observe_activations", "clip_to_threshold", "trace_model",
           "spiking_graph", "fold_batchnorm_graph"]


class ConversionError(ValueError):
    """A model that cannot be converted faithfully; the message is one line naming the layer and the fix."""


@dataclass(frozen=True)
class ActivationSpec:
    """What one activation converts to.

    Attributes:
        kind: a short human name (``QCFS``, ``ReLU``, ``MyFloor``...).
        theta: the threshold ``[1]`` or ``[C]`` when the activation fixes it (QCFS λ, a clip value); None when
            it must come from activation statistics (plain ReLU).
        levels: the ANN's quantization levels L (QCFS-like activations), else None.
    """

    kind: str
    theta: torch.Tensor | None = None
    levels: int | None = None


Mapping = dict[type, Callable[[nn.Module], ActivationSpec]]


def _positive(value: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(value).detach().float().reshape(-1).cpu()
    if t.numel() == 0 or not torch.isfinite(t).all() or (t <= 0).any():
        raise ConversionError(f"{what} must be finite and > 0 to be a threshold, got {t.tolist()[:4]}")
    return t.clone()


def _hardtanh_spec(m: nn.Hardtanh) -> ActivationSpec:
    if m.min_val != 0:
        raise ConversionError(f"Hardtanh({m.min_val}, {m.max_val}) is not a clipped ReLU (min must be 0)")
    return ActivationSpec("Hardtanh", _positive(m.max_val, "Hardtanh's max_val"))


DEFAULT_MAPPING: Mapping = {
    QCFS: lambda m: ActivationSpec("QCFS", _positive(m.threshold.abs(), "the QCFS threshold λ"), m.levels),
    nn.ReLU: lambda m: ActivationSpec("ReLU"),
    nn.ReLU6: lambda m: ActivationSpec("ReLU6", torch.tensor([6.0])),
    nn.Hardtanh: _hardtanh_spec,
}

# Activation classes of the public codes, recognised by class name (a user's own copy of the public code
# defines its own class, so matching by type would miss it).
def _ftbc_code_if(m: nn.Module) -> ActivationSpec:
    """The FTBC code's ``IF(T, L, thresh)``: a QCFS activation while ``T == 0`` (ANN mode), an IF layer after."""
    if int(getattr(m, "T", 0)) != 0:
        raise ConversionError(f"{type(m).__name__} is already a spiking layer (T = {m.T}); give the ANN (T = 0)")
    return ActivationSpec("IF (FTBC code, ANN mode)", _positive(m.thresh, "IF's thresh"), int(m.L))


def _already_spiking(m: nn.Module) -> ActivationSpec:
    raise ConversionError(f"{type(m).__name__} is already a spiking layer; give the ANN it was converted from")


NAMED_MAPPING: dict[str, Callable[[nn.Module], ActivationSpec]] = {
    "MyFloor": lambda m: ActivationSpec("MyFloor", _positive(m.up, "MyFloor's up"), int(m.t)),  # QCFS code
    "TCL": lambda m: ActivationSpec("TCL", _positive(m.up, "TCL's up")),  # QCFS code, clip only
    "QCFS": lambda m: ActivationSpec("QCFS (COS code)", _positive(m.up, "QCFS's up"), int(m.t)),  # COS code
    "IF": _ftbc_code_if,  # FTBC code
    "ScaledNeuron": _already_spiking, "MPLayer": _already_spiking, "IFNeuron": _already_spiking,
}

# Activations with no IF equivalent, refused wherever they are.
_REFUSED_MODULES: dict[type, str] = {
    nn.GELU: "GELU", nn.SiLU: "SiLU", nn.LeakyReLU: "LeakyReLU", nn.ELU: "ELU", nn.SELU: "SELU", nn.CELU: "CELU",
    nn.PReLU: "PReLU", nn.Sigmoid: "Sigmoid", nn.Tanh: "Tanh", nn.Softplus: "Softplus", nn.Mish: "Mish",
    nn.Hardswish: "Hardswish", nn.Hardsigmoid: "Hardsigmoid", nn.LogSigmoid: "LogSigmoid", nn.RReLU: "RReLU",
}
_REFUSED_FUNCTIONS: dict[Any, str] = {
    F.gelu: "F.gelu", F.silu: "F.silu", F.leaky_relu: "F.leaky_relu", F.elu: "F.elu", F.selu: "F.selu",
    F.celu: "F.celu", F.prelu: "F.prelu", torch.sigmoid: "torch.sigmoid", F.sigmoid: "F.sigmoid",
    torch.tanh: "torch.tanh", F.tanh: "F.tanh", F.softplus: "F.softplus", F.mish: "F.mish",
    F.hardswish: "F.hardswish", F.hardsigmoid: "F.hardsigmoid", F.logsigmoid: "F.logsigmoid",
}
_REFUSED_METHODS = {"sigmoid": "Tensor.sigmoid", "tanh": "Tensor.tanh", "sigmoid_": "Tensor.sigmoid_",
                    "tanh_": "Tensor.tanh_"}
_ACTIVATION_ADVICE = "train with ReLU or QCFS there (an IF neuron can only express a clipped ReLU)"

# Operations that are linear per image and step, so they run on the flattened [T*B, ...] spike sequence as
# they are. Everything else on spikes is refused.
_LINEAR_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                   nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                   nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                   nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d,
                   nn.Dropout2d, nn.Dropout3d, nn.ZeroPad2d, IFNeuron)
_LINEAR_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.neg, operator.getitem,
                     torch.add, torch.sub, torch.cat, torch.flatten, torch.reshape, torch.neg, F.avg_pool1d,
                     F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                     F.adaptive_avg_pool3d, F.dropout, F.linear, F.conv1d, F.conv2d, F.conv3d}
_SCALING_FUNCTIONS = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div}
_LINEAR_METHODS = {"view", "reshape", "flatten", "contiguous", "add", "add_", "sub", "sub_", "mean", "sum",
                   "size", "dim", "unsqueeze", "squeeze", "to", "float", "type_as", "neg"}
_SCALING_METHODS = {"mul", "mul_", "div", "div_"}
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
            nn.AdaptiveMaxPool3d)
_MAXPOOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                      F.adaptive_max_pool3d, torch.max_pool2d}


@dataclass(frozen=True)
class Site:
    """One activation call site: its unique ``name``, the module the call ran, and what it converts to."""

    name: str
    module: nn.Module
    spec: ActivationSpec


# torch.fx patches nn.Module.__call__ and __getattr__ for the whole process while it traces. One trace at a
# time, and the tracer lets other threads' module calls (a simulation in another dashboard session) through.
_TRACE_LOCK = threading.Lock()


class _SiteTracer(fx.Tracer):
    """A tracer that keeps mapped activations (and refused ones, to name them) as single calls, and that
    ignores module calls made by other threads while it traces."""

    def __init__(self, mapping: Mapping) -> None:
        super().__init__()
        self.mapping = mapping
        self._thread: int | None = None

    def trace(self, root, concrete_args=None) -> fx.Graph:
        with _TRACE_LOCK:
            self._thread = threading.get_ident()
            try:
                return super().trace(root, concrete_args)
            finally:
                self._thread = None

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if _lookup(m, self.mapping) is not None or type(m) in _REFUSED_MODULES or isinstance(m, _Site):
            return True
        return super().is_leaf_module(m, qualname)


class _Site(nn.Module):
    """A call site's own module: runs ``inner`` (shared with the model, so nothing is copied)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _lookup(m: nn.Module, mapping: Mapping) -> Callable[[nn.Module], ActivationSpec] | None:
    for cls in type(m).__mro__:
        if cls in mapping:
            return mapping[cls]
    return NAMED_MAPPING.get(type(m).__name__)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None


def _functional_site(node: fx.Node) -> nn.Module | None:
    """The module equivalent of a functional activation call (``F.relu``, ``torch.clamp(x, 0, a)``...), or None
    if ``node`` is not one. Raises ConversionError for a clamp that is not a clipped ReLU."""
    fn, args, kw = node.target, list(node.args[1:]), dict(node.kwargs)
    kw.pop("inplace", None)
    if node.op == "call_function":
        if fn in (F.relu, torch.relu, torch.relu_, F.relu_):
            return nn.ReLU()
        if fn is F.relu6:
            return nn.ReLU6()
        if fn in (F.hardtanh, F.hardtanh_):
            lo = args[0] if args else kw.get("min_val", -1.0)
            hi = args[1] if len(args) > 1 else kw.get("max_val", 1.0)
            return _clamp_module(node, lo, hi)
        if fn in (torch.clamp, torch.clip):
            lo = args[0] if args else kw.get("min")
            hi = args[1] if len(args) > 1 else kw.get("max")
            return _clamp_module(node, lo, hi)
        if fn is torch.clamp_min:
            return _clamp_module(node, args[0] if args else kw.get("min"), None)
    elif node.op == "call_method":
        if fn in ("relu", "relu_"):
            return nn.ReLU()
        if fn in ("clamp", "clamp_", "clip", "clip_"):
            lo = args[0] if args else kw.get("min")
            hi = args[1] if len(args) > 1 else kw.get("max")
            return _clamp_module(node, lo, hi)
        if fn in ("clamp_min", "clamp_min_"):
            return _clamp_module(node, args[0] if args else kw.get("min"), None)
    return None


def _clamp_module(node: fx.Node, lo: Any, hi: Any) -> nn.Module:
    lo_v, hi_v = _number(lo), _number(hi) if hi is not None else None
    if lo_v != 0.0 or (hi is not None and (hi_v is None or hi_v <= 0)):
        raise ConversionError(f"{_describe(node)} clamps to [{lo}, {hi}]: only a clipped ReLU (min 0, a constant "
                              "max > 0) converts to IF neurons; rewrite it as ReLU, ReLU6 or Hardtanh(0, a)")
    return nn.ReLU() if hi is None else nn.Hardtanh(0.0, hi_v)


def _scope(node: fx.Node) -> str:
    """Qualified name of the module whose forward made this call ('' for the model's own forward)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1]
    path = path[0] if isinstance(path, tuple) else path
    return path if isinstance(path, str) else ""


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"layer {node.target!r}"
    name = getattr(node.target, "__name__", str(node.target))
    where = _scope(node)
    return f"the call {name}() in {where + '.forward' if where else 'forward'} (node {node.name!r})"


def trace_model(model: nn.Module, mapping: Mapping) -> fx.GraphModule:
    tracer = _SiteTracer(mapping)
    try:
        graph = tracer.trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, ... on data-dependent control flow
        first = " ".join(str(err).split())[:200]
        raise ConversionError(f"cannot trace {type(model).__name__}.forward with torch.fx ({first}): conversion "
                              "needs a forward without data-dependent control flow (no if/for on tensor values)") \
            from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _unique(name: str, taken: set[str], gm: nn.Module) -> str:
    def free(n: str) -> bool:
        if n in taken:
            return False
        try:
            gm.get_submodule(n)
        except AttributeError:
            return True
        return False

    if free(name):
        return name
    k = 2
    while not free(f"{name}:{k}"):
        k += 1
    return f"{name}:{k}"


def trace_sites(model: nn.Module, mapping: Mapping | None = None) -> tuple[fx.GraphModule, list[Site]]:
    """Trace ``model`` and give every activation call site its own :class:`_Site` module.

    Returns:
        ``(graph module, sites in forward order)``. The graph module computes exactly what ``model`` does and
        shares its parameters (nothing is copied; ``model`` is not modified); hooks on a site's module see
        that call only.

    Raises:
        ConversionError: an activation with no IF equivalent, a clamp that is not a clipped ReLU, an untraceable
            forward, or no activation at all.
    """
    mapping = {**DEFAULT_MAPPING, **(mapping or {})}
    gm = trace_model(model, mapping)
    sites: list[Site] = []
    taken: set[str] = set()
    seen_modules: dict[str, int] = {}
    originals: dict[str, nn.Module] = {}  # a module's first call replaces it by its site in gm: keep the module
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            module = originals.setdefault(node.target, gm.get_submodule(node.target))
            if type(module) in _REFUSED_MODULES:
                raise ConversionError(f"layer {node.target!r} is a {_REFUSED_MODULES[type(module)]}, which has no "
                                      f"spiking equivalent: {_ACTIVATION_ADVICE}")
            rule = _lookup(module, mapping)
            if rule is None:
                continue
            seen_modules[node.target] = seen_modules.get(node.target, 0) + 1
            base = node.target if seen_modules[node.target] == 1 else f"{node.target}:{seen_modules[node.target]}"
            name = base if base not in taken else _unique(base, taken, gm)
            spec = _spec(rule, module, name)
        elif node.op in ("call_function", "call_method"):
            refused = _REFUSED_FUNCTIONS.get(node.target) if node.op == "call_function" else \
                _REFUSED_METHODS.get(node.target)
            if refused:
                raise ConversionError(f"{_describe(node)} is {refused}, which has no spiking equivalent: "
                                      f"{_ACTIVATION_ADVICE}")
            module = _functional_site(node)
            if module is None:
                continue
            fn = getattr(node.target, "__name__", str(node.target)).rstrip("_")
            scope = _scope(node)
            name = _unique(f"{scope}.{fn}" if scope else fn, taken, gm)
            spec = _spec(_lookup(module, DEFAULT_MAPPING), module, name)
            node.args, node.kwargs = node.args[:1], {}
        else:
            continue
        taken.add(name)
        site = _Site(module)
        gm.add_submodule(name, site)
        node.op, node.target = "call_module", name
        sites.append(Site(name, module, spec))
    if not sites:
        raise ConversionError(f"{type(model).__name__} has no activation to convert (no ReLU, QCFS, clipped ReLU "
                              "or mapped activation)")
    gm.graph.lint()
    gm.recompile()
    return gm, sites


def _spec(rule: Callable[[nn.Module], ActivationSpec], module: nn.Module, name: str) -> ActivationSpec:
    try:
        return rule(module)
    except ConversionError as err:
        raise ConversionError(f"layer {name!r}: {err}") from None


def activation_sites(model: nn.Module, mapping: Mapping | None = None) -> tuple[nn.Module, list[Site]]:
    """``(probe, sites)``: run ``probe(x)`` with forward hooks on each site's module (``probe.get_submodule(
    site.name)``) to see every activation call of ``model`` separately. Cheap (a trace, no weight copies)."""
    return trace_sites(model, mapping)


class ActivationProbe:
    """``model`` traced once (:func:`activation_sites`) to observe every activation call separately on many batches.

    Attributes:
        model: the module observed (its parameters are shared, nothing is copied).
        sites: the activation call sites in forward order.
    """

    def __init__(self, model: nn.Module, mapping: Mapping | None = None) -> None:
        self.model = model
        self._graph, self.sites = activation_sites(model, mapping)

    @property
    def names(self) -> list[str]:
        return [site.name for site in self.sites]

    @torch.no_grad()
    def observe(self, batches: list[torch.Tensor] | torch.Tensor, fn: Callable[[str, torch.Tensor], None]) -> None:
        """Run the model in eval mode (its mode restored after) on ``batches`` and call ``fn(site name, output)`` at
        every activation call."""
        handles = [self._graph.get_submodule(s.name).register_forward_hook(lambda _m, _i, out, n=s.name: fn(n, out))
                   for s in self.sites]
        was_training = self.model.training
        self.model.eval()
        try:
            for x in ([batches] if isinstance(batches, torch.Tensor) else batches):
                self._graph(x)
        finally:
            for h in handles:
                h.remove()
            self.model.train(was_training)


def observe_activations(model: nn.Module, batches: list[torch.Tensor] | torch.Tensor,
                        fn: Callable[[str, torch.Tensor], None], mapping: Mapping | None = None) -> None:
    """Run ``model`` in eval mode (its mode restored after) on ``batches`` and call ``fn(site name, output)`` at
    every activation call, each call site separately (see :func:`activation_sites`; this traces ``model`` on
    every call: :class:`ActivationProbe` traces once for many calls)."""
    ActivationProbe(model, mapping).observe(batches, fn)


def clip_to_threshold(out: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """An activation ``[B, C, ...]`` clipped to ``[0, θ]`` (``θ`` ``[C]`` or ``[1]``), float32: what an IF layer
    with threshold θ can express."""
    return torch.minimum(out.float().clamp_min(0), theta.to(out.device).view(-1, *([1] * (out.dim() - 2))))


# -- the spiking graph ---------------------------------------------------------------------------------------


def fold_batchnorm_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every BatchNorm whose only input is a conv called once (and used only by that BN) into the conv, in
    place on ``gm`` (eval mode): the same function up to float rounding, one layer call fewer per pair."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.BatchNorm2d):
            continue
        bn = gm.get_submodule(node.target)
        conv_node = node.args[0] if node.args else None
        if not (isinstance(conv_node, fx.Node) and conv_node.op == "call_module" and len(conv_node.users) == 1
                and calls.get(conv_node.target) == 1 and bn.track_running_stats and bn.running_mean is not None):
            continue
        conv = gm.get_submodule(conv_node.target)
        if not isinstance(conv, nn.Conv2d):
            continue
        _set_submodule(gm, conv_node.target, fuse_conv_bn_eval(conv.eval(), bn.eval()))
        node.replace_all_uses_with(conv_node)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, child = target.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def spiking_graph(
    ann: nn.Module, make_neuron: Callable[[Site], IFNeuron], *, mapping: Mapping | None = None,
    fold_bn: bool = True,
) -> tuple[fx.GraphModule, list[Site]]:
    """A deep copy of ``ann`` as a graph module whose activation call sites are the IF layers made by
    ``make_neuron(site)``; checked so that it simulates faithfully on ``[T*B, ...]`` sequences.

    Raises:
        ConversionError: before any simulation, for anything :func:`check_spiking_graph` refuses.
    """
    model = copy.deepcopy(ann).float().eval()
    gm, sites = trace_sites(model, mapping)
    for site in sites:
        _set_submodule(gm, site.name, make_neuron(site))
    if fold_bn:
        fold_batchnorm_graph(gm)
    check_spiking_graph(gm)
    gm.recompile()
    return gm, sites


_STATIC, _TEMPORAL, _CONST = "per image", "per step", "constant"


def check_spiking_graph(gm: fx.GraphModule) -> None:
    """Refuse, with one line, a graph the simulator would run unfaithfully.

    A tensor is *constant* (parameters, and what is computed from them only), *per image* (computed from the
    input before any spiking layer: run once on ``[B, ...]``) or *per step* (downstream of a spiking layer,
    ``[T*B, ...]``). Per-step tensors may only go through operations that are linear per image and step; a
    per-image tensor may not meet a per-step one (e.g. a skip connection from the raw input past a spiking
    layer).
    """
    kind: dict[fx.Node, str] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            kind[node] = _STATIC
            continue
        if node.op == "get_attr":
            kind[node] = _CONST
            continue
        inputs = [kind[a] for a in node.all_input_nodes]
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, IFNeuron):
            kind[node] = _TEMPORAL
            continue
        if node.op == "output" or not any(k == _TEMPORAL for k in inputs):
            kind[node] = _STATIC if _STATIC in inputs else _CONST
            continue
        kind[node] = _TEMPORAL
        if _is_shape_query(node):
            kind[node] = _CONST
            continue
        if _STATIC in inputs:
            static = next(a for a in node.all_input_nodes if kind[a] == _STATIC)
            raise ConversionError(f"{_describe(node)} combines {static.name!r}, computed once per image before any "
                                  "spiking layer (e.g. the raw input), with spikes: the simulator cannot express "
                                  "this skip connection; route it through a spiking layer (an activation) first")
        _check_linear(node, module, [kind[a] for a in node.args if isinstance(a, fx.Node)])


def _is_shape_query(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    return node.op == "call_function" and node.target is getattr and node.args[1:2] in (("shape",), ("ndim",))


def _check_linear(node: fx.Node, module: nn.Module | None, arg_kinds: list[str]) -> None:
    if module is not None:
        if isinstance(module, _MAXPOOL):
            raise ConversionError(f"{_describe(node)} is a {type(module).__name__} on spikes: the max of spike "
                                  "trains is not the spike train of the max; train with AvgPool (nn.AvgPool2d)")
        if isinstance(module, _LINEAR_MODULES):
            return
        raise ConversionError(f"{_describe(node)} is a {type(module).__name__} on spikes, which is not linear per "
                              "step; only conv/linear/BN/average pooling/dropout/flatten may follow a spiking layer")
    if node.op == "call_function":
        if node.target in _MAXPOOL_FUNCTIONS:
            raise ConversionError(f"{_describe(node)} max-pools spikes: the max of spike trains is not the spike "
                                  "train of the max; train with average pooling (F.avg_pool2d)")
        if node.target is operator.getitem:
            _check_index(node)
            return
        if node.target in _LINEAR_FUNCTIONS:
            _check_batch_axis(node)
            return
        if node.target in _SCALING_FUNCTIONS and arg_kinds.count(_TEMPORAL) <= 1 and \
                not (node.target in (operator.truediv, operator.itruediv, torch.div) and _TEMPORAL in arg_kinds[1:]):
            return
    elif node.op == "call_method":
        if node.target in _LINEAR_METHODS:
            _check_batch_axis(node)
            return
        if node.target in _SCALING_METHODS and arg_kinds.count(_TEMPORAL) <= 1 and not \
                (node.target.startswith("div") and _TEMPORAL in arg_kinds[1:]):
            return
    name = getattr(node.target, "__name__", str(node.target))
    raise ConversionError(f"{_describe(node)} applies {name} to spikes, which is not linear per step: the SNN "
                          "cannot compute it faithfully; move it before the first activation or replace it")


def _check_index(node: fx.Node) -> None:
    """Refuse indexing spikes along axis 0 (``x[0]``, ``x[:2]``): it would pick steps of images, not images."""
    index = node.args[1] if len(node.args) > 1 else None
    first = index[0] if isinstance(index, tuple) and index else index
    if first is Ellipsis or (isinstance(first, slice) and first == slice(None)):
        return
    raise ConversionError(f"{_describe(node)} indexes axis 0 (images), which the simulator flattens with time; "
                          "index axes >= 1 only (x[:, ...])")


def _check_batch_axis(node: fx.Node) -> None:
    """Refuse a reduction or concatenation over axis 0 (it would mix images and steps)."""
    dims = [node.kwargs.get("dim")]
    if node.target in (torch.cat,) or (node.op == "call_method" and node.target in ("mean", "sum")):
        dims.append(node.args[1] if len(node.args) > 1 else None)
        if node.target is torch.cat and dims == [None, None]:
            dims = [0]
    if node.target is torch.flatten or (node.op == "call_method" and node.target == "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        dims = [0] if start == 0 else []
    flat = []
    for d in dims:
        flat += list(d) if isinstance(d, (tuple, list)) else [d]
    if 0 in flat:
        raise ConversionError(f"{_describe(node)} works across axis 0 (images), which the simulator flattens with "
                              "time; use axes >= 1 (e.g. torch.flatten(x, 1))")
    if node.op == "call_method" and node.target in ("mean", "sum") and len(node.args) == 1 and "dim" not in \
            node.kwargs:
        raise ConversionError(f"{_describe(node)} reduces over every axis, images included; give dims >= 1")
