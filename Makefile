# The README's commands. Each one creates or refreshes the virtual environment first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test check bench browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: set up, then run the main job on the embedded default configuration
run: $(STAMP)
	$(BIN)/aggregator run

## test: set up (including headless Chromium for browser tests), then run the tests
test: $(STAMP) browser
	$(BIN)/pytest

## check: lint, format check, types and the layers contract
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## bench: the benchmarks (see benchmarks/README.md)
bench: $(STAMP)
	$(BIN)/python -m benchmarks

browser:
	@command -v chromium >/dev/null 2>&1 && command -v sqlite3 >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium and sqlite3 for the browser and concurrency tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium sqlite3 >/dev/null; }

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
