# The two commands of the README:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/probe-udhr

.PHONY: setup demo test test-fast lint

# torch is installed first and pinned: an unpinned torch would pull gigabytes of CUDA packages.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Probe Gemma 3 270M (offline default) on UDHR in 8 languages.
demo: setup
	$(VENV)/bin/midalign probe --model default --data udhr --langs demo --out $(OUT) --overwrite

lint: setup
	$(VENV)/bin/ruff check midalign tests benchmarks
	$(VENV)/bin/ruff format --check midalign tests benchmarks

# Everything, including the slow tests on the default model and real data.
test: lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"
