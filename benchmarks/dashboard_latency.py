"""Dashboard latency: process start to the first page, Run to the fully rendered accuracy page of the default
experiment, the lecture walk-through right after a run, and the time a page takes to re-render when a widget or
the page changes on finished runs (the compare page with three runs included).

    python benchmarks/dashboard_latency.py                   # the app's default model (resnet20-cifar10 once shipped)
    python benchmarks/dashboard_latency.py --model cnn-mnist
    python benchmarks/dashboard_latency.py --random-arch resnet20  # random weights, shown to the app as shipped

Browser (``streamlit run dashboard/app.py`` on a free port, headless, driven by Debian's Chromium through
selenium; the browser is opened before the server starts): times from the server process's start to the health
endpoint answering, to the accuracy page showing its form (page loaded), and, after pressing **Run** with the form's
defaults, to the accuracy page fully rendered with the run's results (accuracy chart drawn, table and metrics
shown, the script no longer running). Then, on the same session, the time from the committing key press or click
to the page fully re-rendered for: the membrane page's layer and time step, the bias page's layer, and the layers
page's error measure; and whether anything was recomputed meanwhile (the server counts its ``run_experiment``
calls; its CPU seconds per re-render are reported too). Then the lecture: the walk-through page opened right
after the run; the compare page set up with three runs (the preset "FTBC vs COS at equal latency", then the form
at T = 4, read from the T = 8 run) and its x axis switched; and a switch to every page, three rounds (medians).
The same first render, re-renders and page switches are also timed in-process through streamlit's AppTest (script
time only, no browser), in a fresh Python process. The form's first values come from the page address
(``?model=...&T=...``), as a lecturer's link would set them.
Targets (2 cores): first page <= 8 s from the process start, Run -> accuracy page <= 8 s, a widget change or page
switch on finished runs <= 0.5 s, the walk-through <= 1 s after a run.
"""

from __future__ import annotations

import argparse
import functools
import importlib.abc
import importlib.util
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

# Only the standard library at the top: the server and AppTest children run this file too, and must start as
# light as `streamlit run` does (benchmarks.common imports torch; it is imported where the parent needs it).

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "app.py"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
NAME = "dashboard_latency"
TARGETS = {"first_page_s": 8.0, "run_s": 8.0, "switch_s": 0.5, "walkthrough_s": 1.0}
# (nav link text, page title) of every page, in the order the page switches visit them
NAV = [("Layers needing correction", "Which layers need most correction"), ("Bias trajectories", "Bias trajectories"),
       ("Membrane potentials", "Membrane potentials"), ("One image", "One image"),
       ("Lecture walk-through", "Lecture walk-through"), ("Compare runs", "Compare runs"),
       ("Neuron lab", "Neuron lab"), ("Accuracy vs time step", "Accuracy vs time step")]
PAGE_PATHS = ["views/layers.py", "views/biases.py", "views/membrane.py", "views/one_image.py",
              "views/walkthrough.py", "views/compare.py", "views/neuron_lab.py", "views/accuracy.py"]
POLL_S = 0.1  # page polls (each a DOM query in the browser): 0.1 s resolution, little browser CPU

# While the script runs, a wait reads only this (three look-ups): the full status below queries the whole page,
# and polling it every 0.1 s cost the browser enough CPU on 2 cores to slow the experiment running beside it
# (one start at T = 16: 20.6 s, against 11.9-17.4 s with this; a user's browser does not poll the DOM).
RUNNING_JS = """
const app = document.querySelector('[data-testid="stApp"]');
return {state: app ? app.getAttribute('data-test-script-state') : null,
        progress: document.querySelector('[data-testid="stProgress"]') ? 1 : 0,
        titles: [...document.querySelectorAll('[data-testid="stPlotlyChart"] .gtitle')].map(e => e.textContent)};
"""

# Everything the waits look at, read in one round trip.
_NOT_READ = {"h1": [], "loading": 0, "charts": 0, "drawn": 0, "titles": [], "ytitles": [], "xtitles": [], "frames": 0,
             "metrics": 0,
             "run_button": False, "exception": [], "errors": [], "captions": []}
