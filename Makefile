# The commands the README names. Every target builds the virtual environment first if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint typecheck unit docs bench clean

setup: $(VENV)/.installed

# torch goes first, pinned to the CPU wheel: a plain `torch` requirement installed first would
# pull gigabytes of CUDA packages. Everything else then resolves against it.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all]" --group dev
	touch $@

demo: setup
	$(VENV)/bin/rerank-plugins demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy

unit: setup
	$(PY) -m pytest -q

docs: setup
	$(VENV)/bin/mkdocs build --strict --site-dir site

test: lint typecheck docs unit

bench: setup
	$(VENV)/bin/rerank-plugins bench

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache
