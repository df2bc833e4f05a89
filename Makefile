PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install test lint format clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	# Tiny random-weight SAM and CLIP for the smoke benchmark (machinery only, not quality).
	$(BIN)/python -m tests.tiny_models build/smoke-models

test:
	$(BIN)/python -m ruff check salip benchmarks tests
	$(BIN)/python -m ruff format --check salip benchmarks tests
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/python -m ruff check salip benchmarks tests

format:
	$(BIN)/python -m ruff format salip benchmarks tests
	$(BIN)/python -m ruff check --fix salip benchmarks tests

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
