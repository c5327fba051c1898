# Two entry points: `make demo` (the whole job on the embedded default) and `make test` (the whole suite).
# Each creates the virtual environment it needs; torch 2.13.0 goes in first (its CPU wheel is on this machine's
# disk; any other torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/train demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The report tests render HTML in headless Chromium (Debian's package; CI runs as root): installed once, if missing.
test: lint
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python -m bench.shards.run
	$(BIN)/python -m bench.mixer.run
	$(BIN)/python -m bench.train.run
	$(BIN)/python -m bench.scale.run --sizes 10000000 100000000

clean:
	rm -rf runs demo-data demo-run .pytest_cache
