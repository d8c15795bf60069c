# make install — .venv with everything CI uses (idempotent; re-runs only when a pin or build file changes)
# make test    — install if needed, then the whole test suite
# make demo    — install if needed, then train a plain MLP on the digits with MuLO (after mulo.mup.prepare) and
#                with AdamW at its best grid lr; prints and plots held-out and training loss
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mulo-installed
NATIVE := $(wildcard csrc/*.cpp csrc/*.cu csrc/*.h csrc/*.cuh csrc/*.py)

export TRITON_INTERPRET ?= 1

.PHONY: install test demo lint bench-quick clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml setup.py $(NATIVE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) -m mulo demo

lint: install
	$(VENV)/bin/ruff check mulo kernels tests bench
	$(VENV)/bin/ruff format --check mulo kernels tests bench

clean:
	rm -rf build *.egg-info demo_out .pytest_cache
