# Every command a person or CI runs. `make demo` and `make test` are the README's two commands.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export BENTOML_DO_NOT_TRACK := true

.PHONY: install demo test lint format bench clean

install: $(VENV)/.installed

# The CPU build of torch goes in first: a bare `torch` requirement would pull a multi-GB CUDA build.
# The C source is a prerequisite too: `pip install -e` compiles it, so an edit must reinstall.
$(VENV)/.installed: pyproject.toml features/_jsonscan.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(VENV)/bin/kairos demo

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) benchmarks/bench_simulate.py --customers 100000 --days 90
	$(PY) benchmarks/bench_ingest.py

clean:
	rm -rf .kairos .pytest_cache .ruff_cache .hypothesis
