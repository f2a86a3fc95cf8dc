# The two commands of the README:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo

.PHONY: setup demo test test-fast lint

# torch is installed first and pinned: an unpinned torch would pull gigabytes of CUDA packages.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# The method end to end on the offline default (recipes/demo.yaml): Gemma 3 270M, UDHR
# translation with and without middle-layer alignment, retrieval before and after. A second
# `make demo` reuses the finished steps.
demo: setup
	$(VENV)/bin/midalign run recipes/demo.yaml --out $(OUT)

lint: setup
	$(VENV)/bin/ruff check midalign tests benchmarks
	$(VENV)/bin/ruff format --check midalign tests benchmarks

# Everything, including the slow tests on the default model and real data.
test: lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"