STATUS_JS = """
const all = (css) => [...document.querySelectorAll(css)];
const app = document.querySelector('[data-testid="stApp"]');
return {
  state: app ? app.getAttribute('data-test-script-state') : null,
  h1: all('h1').map(e => e.textContent.trim()),
  loading: all('[data-testid="stSkeleton"], [data-testid="stAppSkeleton"]').length,
  charts: all('[data-testid="stPlotlyChart"]').length,
  drawn: all('[data-testid="stPlotlyChart"]').filter(e => e.querySelector('.main-svg')).length,
  titles: all('[data-testid="stPlotlyChart"] .gtitle').map(e => e.textContent),
  ytitles: all('[data-testid="stPlotlyChart"] .g-ytitle').map(e => e.textContent),
  xtitles: all('[data-testid="stPlotlyChart"] .g-xtitle').map(e => e.textContent),
  frames: all('[data-testid="stDataFrame"]').length,
  metrics: all('[data-testid="stMetric"]').length,
  progress: all('[data-testid="stProgress"]').length,
  run_button: all('[data-testid="stSidebar"] button').some(b => b.textContent.trim().endsWith('Run')),
  exception: all('[data-testid="stException"]').map(e => e.textContent.slice(0, 500)),
  errors: all('[data-testid="stAlertContentError"]').map(e => e.textContent),
  captions: all('[data-testid="stCaptionContainer"]').map(e => e.textContent),
};
"""


