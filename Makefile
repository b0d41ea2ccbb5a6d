# `make app` sets everything up and starts the dashboard; `make test` sets everything up and runs every test.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .make/installed

.PHONY: install app test test-fast clean

$(STAMP): requirements.txt pyproject.toml
	$(PIP) install -r requirements.txt
	@mkdir -p .make && touch $(STAMP)

install: $(STAMP)

app: install
	$(PYTHON) -m streamlit run dashboard/app.py

test: install
	$(PYTHON) -m pytest -q tests

test-fast: install
	$(PYTHON) -m pytest -q -m "not slow" tests

clean:
	rm -rf .make .pytest_cache test-artifacts
