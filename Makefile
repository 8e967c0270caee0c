# Two commands on a fresh machine: `make demo` and `make test`.
# Each sets up its own virtual environment first (idempotent, stamp file).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEEPSPEED_SPEC ?= deepspeed==0.19.8
EXTRAS ?= dev,mpi

.PHONY: setup demo test test-all lint clean

setup: $(VENV)/.stamp

# DeepSpeed ships only an sdist whose setup.py imports torch: it is built against the
# torch installed just before it (an isolated build would pull the newest CUDA torch).
$(VENV)/.stamp: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q setuptools wheel
	$(PY) -m pip install -q --no-build-isolation "$(DEEPSPEED_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

demo: setup
	$(VENV)/bin/alphaexa demo

test: setup
	$(PY) -m pytest -q -ra --durations=15 tests

test-all: setup
	$(PY) -m pytest -q -ra -m "" tests

lint: setup
	$(VENV)/bin/ruff check alphaexa backends topology tests bench

clean:
	rm -rf $(VENV) runs build *.egg-info
