# `make demo`: set up .venv and run a real search on the embedded digits dataset.
# `make test`: set up .venv, run ruff and mypy (`make lint`), then the test suite (heavy tests excluded; `make test-slow` runs them).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo lint test test-slow ci clean

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

test: install lint
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: install
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
