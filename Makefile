# `make app` sets everything up and starts the dashboard; `make test` sets everything up and runs every test.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .make/installed

.PHONY: install app test test-fast clean browser-deps bench-deps

$(STAMP): requirements.txt pyproject.toml
	$(PIP) install -r requirements.txt
	@mkdir -p .make && touch $(STAMP)

install: $(STAMP)

app: install browser-deps  # Chromium also renders the PNG/SVG downloads (kaleido), offline
	$(PYTHON) -m streamlit run dashboard/app.py

# Debian's headless Chromium + driver: tests/test_browser.py, and the dashboard's PNG/SVG downloads through kaleido
# (needs root; without it that test is skipped and the charts offer HTML downloads only).
browser-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		(apt-get update && apt-get install -y chromium chromium-driver) \
		|| echo "could not install chromium/chromium-driver (not root?): the browser test will be skipped, no PNG/SVG"; \
	fi
	$(PIP) install selenium

# The SpikingJelly agreement test runs in CI too (benchmarks/requirements.txt).
bench-deps:
	$(PIP) install -r benchmarks/requirements.txt

test: install browser-deps bench-deps
	CI=$${CI:-true} $(PYTHON) -m pytest -q tests

test-fast: install
	$(PYTHON) -m pytest -q -m "not slow" tests

clean:
	rm -rf .make .pytest_cache test-artifacts
