"""A session's runs: starting one (or reading it from the shared cache), the bounded list a session keeps with a
short label each, the one its pages show, and what the per-image pages need of it."""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass

import streamlit as st

from dashboard import bias_files, caches
from dashboard.method_options import resolved_options
from dashboard.models import ModelRef, model_for
from ftbc_core.per_image import ImagePredictions, rebuild_networks
from ftbc_core.checkpoint import CheckpointError
from ftbc_core.data import DataError
from ftbc_core.experiment import ExperimentConfig, ExperimentResult, run_experiment
from ftbc_core.snn import SpikingNetwork

RUNS_KEPT = 6  # runs a session keeps to compare (results only: a few MB each)
PREDICTED_IMAGES = 1000  # per-image predictions (disagreement lists) cover the first N evaluation images
RUN_HINT = "Choose an experiment in the sidebar and press **Run** (the defaults take a few seconds)."


@dataclass(frozen=True)
class Run:
    """A finished experiment as this session shows it.

    Attributes:
        key: cache key of the stored simulation (configuration + weights' hash; its T may exceed the shown one).
        config: the configuration asked for (T = the shown one).
        model: the model it ran on.
        result: the result shown (``stored.truncated(T)`` when read from a longer run).
        stored: the stored simulation's full result (the biases cover ``stored.timesteps`` steps).
        label: a short name for the compare page and the run picker.
        origin: ``computed``, ``cached`` (the same configuration, computed before) or ``truncated``.
        wall_seconds: what producing this view cost (the experiment, or reading it from the cache).
    """

    key: str
    config: ExperimentConfig
    model: ModelRef
    result: ExperimentResult
    stored: ExperimentResult
    label: str
    origin: str
    wall_seconds: float

    def timings(self) -> str:
        """This view's own timings in one sentence (a read view names the stored run the numbers come from)."""
        own = "; ".join(f"{m}: calibration {self.stored.reports[m].seconds:.1f} s, simulation "
                        f"{self.stored.seconds[m]:.1f} s" for m in self.stored.methods)
        if self.origin == "computed":
            return f"Computed in {self.wall_seconds:.1f} s ({own})."
        if self.origin == "truncated":
            return (f"This T = {self.result.timesteps} view was read from the stored T = {self.stored.timesteps} run "
                    f"in {self.wall_seconds:.2f} s, nothing recomputed (that run's own times, for "
                    f"T = {self.stored.timesteps}: {own}).")
        return f"Read from the cache in {self.wall_seconds:.2f} s, nothing recomputed (when computed: {own})."


def config_key(cfg: ExperimentConfig, digest: str, drop: tuple[str, ...] = ()) -> str:
    """The configuration and the weights' hash as canonical JSON (the result cache's key)."""
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in drop}
    return json.dumps({"config": data, "weights": digest}, sort_keys=True, default=list)


def run_label(cfg: ExperimentConfig, model: ModelRef, taken: set[str]) -> str:
    """``resnet20-cifar10 · T=8 · none+ftbc`` (with ρ for COS), made unique in ``taken`` by a number."""
    name = model.name if model.kind == "shipped" else f"upload {model.digest[:8]}"
    rhos = sorted({o["rho"] for o in resolved_options(cfg).values() if "rho" in o})
    extra = f" ρ={','.join(map(str, rhos))}" if rhos else ""
    extra += " · chosen on held-out" if cfg.select else ""
    label = f"{name} · T={cfg.timesteps} · {'+'.join(cfg.methods)}{extra}"
    n, unique = 2, label
    while unique in taken:
        unique, n = f"{label} ({n})", n + 1
    return unique


# -- the session's runs --------------------------------------------------------------------------------------------
def current_run() -> Run | None:
    return st.session_state.get("run")


def session_runs() -> list[Run]:
    return list(st.session_state.get("runs", []))


def show(run: Run) -> None:
    """Make ``run`` the one every page shows (and the run picker's choice on the next rerun)."""
    st.session_state["run"] = run
    st.session_state["pick_run"] = run.label


def _remember(run: Run) -> Run:
    """Add ``run`` to the session's runs (at most :data:`RUNS_KEPT`; the same view replaces its older copy)."""
    same = [r for r in session_runs() if r.key == run.key and r.result.timesteps == run.result.timesteps]
    if same:
        run = dataclasses.replace(run, label=same[0].label)
    others = [r for r in session_runs() if all(r is not x for x in same)]  # identity: results hold arrays
    st.session_state["runs"] = (others + [run])[-RUNS_KEPT:]
    show(run)
    return run


def require_run() -> Run:
    """The session's shown run, or a hint to start one (and stop this page)."""
    run = current_run()
    if run is None:
        st.info(RUN_HINT)
        st.stop()
    return run


def require_measured_run() -> tuple[Run, list[str]]:
    """The shown run and its methods with measurements (or a warning, and this page stops)."""
    run = require_run()
    measured = [m for m in run.result.methods if run.result.measurements.get(m) is not None]
    if not measured:
        st.warning("This run has no measurements.")
        st.stop()
    return run, measured


