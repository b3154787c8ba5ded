# `make demo`: set up .venv and run a real search on the embedded digits dataset.
# `make test`: set up .venv, run ruff and mypy (`make lint`), then the test suite (heavy tests excluded; `make test-slow` runs them).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo lint test test-slow mutation ci clean

install: $(VENV)/.installed

# One resolve for everything: the package, its dev extra and every plugin package under plugins/.
$(VENV)/.installed: pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS) -e ".[dev]" $(foreach p,$(wildcard plugins/*/),-e $(p))
	touch $@

demo: install
	$(BIN)/vae-automl search search_spaces/quick.yaml --n-trials 10 --out runs/demo

# ruff (lint, then the format check) and mypy on vae_automl/, configured in pyproject.toml
lint: install
	$(BIN)/ruff check vae_automl
	$(BIN)/ruff format --check vae_automl
	$(BIN)/mypy

# Tests run in a random order (pytest-randomly prints the seed; `--randomly-seed=N` replays an order,
# `-p no:randomly` keeps file order) and report coverage (pytest-cov). test-slow appends to test's coverage data.
test: install lint
	$(BIN)/python -m pytest -q -m "not slow" --cov --cov-report=term

test-slow: install
	$(BIN)/python -m pytest -q -m slow --cov --cov-append --cov-report=term

# Mutation testing of the modules that decide results (tools/mutation.py, [tool.mutmut] in pyproject.toml):
# writes mutation.json and prints the table. Long: run it niced on a shared machine.
mutation: install
	$(BIN)/python tools/mutation.py

clean:
	rm -rf $(VENV) runs mutants .coverage mutation.json
