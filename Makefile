# raydf: `make demo` runs the whole job on an embedded default; `make test` runs the test suite.
# Both create .venv when it is missing and install the project with its dev extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.raydf-installed
PYTEST_ARGS ?=

.PHONY: venv test test-long test-quick chaos demo bench bench-full browser-deps clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Debian's Chromium for the browser tests (Playwright cannot download its own browser here).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian chromium for the browser tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation) >/dev/null; \
	  else echo "chromium missing and cannot be installed: browser tests will fail"; fi; }

test: $(STAMP) browser-deps
	$(BIN)/python -m pytest -m "not long" $(PYTEST_ARGS)

# Tests that need minutes of training each (marked `long`: accuracy bars, the MLflow compare page);
# make test runs their short versions.
test-long: $(STAMP)
	$(BIN)/python -m pytest -m long $(PYTEST_ARGS)

test-quick: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not long" $(PYTEST_ARGS)

# The extraction driver SIGKILLed at random points of random histories (tests/test_chaos.py):
# RAYDF_CHAOS_KILLS kills per backend (local and S3), RAYDF_CHAOS_SEED another history.
chaos: $(STAMP)
	RAYDF_CHAOS_KILLS=$${RAYDF_CHAOS_KILLS:-20} $(BIN)/python -m pytest tests/test_chaos.py -k random_kills -s $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/raydf demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks --quick

bench-full: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf demo build dist *.egg-info .pytest_cache