# -- starting a run --------------------------------------------------------------------------------------------------
def _find_stored(cfg: ExperimentConfig, model: ModelRef) -> tuple[str, ExperimentResult, str] | None:
    """A stored run of this configuration, or of the same one with a larger T: ``(key, stored, origin)``."""
    key = config_key(cfg, model.digest)
    hit = caches.cached_result(key)
    if hit is not None:
        return key, hit, "cached"
    base = config_key(cfg, model.digest, drop=("timesteps",))
    for other in st.session_state.get("history", []):
        data = json.loads(other)
        longer = data["config"].pop("timesteps")
        if cfg.select and min(longer, cfg.select_max_t) != min(cfg.timesteps, cfg.select_max_t):
            continue  # the options were chosen on the held-out accuracy over other steps
        if longer >= cfg.timesteps and json.dumps(data, sort_keys=True, default=list) == base:
            hit = caches.cached_result(other)
            if hit is not None and all(r.latency <= cfg.timesteps for r in hit.reports.values()):
                return other, hit, "truncated"  # (COS replays ρ counted frames: a T below ρ is computed, refused)
    return None


# At most 2 progress updates per second: each is a message the browser re-renders, on the cores the run needs
# (Chromium took 3.6 s of CPU during a 9.8 s default run at 4 updates per second, benchmarks/README.md).
PROGRESS_INTERVAL_S = 0.5


def throttled(bar, interval: float = PROGRESS_INTERVAL_S):
    """A progress callback that updates ``bar`` at most every ``interval`` seconds (and always at the end)."""
    last = [float("-inf")]

    def update(fraction: float, message: str) -> None:
        now = time.perf_counter()
        if now - last[0] >= interval or fraction >= 1.0:
            last[0] = now
            bar.progress(min(max(fraction, 0.0), 1.0), text=message)

    return update


def start_run(cfg: ExperimentConfig, model: ModelRef) -> Run | None:
    """Run (or read from the cache) an experiment, keep it in the session and show it; None after an error
    (shown as a one-line message)."""
    start = time.perf_counter()
    try:
        ann, card = model_for(model)
        found = _find_stored(cfg, model)
        if found is None:
            work = copy.deepcopy(ann)  # runs attach hooks: never on the shared cached model
            bar = st.progress(0.0, text="starting…")
            result = run_experiment(bias_files.with_bytes(cfg), model=work, card=card, progress=throttled(bar))
            result = bias_files.without_bytes(result, cfg)
            bar.empty()
            key = config_key(cfg, model.digest)
            caches.store_result(key, result)
            found = key, result, "computed"
            st.toast(f"Finished in {time.perf_counter() - start:.1f} s")
    except (CheckpointError, DataError, ValueError) as err:
        hint = " Choose 'data folder' and give the dataset's folder." if isinstance(err, DataError) and \
            cfg.data_dir is None else ""
        st.error((str(err).splitlines()[0] if str(err) else type(err).__name__) + hint)
        return None
    except Exception as err:  # anything else still ends as a message, not a traceback
        st.error(f"The experiment failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return None
    key, stored, origin = found
    shown = stored if stored.timesteps == cfg.timesteps else stored.truncated(cfg.timesteps)
    history = [k for k in st.session_state.get("history", []) if k != key]
    st.session_state["history"] = (history + [key])[-20:]
    label = run_label(cfg, model, {r.label for r in session_runs()})
    return _remember(Run(key, cfg, model, shown, stored, label, origin, time.perf_counter() - start))


# -- what the per-image pages need: the networks (rebuilt in the background) and the run's predictions -------------
def _networks_future(run: Run):
    ann, card = model_for(run.model)
    cfg, stored = run.config, run.stored
    return caches.network_store().get(run.key, stored.timesteps, lambda: rebuild_networks(cfg, ann, card, stored))


def prefetch(run: Run | None) -> None:
    """Start rebuilding the shown run's networks, quietly (at the end of every page)."""
    if run is not None:
        try:
            _networks_future(run)
        except Exception:  # noqa: BLE001 - a page that needs them shows the reason
            pass


def networks(run: Run) -> dict[str, SpikingNetwork]:
    with st.spinner("rebuilding the calibrated networks…"):
        return _networks_future(run).result()


def predictions(run: Run) -> ImagePredictions:
    """The prediction of every evaluation image (the first :data:`PREDICTED_IMAGES`) after every step of the
    shown T: those the run kept (``ExperimentResult.predicted``, from the simulation that gave its accuracy)."""
    stored, t = run.stored, run.result.timesteps
    if stored.labels is None or any(m not in stored.predicted for m in stored.methods):
        raise ValueError("this run kept no per-image predictions (a result from several processes): run it here")
    return ImagePredictions({m: stored.predicted[m][:t, :PREDICTED_IMAGES] for m in stored.methods},
                            stored.labels[:PREDICTED_IMAGES])
