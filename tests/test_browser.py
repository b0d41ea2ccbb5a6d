"""The dashboard in a real browser: `streamlit run` + Debian's headless Chromium driven by selenium.

Opens the app on the small MNIST model (the page address sets the form: ``?model=cnn-mnist``), runs the default
experiment, visits every page, walks the lecture walk-through to its last step, starts a preset comparison, fails
on any exception or error box, and saves a screenshot of each page under test-artifacts/screenshots/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from dashboard_latency import (CHROMEDRIVER, CHROMIUM, chromium_driver, free_port, stop_server,  # noqa: E402
                               wait_healthy)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SHOTS = ROOT / "test-artifacts" / "screenshots"
PAGES = ["Accuracy vs time step", "Layers needing correction", "Bias trajectories", "Membrane potentials",
         "One image", "Lecture walk-through", "Compare runs", "Neuron lab"]
TITLES = {"Layers needing correction": "Which layers need most correction"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        missing = pytest.fail if os.environ.get("CI", "").lower() in ("1", "true", "yes") else pytest.skip
        missing("needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): "
                "run `make browser-deps` (apt-get install -y chromium chromium-driver); under CI=true this fails")
    pytest.importorskip("selenium", reason="needs selenium (pip install selenium)")
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", os.environ.get("FTBC_TEST_THREADS", "2"))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, 90.0)
        yield url + "/?model=cnn-mnist"
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    drv = chromium_driver(tmp_path_factory.mktemp("chromium"))
    try:
        yield drv
    finally:
        drv.quit()


def _settle(drv, title: str, timeout: float = 300.0) -> None:
    """Wait until the page shows its title, the app is no longer running, and no exception box is shown."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(drv, timeout, poll_frequency=0.5, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(lambda d: any(title in h.text for h in d.find_elements(By.CSS_SELECTOR, "h1")))
    time.sleep(1.0)  # the status widget appears a moment after a rerun starts
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'))
    time.sleep(1.5)  # let plotly finish drawing
    errors = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stException"], [data-testid="stAlertContentError"]')
    assert not errors, f"exception or error on page {title!r}: {errors[0].text[:500]}"


def _click(drv, css: str, text: str, timeout: float = 60.0) -> None:
    """Click the element matching ``css`` whose text ends with ``text``, retrying while Streamlit re-renders."""
    from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def attempt(d) -> bool:
        try:
            el = next((e for e in d.find_elements(By.CSS_SELECTOR, css) if e.text.strip().endswith(text)), None)
            if el is None:
                return False
            el.click()
            return True
        except (StaleElementReferenceException, ElementClickInterceptedException):
            return False

    WebDriverWait(drv, timeout, poll_frequency=0.5).until(attempt)


def test_every_page_in_a_browser(server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.get(server)
    _settle(driver, "Accuracy vs time step")
    _click(driver, '[data-testid="stSidebar"] button', "Run")
    WebDriverWait(driver, 180, poll_frequency=0.5).until(  # the run's chart (before it, the page shows a preview)
        lambda d: any("accuracy vs time steps" in e.text
                      for e in d.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"] .gtitle')))
    for page in PAGES:
        if page != PAGES[0]:
            _click(driver, '[data-testid="stSidebarNavLink"]', page)
        _settle(driver, TITLES.get(page, page))
        charts = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"] .js-plotly-plot')
        assert charts, f"no chart drawn on page {page!r}"
        name = page.lower().replace(" ", "-")
        assert driver.save_screenshot(str(SHOTS / f"{PAGES.index(page) + 1}-{name}.png"))
        if page == "Lecture walk-through":  # to the last step: the image FTBC fixes
            for _ in range(5):
                _click(driver, '[data-testid="stButton"] button', "Next ▶")
                _settle(driver, page)
            assert "fixes" in driver.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text
            assert driver.save_screenshot(str(SHOTS / f"{PAGES.index(page) + 1}-{name}-last-step.png"))
        if page == "Compare runs":  # a preset: T = 4 (read from the T = 16 run) against T = 16
            _click(driver, '[data-testid="stButton"] button', "T = 4 vs T = 16")
            WebDriverWait(driver, 180, poll_frequency=0.5).until(
                lambda d: "T=16" in d.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text)
            _settle(driver, page)
            assert len(driver.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"] .js-plotly-plot')) == 2
            assert driver.save_screenshot(str(SHOTS / f"{PAGES.index(page) + 1}-{name}-preset.png"))
