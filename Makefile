# tidings — every target sets itself up: virtualenv, Python packages, system packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_STAMP := $(VENV)/.system-packages

.PHONY: demo test check lint typecheck unit integration faults bench setup clean

demo: setup
	$(BIN)/tidings demo

# Unit and integration tests spread over TEST_WORKERS processes (they mostly wait on
# brokers, mail servers and subprocesses), one test file per worker at a time; the
# fault suite, which kills and restarts processes on a clock, runs alone after them.
TEST_WORKERS ?= 3

test: setup check
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile tests/unit tests/integration
	$(BIN)/pytest -q tests/faults

check: lint typecheck

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q tests/unit

integration: setup
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile tests/integration

faults: setup
	$(BIN)/pytest -q tests/faults

bench: setup
	$(BIN)/python bench/e2e.py
	$(BIN)/python bench/imap_backfill.py
	$(BIN)/python bench/idle_poll.py
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/correlate.py
	$(BIN)/python bench/sink.py
	$(BIN)/python bench/exchange.py

setup: $(STAMP) $(SYSTEM_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(SYSTEM_STAMP): system-packages.txt scripts/system-deps.sh $(VENV)/bin/python
	scripts/system-deps.sh system-packages.txt
	touch $@

clean:
	rm -rf $(VENV) .tidings .mypy_cache .ruff_cache .pytest_cache
