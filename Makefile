# zss-bench: the README's commands. Every target sets up first (idempotent, fast when done).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.zss-bench-setup
PYTEST_ARGS ?=
SUDO   ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup test test-all demo bench browser readme-tables clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py scripts/setup_env.sh scripts/install_detectron2.sh scripts/constraints.txt
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup_env.sh
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/zss-bench demo

bench: setup
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=min,mean,median,stddev,rounds -p no:randomly $(PYTEST_ARGS)

# the README's reported-results tables, rendered from results/reported/ (never edited by hand)
readme-tables: setup
	$(PY) scripts/readme_reported.py

# headless Chromium for tests/test_report_browser.py (renders the HTML report; skipped without it)
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }
	@chromium --version

clean:
	rm -rf $(VENV) build .pytest_cache .benchmarks