# -- children: the server and the AppTest run ---------------------------------------------------------------
class _CountExperiments(importlib.abc.MetaPathFinder):
    """Wrap ``ftbc_core.experiment.run_experiment`` when the app first imports it (imports stay as lazy as in a
    plain ``streamlit run``): each call appends its duration in seconds to ``log``."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def find_spec(self, name, path, target=None):
        if name != "ftbc_core.experiment":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module) -> None:
            execute(module)
            module.run_experiment = self._counted(module.run_experiment)

        spec.loader.exec_module = exec_module
        return spec

    def _counted(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def counted(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with open(self.log, "a") as out:
                    out.write(f"{time.perf_counter() - start:.3f}\n")

        return counted


def _experiments(log: Path) -> list[float]:
    """Durations of the experiments a child computed so far."""
    return [float(x) for x in log.read_text().split()] if log.exists() else []


def _serve(port: int, log: Path) -> None:
    """Child: ``streamlit run dashboard/app.py`` in this process, with the experiment counter installed."""
    sys.meta_path.insert(0, _CountExperiments(log))
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(APP), "--server.port", str(port), "--server.headless", "true",
                "--browser.gatherUsageStats", "false"]
    sys.exit(cli.main(prog_name="streamlit"))


def _apptest(t0: float, log: Path, timeout: float, rerenders: int, query: dict[str, str]) -> dict[str, Any]:
    """Child: the first render, the re-renders and the page switches through AppTest; times from ``t0`` (the
    parent's ``time.monotonic()`` when it started this process; the clock is system-wide)."""
    sys.meta_path.insert(0, _CountExperiments(log))
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.query_params.update(query)
    at.run()
    page = time.monotonic() - t0
    if at.exception or not at.button(key="run_button"):
        raise RuntimeError(f"AppTest: the first page did not render: {at.exception}")
    start = time.monotonic()
    at.button(key="run_button").click().run()
    rendered = time.monotonic() - t0
    if at.exception or at.error or not at.dataframe or not at.get("plotly_chart"):
        raise RuntimeError(f"AppTest: no results after Run: {at.exception} {[e.value for e in at.error]}")
    result = at.session_state["run"].result
    out: dict[str, Any] = {
        "page_loaded_s": page, "rendered_s": rendered, "run_s": rendered - (start - t0),
        "experiments": _experiments(log),
        "run": {"model": result.model_name, "timesteps": result.timesteps, "n_images": result.n_images,
                "methods": list(result.methods), "method_options": result.method_options,
                "calibration_s": {m: r.seconds for m, r in result.reports.items()},
                "simulation_s": dict(result.seconds)},
        "rerender": {}}
    start = time.monotonic()
    at.switch_page("views/walkthrough.py").run()
    out["walkthrough_s"] = time.monotonic() - start

    def timed(page_path: str, key: str, kind: str) -> None:
        at.switch_page(page_path).run()
        widget = getattr(at, kind)(key=key)
        values = list(widget.options) if kind in ("selectbox", "radio") else [1, 2]
        runs, before = [], len(_experiments(log))
        for i in range(rerenders):
            start = time.monotonic()
            getattr(at, kind)(key=key).set_value(values[(i + 1) % 2]).run()
            runs.append(time.monotonic() - start)
            if at.exception:
                raise RuntimeError(f"AppTest: {page_path} {key}: {at.exception}")
        out["rerender"][f"{page_path} {key}"] = {"runs_s": runs, "median_s": statistics.median(runs),
                                                "experiments_computed": len(_experiments(log)) - before}

    timed("views/membrane.py", "membrane_layer", "selectbox")
    timed("views/membrane.py", "membrane_t", "slider")
    timed("views/biases.py", "bias_layer", "selectbox")
    at.switch_page("views/compare.py").run()  # three runs: the preset's two (one is the default run) + T = 4
    at.button(key="preset_ftbc-vs-cos").click().run()
    at.number_input(key="timesteps").set_value(4)
    at.button(key="run_button").click().run()
    out["compare_runs"] = len(at.multiselect(key="compare_runs").value)
    timed("views/compare.py", "compare_axis", "radio")
    switches: dict[str, list[float]] = {p: [] for p in PAGE_PATHS}
    for _ in range(3):
        for page in PAGE_PATHS:
            start = time.monotonic()
            at.switch_page(page).run()
            switches[page].append(time.monotonic() - start)
            if at.exception:
                raise RuntimeError(f"AppTest: {page}: {at.exception}")
    out["page_switch"] = {p: {"runs_s": r, "median_s": statistics.median(r)} for p, r in switches.items()}
    return out


# -- the browser --------------------------------------------------------------------------------------------
def free_port() -> int:
    """A free TCP port on 127.0.0.1 (also used by tests/test_browser.py)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log: Path, env: dict[str, str], server_log: Path, root: Path = ROOT) -> subprocess.Popen:
    """The server child (:func:`_serve`) of the checkout ``root`` (default: this one) on ``port``; it appends the
    duration of every experiment it computes to ``log``, its output to ``server_log``."""
    with open(server_log, "ab") as out:
        return subprocess.Popen([sys.executable, str(root / "benchmarks" / "dashboard_latency.py"), "--_serve",
                                 str(port), "--_log", str(log)], cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate a server process (killed if it has not exited after 20 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    """Wait for a `streamlit run` server's health endpoint; fail fast if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout:.0f} s")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live descendants (here: chromedriver and the Chromium processes)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        tree, grew = tree | more, bool(more)
    total = 0.0
    for p in tree:
        try:
            total += _cpu_seconds(p)
        except (OSError, ValueError, IndexError):
            continue
    return total


def chromium_driver(profile: Path):
    """Debian's headless Chromium through selenium, with a fresh profile and no background networking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,2000", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


def _wait(drv, done: Callable[[dict], bool], timeout: float, what: str,
          marks: dict[str, Callable[[dict], bool]] | None = None, seen: dict[str, float] | None = None) -> dict:
    """Poll the page status until ``done(status)``; an exception or error box on the page ends the benchmark.

    ``seen[name]`` gets the ``time.monotonic()`` at which each of ``marks`` first held. While the script is
    running, ``done`` and the marks see only ``state`` and ``progress`` (:data:`RUNNING_JS`).
    """
    deadline = time.monotonic() + timeout
    while True:
        status = drv.execute_script(RUNNING_JS)
        status = drv.execute_script(STATUS_JS) if status["state"] != "running" else {**_NOT_READ, **status}
        now = time.monotonic()
        if status["exception"] or status["errors"]:
            raise RuntimeError(f"{what}: the page shows {(status['exception'] + status['errors'])[0][:300]!r}")
        for name, mark in (marks or {}).items():
            if seen is not None and name not in seen and mark(status):
                seen[name] = now
        if done(status):
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout:.0f} s (last status {status})")
        time.sleep(POLL_S)


def _idle(status: dict) -> bool:
    """The script has finished, no element is still loading its code, and every chart on the page is drawn."""
    return (status["state"] == "notRunning" and not status["progress"] and not status["loading"]
            and status["drawn"] == status["charts"])


def _shows(status: dict, title: str) -> bool:
    return any(title in h for h in status["h1"])


def _widget(drv, testid: str, label: str):
    """The widget of this type whose label reads ``label``."""
    from selenium.webdriver.common.by import By

    for el in drv.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]'):
        labels = el.find_elements(By.CSS_SELECTOR, '[data-testid="stWidgetLabel"]')
        if labels and labels[0].text.strip() == label:
            return el
    raise LookupError(f"no {testid} labelled {label!r}")


def _click_text(drv, css: str, text: str, timeout: float) -> None:
    """Click the element matching ``css`` whose text ends with ``text`` (retrying while the page re-renders)."""
    from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            el = next((e for e in drv.find_elements(By.CSS_SELECTOR, css) if e.text.strip().endswith(text)), None)
            if el is not None:
                el.click()
                return
        except (StaleElementReferenceException, ElementClickInterceptedException):
            pass
        time.sleep(POLL_S)
    raise TimeoutError(f"nothing to click: {css} {text!r}")


def _title_part(pattern: str, group: str) -> Callable[[dict], str | None]:
    """Read one part of the first chart title matching ``pattern`` (the page's state as drawn)."""
    regex = re.compile(pattern)

    def read(status: dict) -> str | None:
        found = next((m for m in map(regex.match, status["titles"]) if m), None)
        return found.group(group) if found else None

    return read


def _select_step(label: str, forward: bool):
    """Open the selectbox ``label`` and return the click on the option after (before) the current one."""
    def prepare(drv):
        from selenium.webdriver.common.by import By

        box = _widget(drv, "stSelectbox", label)
        current = box.find_element(By.CSS_SELECTOR, 'input[role="combobox"]').get_attribute("value")
        box.find_element(By.CSS_SELECTOR, 'button[aria-haspopup="listbox"]').click()
        deadline = time.monotonic() + 10
        while not (options := drv.find_elements(By.CSS_SELECTOR, '[role="listbox"] [role="option"]')):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {label!r} list did not open")
            time.sleep(POLL_S)
        names = [o.text.strip() for o in options]
        i = names.index(current) + (1 if forward else -1)
        return options[i if 0 <= i < len(options) else len(options) - 1 - i % len(options)].click

    return prepare


def _slider_step(label: str, forward: bool):
    """Focus the slider ``label`` and return the arrow key press that moves it one step."""
    def prepare(drv):
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        field = _widget(drv, "stSlider", label).find_element(By.CSS_SELECTOR, 'input[type="range"]')
        drv.execute_script("arguments[0].focus()", field)
        key = Keys.ARROW_RIGHT if forward else Keys.ARROW_LEFT
        return lambda: ActionChains(drv).send_keys(key).perform()

    return prepare


def _radio_choice(label: str, options: list[str], index: int):
    def prepare(drv):
        from selenium.webdriver.common.by import By

        choices = _widget(drv, "stRadio", label).find_elements(By.CSS_SELECTOR, "label")
        target = next(c for c in choices if c.text.strip() == options[index % len(options)])
        return target.click

    return prepare


# (page link text, page title, what changes, how to read it from the drawn page, action(repeat) -> prepare)
SCENARIOS = [
    ("Membrane potentials", "Membrane potentials", "membrane: layer",
     _title_part(r"^(?P<v>.+): membrane potential before firing at t = \d+$", "v"),
     lambda i: _select_step("Layer", i % 2 == 0)),
    ("Membrane potentials", "Membrane potentials", "membrane: time step",
     _title_part(r"^.+: membrane potential before firing at t = (?P<v>\d+)$", "v"),
     lambda i: _slider_step("Time step t", i % 2 == 0)),
    ("Bias trajectories", "Bias trajectories", "biases: layer",
     _title_part(r"^(?P<v>.+): bias b\[t, c\]", "v"), lambda i: _select_step("Layer", i % 2 == 0)),
    ("Layers needing correction", "Which layers need most correction", "layers: error measure",
     lambda s: s["ytitles"][0] if s["ytitles"] else None,
     lambda i: _radio_choice("Error measure", ["relative", "absolute"], i)),
]
COMPARE = ("Compare runs", "Compare runs", "compare (3 runs): x axis",
           lambda s: s["xtitles"][0] if s["xtitles"] else None,
           lambda i: _radio_choice("x axis", ["time steps T", "latency ρ + T"], i))  # the preset chose latency


def wait_first_page(drv, timeout: float) -> dict:
    """Wait for the app's first page (Accuracy vs time step, with the Run button) to be drawn."""
    return _wait(drv, lambda s: _idle(s) and _shows(s, "Accuracy vs time step") and s["run_button"], timeout,
                 "first page")


def press_run(drv, timeout: float, seen: dict[str, float] | None = None) -> tuple[dict, float]:
    """Press Run and wait for the accuracy page to be drawn: ``(status, time.monotonic() at the click)``;
    ``seen`` gets when the progress bar showed and went and when the chart was drawn."""
    seen = {} if seen is None else seen
    _click_text(drv, '[data-testid="stSidebar"] button', "Run", timeout)
    clicked = time.monotonic()
    drawn = lambda s: any("accuracy vs time steps" in t for t in s["titles"])  # noqa: E731
    status = _wait(drv, lambda s: _idle(s) and s["frames"] >= 1 and s["metrics"] >= 2 and drawn(s), timeout,
                   "first run", {"progress_shown": lambda s: s["progress"] > 0,
                                 "progress_gone": lambda s: "progress_shown" in seen and not s["progress"],
                                 "chart_drawn": drawn}, seen)
    return status, clicked


def switch_to(drv, link: str, title: str, timeout: float) -> float:
    """Click a page's link in the sidebar; seconds until that page is fully rendered."""
    start = time.monotonic()
    _click_text(drv, '[data-testid="stSidebarNavLink"]', link, timeout)
    _wait(drv, lambda s: _idle(s) and _shows(s, title), timeout, f"page {title}")
    return time.monotonic() - start


def three_runs(drv, log: Path, args: argparse.Namespace) -> dict[str, Any]:
    """On the compare page: the preset "FTBC vs COS at equal latency" (its FTBC run is the default run, read from
    the cache; COS at T - ρ is computed), then the form at T = 4 (read from the T = 8 run): three runs."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    before = len(_experiments(log))
    switch_to(drv, "Compare runs", "Compare runs", args.timeout)
    start = time.monotonic()
    _click_text(drv, '[data-testid="stButton"] button', "FTBC vs COS at equal latency", args.timeout)
    time.sleep(0.5)
    _wait(drv, lambda s: _idle(s) and s["charts"] >= 2, args.timeout, "preset")
    preset = time.monotonic() - start
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + args.timeout
    while True:  # the page may re-render between finding the field and typing into it
        try:
            field = _widget(drv, "stNumberInput", "Time steps T").find_element(By.CSS_SELECTOR, "input")
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys("4")
            break
        except (StaleElementReferenceException, LookupError):
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL_S)
    start = time.monotonic()
    _click_text(drv, '[data-testid="stSidebar"] button', "Run", args.timeout)
    time.sleep(0.5)
    status = _wait(drv, lambda s: _idle(s) and s["charts"] >= 2, args.timeout, "T = 4 run")
    return {"preset_s": preset, "t4_run_s": time.monotonic() - start, "titles": status["titles"],
            "experiments_computed": len(_experiments(log)) - before}


def browser_start(env: dict[str, str], query: dict[str, str], work: Path, args: argparse.Namespace,
                  index: int) -> dict[str, Any]:
    """One fresh start: browser first, then the server; first render, the walk-through, and (on the first start)
    the re-renders, the compare page with three runs and every page switch."""
    log = work / f"experiments-{index}.txt"
    drv = chromium_driver(work / f"chromium-{index}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    proc = start_server(port, log, env, work / f"server-{index}.log")
    try:
        wait_healthy(url, proc, args.timeout)
        out: dict[str, Any] = {"server_ready_s": time.monotonic() - t0}
        drv.get(url + ("?" + urllib.parse.urlencode(query) if query else ""))
        wait_first_page(drv, args.timeout)
        out["page_loaded_s"] = time.monotonic() - t0
        cpu = {"server": _cpu_seconds(proc.pid), "browser": _tree_cpu_seconds(drv.service.process.pid)}
        seen: dict[str, float] = {}
        status, clicked = press_run(drv, args.timeout, seen)
        out["rendered_s"] = time.monotonic() - t0
        out["run_s"] = time.monotonic() - clicked
        out["run_clicked_s"] = clicked - t0
        out["run_marks_s"] = {name: at - clicked for name, at in seen.items()}  # after pressing Run
        out["run_cpu_s"] = {"server": _cpu_seconds(proc.pid) - cpu["server"],
                            "browser": _tree_cpu_seconds(drv.service.process.pid) - cpu["browser"]}
        out["experiments"] = _experiments(log)
        out["chart_title"] = next(t for t in status["titles"] if "accuracy vs time steps" in t)
        out["captions"] = status["captions"]
        out["server_cpu_s"] = _cpu_seconds(proc.pid)
        print(f"start {index + 1}: server ready {out['server_ready_s']:.1f} s, page {out['page_loaded_s']:.1f} s, "
              f"rendered {out['rendered_s']:.1f} s (run {out['run_s']:.1f} s: experiment "
              f"{sum(out['experiments']):.1f} s; CPU server {out['run_cpu_s']['server']:.1f} s, browser {out['run_cpu_s']['browser']:.1f} s)",
              file=sys.stderr, flush=True)
        out["walkthrough_s"] = switch_to(drv, "Lecture walk-through", "Lecture walk-through", args.timeout)
        print(f"  walk-through after the run: {out['walkthrough_s']:.2f} s", file=sys.stderr, flush=True)
        if index == 0:
            out["rerender"] = {name: rerenders(drv, proc.pid, log, scenario, args)
                               for name, scenario in ((s[2], s) for s in SCENARIOS)}
            out["compare_setup"] = three_runs(drv, log, args)
            out["rerender"][COMPARE[2]] = rerenders(drv, proc.pid, log, COMPARE, args)
            switches: dict[str, list[float]] = {title: [] for _, title in NAV}
            for _ in range(3):
                for link, title in NAV:
                    switches[title].append(switch_to(drv, link, title, args.timeout))
            out["page_switch"] = {t: {"runs_s": r, "median_s": statistics.median(r)} for t, r in switches.items()}
            print("  page switches (median): " + ", ".join(f"{t} {v['median_s']:.2f} s"
                                                           for t, v in out["page_switch"].items()),
                  file=sys.stderr, flush=True)
        return out
    finally:
        drv.quit()
        stop_server(proc)


def rerenders(drv, pid: int, log: Path, scenario: tuple, args: argparse.Namespace) -> dict[str, Any]:
    """Open the scenario's page, then time ``--rerenders`` changes of one widget (alternating back and forth)."""
    link, title, name, read, action = scenario
    start = time.monotonic()
    _click_text(drv, '[data-testid="stSidebarNavLink"]', link, args.timeout)
    status = _wait(drv, lambda s: _idle(s) and _shows(s, title) and read(s) is not None, args.timeout, name)
    switch = time.monotonic() - start
    runs, cpu, shown, before = [], [], [read(status)], len(_experiments(log))
    for i in range(args.rerenders):
        commit = action(i)(drv)
        old, cpu_before = read(status), _cpu_seconds(pid)
        start = time.monotonic()
        commit()
        status = _wait(drv, lambda s: _idle(s) and read(s) not in (None, old), args.timeout, name)
        runs.append(time.monotonic() - start)
        cpu.append(_cpu_seconds(pid) - cpu_before)
        shown.append(read(status))
    computed = len(_experiments(log)) - before
    print(f"{name}: median {statistics.median(runs):.3f} s over {len(runs)} ({', '.join(f'{r:.3f}' for r in runs)}); "
          f"experiments computed: {computed}", file=sys.stderr, flush=True)
    return {"page_switch_s": switch, "runs_s": runs, "median_s": statistics.median(runs), "server_cpu_s": cpu,
            "shown": shown, "experiments_computed": computed}


# -- the parent -----------------------------------------------------------------------------------------------
def address_fields(defaults: str | None) -> dict[str, str]:
    """``--defaults`` JSON (form keys, e.g. ``{"timesteps": 16}``) as the page address's fields (``T=16``)."""
    fields = {}
    for key, value in json.loads(defaults or "{}").items():
        name = "T" if key == "timesteps" else key
        fields[name] = ",".join(value) if isinstance(value, (list, tuple)) else str(value)
    return fields


def app_environment(args: argparse.Namespace, work: Path) -> tuple[dict[str, str], dict[str, str], str | None]:
    """Environment of the children, the page address's fields (the form's first values) and the model asked for
    (None: the app's own default).

    A checkpoint path or a random model is shown to the app as a shipped model: ``FTBC_PRETRAINED_DIR`` points at
    a temporary folder holding links to everything in ``pretrained/`` plus that checkpoint.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    query = address_fields(args.defaults)
    checkpoint = None
    if args.random_arch:
        checkpoint = save_random_model(args.random_arch, args.activation, args.seed, work)
    elif args.model and Path(args.model).is_file():
        checkpoint = Path(args.model).resolve()
    from ftbc_core.assets import PRETRAINED_DIR, list_pretrained

    if checkpoint is None:
        if args.model:
            if args.model not in list_pretrained():
                raise SystemExit(f"no shipped model {args.model!r} in {PRETRAINED_DIR} (nor a file of that name)")
            query["model"] = args.model
        return env, query, args.model

    shipped = work / "pretrained"
    shipped.mkdir()
    for item in PRETRAINED_DIR.iterdir():
        (shipped / item.name).symlink_to(item.resolve())
    name = checkpoint.name.removesuffix(".safetensors")
    (shipped / f"{name}.safetensors").symlink_to(checkpoint)
    env.update(FTBC_PRETRAINED_DIR=str(shipped))
    query["model"] = name
    return env, query, name


def save_random_model(arch: str, activation: str, seed: int, work: Path) -> Path:
    """A seeded random-weights model (benchmarks/common.py's, QCFS λ fitted) saved as a checkpoint in ``work``."""
    from common import ModelSpec, load_ann, load_calib

    from ftbc_core.checkpoint import ModelCard, save_checkpoint
    from ftbc_core.data import get_info

    spec = ModelSpec(random_arch=arch, activation=activation, seed=seed)
    calib, _ = load_calib(spec.dataset, None, 64, seed)
    info = get_info(spec.dataset)
    card = ModelCard(name=spec.label, arch=arch, activation=activation, levels=4, dataset=spec.dataset,
                     num_classes=info.num_classes, in_channels=info.image_shape[2], image_size=info.image_shape[0],
                     class_names=info.class_names, mean=info.mean, std=info.std, seed=seed,
                     notes="random weights (benchmarks/dashboard_latency.py --random-arch)")
    return save_checkpoint(load_ann(spec, calib), card, work / spec.label)


def apptest_run(env: dict[str, str], query: dict[str, str], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    log = work / "experiments-apptest.txt"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_apptest", str(t0), "--_log", str(log),
                           "--timeout", str(args.timeout), "--rerenders", str(args.rerenders),
                           "--_query", json.dumps(query)],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the AppTest run failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"AppTest: page {out['page_loaded_s']:.1f} s, rendered {out['rendered_s']:.1f} s "
          f"(run {out['run_s']:.1f} s)", file=sys.stderr, flush=True)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--model", default=None,
                       help="shipped model name or checkpoint path (default: the app's default model)")
    group.add_argument("--random-arch", choices=("resnet20", "vgg16", "cnn"), default=None,
                       help="random weights of this architecture, shown to the app as a shipped model")
    p.add_argument("--activation", choices=("qcfs", "relu"), default="qcfs", help="activation of --random-arch")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-arch weights")
    p.add_argument("--defaults", default=None,
                   help="JSON of the form's first values (sent as the page address's fields), e.g. for a tiny run")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL (torch) threads of the app (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="fresh starts in the browser (the median is reported)")
    p.add_argument("--rerenders", type=int, default=5, help="timed changes per re-render case (median reported)")
    p.add_argument("--no-browser", action="store_true", help="skip the browser (AppTest only)")
    p.add_argument("--no-apptest", action="store_true", help="skip the in-process AppTest timing")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for any one wait")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/dashboard_latency.json)")
    p.add_argument("--_serve", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--_apptest", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-png-check", action="store_true", help=argparse.SUPPRESS)  # no-op: nothing checked at start
    p.add_argument("--_log", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_query", default="{}", help=argparse.SUPPRESS)
    return p


def _ratio(value: float | None, target: float) -> str:
    return "n/a" if value is None else f"{value:.2f} s = {value / target:.2f}x the {target:g} s target"


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args._serve is not None:
        _serve(args._serve, Path(args._log))
    if args._apptest is not None:
        print(json.dumps(_apptest(args._apptest, Path(args._log), args.timeout, args.rerenders,
                                  json.loads(args._query))))
        return {}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import set_threads, write_result

    set_threads(args.threads)
    if not args.no_browser and not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise SystemExit("needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver); "
                         "or use --no-browser")
    figures: dict[str, Any] = {"targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="ftbc-latency-") as tmp:
        work = Path(tmp)
        env, query, model = app_environment(args, work)
        figures["model_asked"] = model or "the app's default"
        figures["address"] = query
        if not args.no_browser:
            starts = [browser_start(env, query, work, args, i) for i in range(args.repeats)]
            figures["browser"] = {
                "starts": starts,
                **{f"median_{k}": statistics.median(s[k] for s in starts)
                   for k in ("server_ready_s", "page_loaded_s", "rendered_s", "run_s", "walkthrough_s")},
                "rerender": starts[0]["rerender"], "page_switch": starts[0]["page_switch"],
                "compare_setup": starts[0]["compare_setup"]}
        if not args.no_apptest:
            figures["apptest"] = apptest_run(env, query, work, args)
    browser, apptest = figures.get("browser"), figures.get("apptest")
    print(f"\nDashboard latency ({args.threads} thread(s); load average at start/end in the JSON)")
    if browser:
        first = browser["starts"][0]
        print(f"model: {first['chart_title'].split(':')[0]}; {len(browser['starts'])} fresh start(s), medians:")
        print(f"  server ready {browser['median_server_ready_s']:.2f} s")
        print(f"  process start -> first page: {_ratio(browser['median_page_loaded_s'], TARGETS['first_page_s'])}")
        print(f"  Run -> accuracy page rendered: {_ratio(browser['median_run_s'], TARGETS['run_s'])}")
        walk = _ratio(browser["median_walkthrough_s"], TARGETS["walkthrough_s"])
        print(f"  walk-through right after the run: {walk}")
        for name, r in browser["rerender"].items():
            print(f"  widget change, {name}: {_ratio(r['median_s'], TARGETS['switch_s'])}; experiments recomputed: "
                  f"{r['experiments_computed']}; server CPU {statistics.median(r['server_cpu_s']):.2f} s")
        for title, r in browser["page_switch"].items():
            print(f"  page switch to {title}: {_ratio(r['median_s'], TARGETS['switch_s'])}")
    if apptest:
        print(f"AppTest (script time, no browser): process start -> first page {apptest['page_loaded_s']:.2f} s, "
              f"Run -> rendered {apptest['run_s']:.2f} s, walk-through {apptest['walkthrough_s']:.2f} s "
              f"(compare page with {apptest['compare_runs']} runs)")
        for name, r in apptest["rerender"].items():
            print(f"  widget change, {name}: {_ratio(r['median_s'], TARGETS['switch_s'])}; experiments recomputed: "
                  f"{r['experiments_computed']}")
        for page, r in apptest["page_switch"].items():
            print(f"  page switch to {page}: {_ratio(r['median_s'], TARGETS['switch_s'])}")
    worst = lambda d: max(r["median_s"] for r in d.values())  # noqa: E731
    figures["ratios"] = {
        "browser_first_page": browser["median_page_loaded_s"] / TARGETS["first_page_s"] if browser else None,
        "browser_run": browser["median_run_s"] / TARGETS["run_s"] if browser else None,
        "browser_walkthrough": browser["median_walkthrough_s"] / TARGETS["walkthrough_s"] if browser else None,
        "browser_switch_worst": max(worst(browser["rerender"]), worst(browser["page_switch"])) / TARGETS["switch_s"]
        if browser else None,
        "apptest_switch_worst": max(worst(apptest["rerender"]), worst(apptest["page_switch"])) / TARGETS["switch_s"]
        if apptest else None}
    figures["options"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    path = write_result(NAME, figures, args.out)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
