# The commands the README names. Every target builds the virtual environment first if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The oldest supported line of the model libraries (constraints/oldest.txt), in its own venv.
OLDEST ?= .venv-oldest
OLDEST_PY := $(OLDEST)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# What `make test-oldest` runs on the oldest line: everything that touches transformers or
# sentence-transformers internals (scores, backends, the speed-ups) and both adapters.
OLDEST_TESTS := tests/test_engine_fidelity.py tests/test_first_token.py tests/test_onnx.py \
	tests/test_long_documents.py tests/test_adapters_shared.py tests/test_langchain.py \
	tests/test_llama_index.py tests/test_hostile_input.py tests/test_fallback.py \
	tests/test_decoders.py

.PHONY: setup setup-oldest demo test test-fast test-oldest lint typecheck unit docs package bench clean

setup: $(VENV)/.installed

# torch goes first, pinned to the CPU wheel: a plain `torch` requirement installed first would
# pull gigabytes of CUDA packages. Everything else then resolves against it, to the newest
# releases the extras admit (the current line: transformers 5, sentence-transformers 6).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all]" --group dev
	touch $@

setup-oldest: $(OLDEST)/.installed

$(OLDEST)/.installed: pyproject.toml constraints/oldest.txt
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST_PY) -m pip install -q --upgrade pip
	$(OLDEST_PY) -m pip install -q torch==2.13.0
	$(OLDEST_PY) -m pip install -q -e ".[sentence-transformers,flag,onnx,langchain,llama-index,demo]" \
		--group test-core -c constraints/oldest.txt
	touch $@

demo: setup
	$(VENV)/bin/rerank-plugins demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools

typecheck: setup
	$(VENV)/bin/mypy

# The whole suite and every docstring example that can run (CI runs this).
unit: setup
	$(PY) -m pytest -q --doctest-modules src tests

# The contributor's lane, under a minute: fakes and the tiny models, in this process only.
test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

docs: setup
	$(VENV)/bin/mkdocs build --strict --site-dir site

test: lint typecheck docs unit

test-oldest: setup-oldest
	$(OLDEST_PY) -c "import transformers, sentence_transformers as st; \
		print('oldest line: transformers', transformers.__version__, '/ sentence-transformers', st.__version__)"
	$(OLDEST_PY) -m pytest -q $(OLDEST_TESTS)

# A wheel and an sdist that twine accepts; the wheel, installed alone into a fresh venv,
# imports without torch and runs its --help; and installing it with extras into the current
# line's venv would change neither transformers nor sentence-transformers.
package: setup
	rm -rf dist build/package-check
	$(PY) -m build --outdir dist . > /dev/null
	$(VENV)/bin/twine check --strict dist/*
	$(PYTHON) -m venv build/package-check
	build/package-check/bin/python -m pip install -q dist/*.whl
	build/package-check/bin/python tools/check_package.py --bare
	build/package-check/bin/rerank-plugins --help > /dev/null
	$(PY) tools/check_package.py --keeps-stack dist/*.whl

# The benchmark harness is a tool of this repository (benchmarks/), not part of the package.
bench: setup
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(OLDEST) site dist build .pytest_cache .mypy_cache .ruff_cache
