"""Forward Temporal Bias Correction (Wu et al., ECCV 2024), fitted inside one SNN forward per batch.

For each calibration batch: one hooked ANN forward gives every layer's target channel means ``A^l``; then one SNN
forward runs with a step rule on every IF layer. When layer l reaches step t (its input already produced by the
corrected layers before it), the rule fits ``b^l[t]`` and emits the corrected spikes, so the cost per batch is
about one ANN plus one SNN forward (O(L·T)), not a re-run of the network per layer.

Paper's α-iteration (``ftbc-alpha``, ``ftbc-layer``)::

    E = channel-mean of s[t] with the current b[t];   b[t] += α (E - A);   redo step t with the new b[t]

It assumes the channel's firing rate moves smoothly with b. Where many neurons share one exact value of
``v[t-1] + z[t]`` (a point mass, e.g. the constant background of MNIST digits), the rate jumps as b crosses it,
no bias reaches a target inside the jump, and the iteration cycles around it for ever: the result then depends on
the number of batches and the draw (docs/method.md, section 5).

Averaged bracketed root with a running-mean target (``ftbc``, the default), per batch, step and channel, with
``g(b) = E(b) - A_t`` evaluated exactly on the batch (the same float operations as the deployed neuron; each
evaluation is one subtraction, one comparison and one reduction over the step's tensor)::

    A_t  = A + Σ_τ<t (A - E_τ)   the ANN mean plus what the batch's earlier steps left unmatched (E_τ: their
                                 spike means with the biases just fitted), so the running mean of the spikes,
                                 which is what the output reads, follows A even where a step cannot match it
    r    = the evaluated bias of smallest |g| in a short root search from b[t]: the α step first, then regula
           falsi (Illinois) once g changed sign, else a secant step     (this batch's root; 8 evaluations on the
           first batch, which starts from b = 0, then 4)
    m    = b[t] + (r - b[t]) / k                                       (running mean over the k batches so far)
    b[t] = the evaluated point of smallest |g| within |m - b[t]| of m  (the same search, windowed; 3 evaluations)

The running mean makes the fit converge: the change per batch shrinks like 1/k (``CalibrationReport.bias_change``).
Only evaluated points are kept, so at a point mass every candidate fires all tied neurons or none, and the windowed
search keeps the mean from landing on an arbitrary side of it: it takes the side closer to the target. Where every
step can be matched, ``A_t = A`` and ``ftbc`` equals ``ftbc-root`` (the same rule with ``A_t = A``). Where a step
cannot (a point mass), ``ftbc-root`` leaves the gap in place at every later step, and its choice of side depends on
the last batch: on the shipped cnn-mnist with α 0.1 x 8 batches it fell to 88.1 % at T = 4 on one draw of four,
``ftbc`` stayed at 98.95-99.05 % (README, Results).

Exact root (``ftbc-exact``): the bias that makes the fraction of neurons with ``u[t] >= θ`` equal ``A/θ`` is a
quantile of ``w = v[t-1] + z[t] - θ`` over the batch and positions: ``b = quantile(w, 1 - A/θ)``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed as dist
from ..convert import ActivationProbe
from ..neuron import IFNeuron, channel_view, if_step
from ..snn import SpikingNetwork, check_timesteps
from .base import (CalibrationMethod, CalibrationReport, Progress, ann_channel_means, check_options, copy_snn,
                   register)

__all__ = ["FtbcRule", "FtbcRootRule", "fit_biases", "FTBC", "FTBCAlpha", "FTBCExact", "FTBCLayer", "FTBCRoot"]

MODES = ("alpha", "exact", "root", "carry")


def _channel_mean(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, ...] -> [C]``: mean over batch and positions."""
    return x.transpose(0, 1).reshape(x.shape[1], -1).mean(1)


class FtbcRule:
    """Step rule that fits one layer's ``[T, C]`` biases while it simulates (passed to ``SpikingNetwork.simulate(rules=...)``).

    Args:
        target: ANN channel means ``[C]`` for this batch.
        alpha: step size of the α-iteration (ignored by ``exact``).
        mode: ``alpha`` or ``exact``.
        layerwise: one bias per step for the whole layer (``[T, 1]``) instead of one per channel.
        exact_weight: weight of this batch's exact root in a running average over batches (1 = replace).
    """

    def __init__(self, target: torch.Tensor, alpha: float, mode: str = "alpha", layerwise: bool = False,
                 exact_weight: float = 1.0) -> None:
        self.target = target.mean().view(1) if layerwise else target
        self.alpha = float(alpha)
        self.mode = mode
        self.layerwise = layerwise
        self.exact_weight = float(exact_weight)

    def _mean(self, fired: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Channel means of the spikes ``θ·H`` from the 0/1 firing ``H``: ``θ_c · mean(H_c)`` (layer mean if
        layerwise)."""
        m = dist.all_reduce_mean(_channel_mean(fired), fired.numel() // fired.shape[1], binary=True) * theta
        return m.mean().view(1) if self.layerwise else m

    def _exact_root(self, neuron: IFNeuron, v: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        theta = neuron.theta.to(v.device)
        w = v + z_t - channel_view(theta, v.dim())  # fires iff w >= b
        w = w.transpose(0, 1).reshape(w.shape[1], -1)  # [C, N]
        w = dist.all_gather_cat(w, 1)  # under torchrun: the quantile over every process's values
        if self.layerwise:
            w, theta = (w / theta.view(-1, 1)).reshape(1, -1), theta.mean().view(1)  # per-channel θ: compare w/θ
        n = w.shape[1]
        p = (self.target / theta.expand_as(self.target)).clamp(0.0, 1.0)  # wanted fraction of firing neurons
        k = torch.round(p * n).long()  # fire the k largest
        ws = torch.sort(w, dim=1, descending=True).values
        hi = ws.gather(1, (k - 1).clamp(0, n - 1).view(-1, 1)).squeeze(1)  # k-th largest: fires
        lo = ws.gather(1, k.clamp(0, n - 1).view(-1, 1)).squeeze(1)  # (k+1)-th largest: must not fire
        root = torch.where(k >= n, ws[:, -1], torch.where(k <= 0, ws[:, 0] + 1e-3 * theta, 0.5 * (hi + lo)))
        # Ties across the k-th place (e.g. a channel whose neurons all get the same input): fire all tied
        # neurons or none of them, whichever count is closer to k.
        above = (ws > hi.view(-1, 1)).sum(1)  # neurons strictly above the tie: fire either way
        tied_end = (ws >= hi.view(-1, 1)).sum(1)  # ... and with the tie
        next_up = ws.gather(1, (above - 1).clamp(0, n - 1).view(-1, 1)).squeeze(1)  # smallest value above the tie
        fire_none = torch.where(above > 0, 0.5 * (hi + next_up), hi + 1e-3 * theta)
        closer_all = (tied_end - k).abs() <= (k - above).abs()
        root = torch.where((k > 0) & (k < n) & (hi == lo), torch.where(closer_all, hi, fire_none), root)
        if self.layerwise:
            root = root * theta
        return root

    def __call__(self, neuron: IFNeuron, t: int, v: torch.Tensor, z_t: torch.Tensor, out: torch.Tensor):
        theta = channel_view(neuron.theta, v.dim())
        if self.mode == "exact":
            root = self._exact_root(neuron, v, z_t)
            w = self.exact_weight
            neuron.bias[t] = root if w >= 1.0 else (1 - w) * neuron.bias[t] + w * root
            v_next, spikes = if_step(v, z_t, theta, channel_view(neuron.bias[t], v.dim()))
            out.copy_(spikes)
            return v_next
        # The α-iteration in place (the rule owns v; ``out`` holds the trial firing, then the step's spikes):
        # the same float32 operations as if_step, u = (v + z) − b, with v + z computed once.
        vz = v.add_(z_t)
        torch.sub(vz, channel_view(neuron.bias[t], v.dim()), out=out)
        torch.ge(out, theta, out=out)  # H(u − θ) with the current bias, as 0.0 / 1.0
        spike_mean = self._mean(out, neuron.theta)
        neuron.bias[t] += self.alpha * (spike_mean - self.target)
        u = vz.sub_(channel_view(neuron.bias[t], v.dim()))  # the step redone with the new bias
        torch.ge(u, theta, out=out)
        out.mul_(theta)  # s = θ·H(u − θ)
        return u.sub_(out)


def search_namespace(like: torch.Tensor):
    """The array library of :meth:`FtbcRootRule._search`'s bookkeeping for tensors like ``like``: numpy for
    float32 / float64 on the CPU (each of its operations on ``[C]`` vectors costs a fraction of a torch call's
    overhead), torch elsewhere (no copy off a GPU per evaluation; dtypes numpy lacks, e.g. bfloat16). Both give
    the same results: the same operations in the same dtype."""
    return np if like.device.type == "cpu" and like.dtype in (torch.float32, torch.float64) else torch


class FtbcRootRule:
    """Step rule of ``ftbc`` and ``ftbc-root``: this batch's root by a short search, averaged over batches, then
    the best point of this batch next to the average (see the module docstring).

    Args:
        target: ANN channel means ``[C]`` for this batch.
        alpha: the first trial step of the search, ``b + α·g(b)``.
        weight: weight of this batch's root in the running mean (``1/k`` for the k-th batch, 1 = replace).
        layerwise: one bias per step for the whole layer (``[T, 1]``).
        evals, window_evals: evaluations of ``g`` by the root search and by the windowed search (each one
            subtraction, one comparison and one reduction over the step's tensor, about a tenth of a conv's cost).
        first_evals: evaluations of the root search on the first batch (``weight`` 1), which starts from b = 0,
            far from the root, and whose root weighs most in the running mean.
        carry: aim step t at ``A + Σ_τ<t (A − E_τ)`` (the running mean follows A: ``ftbc``) instead of ``A``
            (``ftbc-root``); the rule then keeps the batch's unmatched remainder between its steps.
    """

    GROWTH = 4.0  # most a step may grow over the previous one before the root is bracketed

    def __init__(self, target: torch.Tensor, alpha: float, weight: float = 1.0, layerwise: bool = False,
                 evals: int = 4, window_evals: int = 3, first_evals: int = 8, carry: bool = False) -> None:
        self.target = target.mean().view(1) if layerwise else target
        self.carry = carry
        self._deficit = torch.zeros_like(self.target)  # carry: Σ_τ<t (A − E[s[τ]]) of this batch so far
        self.alpha = float(alpha)
        self.weight = float(weight)
        self.layerwise = layerwise
        self.evals = int(evals)
        self.window_evals = int(window_evals)
        self.first_evals = int(first_evals)
        self._flat: torch.Tensor | None = None  # v + z as [C, N], and a scratch of that shape (_error_fn)
        self._scratch: torch.Tensor | None = None

    def _error_fn(self, vz: torch.Tensor, theta: torch.Tensor, target: torch.Tensor, xp):
        """``g(b) = E(b) - A`` on this batch, with ``E(b)`` the channel means of ``θ·H((v + z) - b - θ)``: the
        same float operations as the deployed step, so ties fire exactly as there. ``b`` and ``g`` are arrays of
        ``xp`` (:func:`search_namespace`).

        ``v + z`` is copied once per step into a ``[C, N]`` buffer (channels as rows): each evaluation then
        reduces along contiguous rows, 3-6x faster on a CPU than reducing a ``[B, C, H, W]`` tensor over
        (0, 2, 3), with the same values (sums of 0/1 are exact below 2**24 in any order)."""
        c = vz.shape[1]
        if self._flat is None or self._flat.shape != (c, vz.numel() // c) or self._flat.device != vz.device:
            self._flat = torch.empty((c, vz.numel() // c), dtype=vz.dtype, device=vz.device)
            self._scratch = torch.empty_like(self._flat)
        flat, scratch = self._flat, self._scratch
        flat.view(c, vz.shape[0], *vz.shape[2:]).copy_(vz.movedim(1, 0))
        theta_col = theta.view(-1, 1)
        n = dist.all_reduce_count(flat.shape[1])  # under torchrun: every process's neurons

        def error(b):
            torch.sub(flat, (torch.from_numpy(b) if xp is np else b).view(-1, 1), out=scratch)
            torch.ge(scratch, theta_col, out=scratch)
            mean = dist.all_reduce_sum(scratch.sum(1)).div_(n).mul_(theta)  # sums of 0/1: exact below 2**24
            g = (mean.mean().view(1) if self.layerwise else mean) - target
            return g.numpy() if xp is np else g

        return error

    def _search(self, xp, error, start, radius, evals: int):
        """The bias of smallest ``|g|`` among ``evals`` evaluations from ``start`` (within ``radius`` of it), and
        its ``g``.

        Trial points: ``start + α·g`` first; then, once two points have errors of opposite signs (the root is
        bracketed), regula falsi with the Illinois modification; before that, the secant step towards the root,
        at most ``GROWTH`` times the previous step. Where ``g`` is exactly 0 nothing moves. Only evaluated points
        are returned, so at a point mass the result fires all tied neurons or none, whichever is closer to the
        target on this batch.

        The bookkeeping is about 25 operations on ``[C]`` vectors per evaluation, in ``xp``
        (:func:`search_namespace`).
        """
        g = error(start)
        best, best_g = start, g
        inf = xp.full_like(start, float("inf"))
        zero = xp.zeros_like(g)
        lo, g_lo = xp.where(g > 0, start, -inf), xp.where(g > 0, g, zero)  # g > 0 below the root
        hi, g_hi = xp.where(g < 0, start, inf), xp.where(g < 0, g, zero)
        b, kept = start, zero  # kept: +1 / -1 if the last evaluation replaced lo / hi (Illinois)
        one = xp.ones_like(g)
        b_prev = g_prev = None
        lower, upper = (start - radius, start + radius) if radius is not None else (None, None)
        for i in range(1, evals):
            bracketed = xp.isfinite(lo) & xp.isfinite(hi)
            if i == 1:
                cand = start + self.alpha * g
            else:
                with np.errstate(divide="ignore", invalid="ignore"):  # inf / nan handled below, as in torch
                    falsi = lo + (hi - lo) * (g_lo / (g_lo - g_hi))
                    falsi = xp.where(xp.isfinite(falsi), falsi, 0.5 * (lo + hi))
                    # not bracketed yet: the secant step towards the root, at most GROWTH times the last step
                    last = xp.abs(b - b_prev)
                    slope = (g - g_prev) / (b - b_prev)
                    newton = xp.abs(xp.where(slope < 0, -g / slope, inf))
                step = xp.minimum(newton, self.GROWTH * last)
                cand = xp.where(bracketed, falsi, b + xp.sign(g) * step)
            if lower is not None:
                cand = xp.minimum(xp.maximum(cand, lower), upper)
            cand = xp.where(best_g == 0, best, cand)  # exact already: stay (no change without an error)
            gc = error(cand)
            better = xp.abs(gc) < xp.abs(best_g)
            best, best_g = xp.where(better, cand, best), xp.where(better, gc, best_g)
            pos, neg = gc > 0, gc < 0
            g_lo_new = xp.where(pos, gc, xp.where(neg & (kept < 0) & bracketed, 0.5 * g_lo, g_lo))
            g_hi_new = xp.where(neg, gc, xp.where(pos & (kept > 0) & bracketed, 0.5 * g_hi, g_hi))
            lo, hi = xp.where(pos, cand, lo), xp.where(neg, cand, hi)
            g_lo, g_hi = g_lo_new, g_hi_new
            kept = xp.where(pos, one, xp.where(neg, -one, kept))
            b_prev, g_prev, b, g = b, g, cand, gc
        return best, best_g

    @torch.no_grad()  # a fit, not a differentiable step (and numpy takes no tensor that requires grad)
    def __call__(self, neuron: IFNeuron, t: int, v: torch.Tensor, z_t: torch.Tensor, out: torch.Tensor):
        vz = v.add_(z_t)  # the rule owns v; ``out`` is scratch until it receives the step's spikes
        target = self.target + self._deficit if self.carry else self.target
        xp = search_namespace(vz)
        as_xp = (lambda x: x.numpy()) if xp is np else (lambda x: x)  # noqa: E731  (a view: x is not changed)
        as_torch = torch.from_numpy if xp is np else (lambda x: x)
        error = self._error_fn(vz, neuron.theta, target, xp)
        b0 = neuron.bias[t].clone()
        root, g = self._search(xp, error, as_xp(b0), None, self.first_evals if self.weight >= 1.0 else self.evals)
        mean = torch.lerp(b0, as_torch(root), self.weight)
        if self.weight < 1.0 and self.window_evals > 1:
            m = as_xp(mean)
            m, g = self._search(xp, error, m, xp.abs(m - as_xp(b0)), self.window_evals)
            mean = as_torch(m)
        elif self.weight < 1.0 and self.carry:
            g = error(as_xp(mean))
        if self.carry:  # what this step leaves unmatched is asked of the next one
            self._deficit = -as_torch(g)
        if t == neuron.bias.shape[0] - 1:  # the layer's last step: its buffers go (one layer's at a time)
            self._flat = self._scratch = None
        neuron.bias[t] = mean
        theta = channel_view(neuron.theta, v.dim())
        u = vz.sub_(channel_view(neuron.bias[t], v.dim()))  # the step with the new bias
        torch.ge(u, theta, out=out)
        out.mul_(theta)  # s = θ·H(u − θ)
        return u.sub_(out)


@torch.no_grad()
def fit_biases(
    snn: SpikingNetwork,
    ann: nn.Module,
    images: torch.Tensor,
    timesteps: int,
    *,
    alpha: float = 0.1,
    batches: int = 4,
    batch_size: int = 64,
    passes: int = 1,
    mode: str = "alpha",
    layerwise: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[SpikingNetwork, tuple[float, ...], int]:
    """Fit FTBC biases on a copy of ``snn``.

    Args:
        images: calibration images ``[N, C, H, W]`` (training split) on any device.
        batches, batch_size: the calibration batches are drawn (seeded, without replacement while possible).
        passes: how many times the same batches are gone through.

    Returns:
        ``(calibrated copy, mean |Δb| per batch, images used)``.
    """
    timesteps = check_timesteps(timesteps)
    check_options({"alpha": alpha, "batches": batches, "batch_size": batch_size, "passes": passes})
    if mode not in MODES:
        raise ValueError(f"FTBC mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    if images.shape[0] == 0:
        raise ValueError("calibration needs at least one image")
    new = copy_snn(snn)
    device = next(new.parameters()).device
    neurons = new.neurons
    names = new.layer_names
    probe = ActivationProbe(ann)  # traced once for every batch's targets
    if probe.names != names:
        raise ValueError("the ANN and the SNN do not pair up layer by layer (was the SNN converted from this ANN?)")
    thetas = {n: neuron.theta for n, neuron in zip(names, neurons)}
    for neuron in neurons:  # fresh [T, C] biases; C is known after the first target
        neuron.bias = torch.zeros(timesteps, 0, device=device)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(images.shape[0], generator=gen)
    batch_size = min(batch_size, images.shape[0])
    chosen = [order.roll(-i * batch_size)[:batch_size] for i in range(batches)]
    changes: list[float] = []
    total = passes * len(chosen)
    for step_i in range(total):
        x = images[chosen[step_i % len(chosen)]].to(device)
        targets = ann_channel_means(probe, x, thetas)
        x = dist.local_part(x)  # torchrun: this process simulates its part (the targets are the whole batch's)
        bad = [n for n in names if not torch.isfinite(targets[n]).all()]
        if bad:
            raise ValueError(f"the ANN's activations in layer {bad[0]!r} are NaN or infinite on the calibration "
                             "images (weights too large, or a QCFS threshold λ of 0?): cannot calibrate")
        before, rules = [], {}
        for name, neuron in zip(names, neurons):
            c = 1 if layerwise else targets[name].numel()
            if neuron.bias.shape[1] != c:
                neuron.bias = torch.zeros(timesteps, c, device=device)
            before.append(neuron.bias.clone())
            weight = 1.0 / (step_i + 1)  # exact, root: running average of the per-batch roots
            if mode in ("root", "carry"):
                rules[neuron] = FtbcRootRule(targets[name].to(device), alpha, weight, layerwise,
                                             carry=mode == "carry")
            else:
                rules[neuron] = FtbcRule(targets[name].to(device), alpha, mode, layerwise, weight)
        new.simulate(x, timesteps, rules=rules)
        delta = torch.cat([(n.bias - b).abs().flatten() for n, b in zip(neurons, before)])
        changes.append(float(delta.mean()))
        if progress:
            progress((step_i + 1) / total, f"FTBC calibration batch {step_i + 1}/{total}")
    bad = [n for n, neuron in zip(names, neurons) if not torch.isfinite(neuron.bias).all()]
    if bad:  # e.g. input currents that overflow float32 in the SNN
        raise ValueError(f"calibration gave NaN or infinite biases in layer {bad[0]!r} (the SNN's input currents "
                         "overflow float32?)")
    n_images = int(torch.cat(chosen).unique().numel())
    return new, tuple(changes), n_images


def _grid(alphas: tuple[float, ...], batches: tuple[int, ...]) -> tuple[dict[str, Any], ...]:
    """The option sets ``--select auto`` tries: every α with every number of batches of 64."""
    return tuple({"alpha": a, "batches": b, "batch_size": 64} for a in alphas for b in batches)


# FTBC's selection grid: α 0.1/0.2/0.5 x 2/4/8 batches of 64.
ALPHA_GRID = _grid((0.1, 0.2, 0.5), (2, 4, 8))


class _FtbcBase(CalibrationMethod):
    fits_biases = True
    mode = "alpha"
    layerwise = False

    def calibrate(self, snn, ann, images, timesteps, options=None, progress=None):
        opts = self.options(options)
        start = time.perf_counter()
        new, changes, n_images = fit_biases(
            snn, ann, images, timesteps, alpha=opts.get("alpha", 1.0), batches=opts["batches"],
            batch_size=opts["batch_size"], passes=opts.get("passes", 1), mode=self.mode,
            layerwise=self.layerwise, seed=opts["seed"], progress=progress)
        seconds = time.perf_counter() - start
        biases = {n: neuron.bias.detach().cpu().numpy().astype(np.float32) for n, neuron in
                  zip(new.layer_names, new.neurons)}
        return new, CalibrationReport(self.name, opts, seconds, n_images, biases, changes)


@register
class FTBC(_FtbcBase):
    name = "ftbc"
    label = "FTBC (averaged root, running-mean target)"
    description = ("Per layer, step and channel biases fitted in forward passes: each batch's best bias (a short "
                   "root search from the α step) for the step's target, the ANN mean plus what the earlier steps "
                   "left unmatched, averaged over batches, then moved to the nearer side of any point mass; "
                   "converges where the paper's α-rule cycles.")
    defaults: dict[str, Any] = {"alpha": 0.5, "batches": 4, "batch_size": 64, "passes": 1, "seed": 0}
    selection_grid = ALPHA_GRID
    mode = "carry"


@register
class FTBCRoot(_FtbcBase):
    name = "ftbc-root"
    label = "FTBC averaged root (per-step target)"
    description = ("As ftbc, but every step aims at the ANN mean alone: what a step cannot match (a point mass) "
                   "is not made up later, and the running mean of the spikes can drift at T > 1.")
    defaults: dict[str, Any] = {"alpha": 0.5, "batches": 4, "batch_size": 64, "passes": 1, "seed": 0}
    selection_grid = ALPHA_GRID
    mode = "root"


@register
class FTBCAlpha(_FtbcBase):
    name = "ftbc-alpha"
    label = "FTBC (paper's α-rule)"
    description = ("The paper's update as published: b[t] += α·(E[s[t]] − E[a]) per batch, layers in forward "
                   "order, each step redone with its new bias. Cycles where a channel's input has a point mass.")
    # Chosen on held-out MNIST training images with the selection grid (α 0.1/0.2/0.5 x 2/4/8 batches).
    defaults: dict[str, Any] = {"alpha": 0.5, "batches": 4, "batch_size": 64, "passes": 1, "seed": 0}
    selection_grid = ALPHA_GRID


@register
class FTBCExact(_FtbcBase):
    name = "ftbc-exact"
    label = "FTBC exact (quantile root)"
    description = ("Per channel and step, the bias that makes the fraction of firing neurons equal E[a]/θ, "
                   "solved directly as a quantile of v[t−1] + z[t] − θ; averaged over batches.")
    defaults: dict[str, Any] = {"batches": 4, "batch_size": 64, "seed": 0}
    selection_grid = ({"batches": 1, "batch_size": 64}, {"batches": 4, "batch_size": 64})
    mode = "exact"


@register
class FTBCLayer(_FtbcBase):
    name = "ftbc-layer"
    label = "FTBC layer-wise"
    description = ("The paper's α-rule (as ftbc-alpha) with one bias per layer and step, shared by all "
                   "channels.")
    defaults: dict[str, Any] = {"alpha": 0.1, "batches": 8, "batch_size": 64, "passes": 1, "seed": 0}
    selection_grid = tuple({"alpha": a, "batches": 4, "batch_size": 64} for a in (0.1, 0.2, 0.5))
    layerwise = True
