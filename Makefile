# Two commands on a fresh machine: `make demo` and `make test`.
# Each sets up its own virtual environment first (idempotent, stamp file).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEEPSPEED_SPEC ?= deepspeed==0.19.8
EXTRAS ?= dev,mpi
# `make test` runs on this many pytest-xdist workers, whole modules each (the CI box has 2 cores), in the
# order tests/conftest.py gives them (longest first; --no-loadscope-reorder, pytest-xdist >= 3.7).
TEST_WORKERS ?= 2

.PHONY: setup libaio demo test test-all lint clean

setup: $(VENV)/.stamp

# DeepSpeed ships only an sdist whose setup.py imports torch: it is built against the
# torch installed just before it (an isolated build would pull the newest CUDA torch).
# Its C++ ops are compiled once here, each with a line saying so: compiled on first use
# inside deepspeed.initialize they take minutes without a word (docs/parallelism.md).
$(VENV)/.stamp: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q setuptools wheel
	$(PY) -m pip install -q --no-build-isolation "$(DEEPSPEED_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@$(MAKE) --no-print-directory libaio
	$(PY) -m alphaexa.parallel.deepspeed_ops
	@touch $@

# NVMe offload needs DeepSpeed's async_io op, which compiles against libaio's headers.
libaio:
	@if echo '#include <libaio.h>' | $${CC:-cc} -E - >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "setup: installing libaio-dev (NVMe offload)"; \
	  apt-get install -y -q libaio-dev >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q libaio-dev >/dev/null; } \
	  || echo "setup: apt-get install libaio-dev failed; NVMe offload will be unavailable"; \
	else echo "setup: libaio-dev is missing, so NVMe offload will be unavailable: install it (sudo apt-get install libaio-dev) and run make setup again"; fi

demo: setup
	$(VENV)/bin/alphaexa demo

test: setup
	$(PY) -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

test-all: setup
	$(PY) -m pytest -q -ra -m "" tests

lint: setup
	$(VENV)/bin/ruff check alphaexa backends topology tests bench

clean:
	rm -rf $(VENV) runs build *.egg-info
