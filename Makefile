# Two commands do all the set-up on a fresh machine: `make demo` (the main job) and `make test`.
# They create .venv, install torch (torch==2.13.0 when none is installed; an existing one is kept),
# triton, the package with its dev extra, and build the C++ extension.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TRITON_VERSION ?= 3.7.1
TRITON_OLDEST ?= 3.6.0
OLD_TRITON := $(VENV)/triton-$(TRITON_OLDEST)
STAMP := $(VENV)/.mfdr-installed
BARE := $(VENV)/bare
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install espeak test test-triton-oldest demo bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned when absent: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml setup.py $(wildcard csrc/*.cpp)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	@$(BIN)/python -c "import triton" 2>/dev/null || $(BIN)/pip install -q "triton==$(TRITON_VERSION)"
	$(BIN)/pip install -q setuptools wheel ninja
	$(BIN)/pip install -q --no-build-isolation -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# The oldest supported triton, beside the venv's (PYTHONPATH puts it first for one pytest run).
$(OLD_TRITON)/.installed: $(BIN)/python
	$(BIN)/pip install -q --no-deps --target $(OLD_TRITON) "triton==$(TRITON_OLDEST)"
	@touch $@

# A Python in which the package is NOT installed, as on a lent GPU: a venv whose site-packages holds one
# .pth line naming .venv's site-packages (torch, triton, pytest import), whose own .pth files (the
# editable install's finder) are not processed, so `mfdr` imports only if a script puts the repository
# root on sys.path itself. Checked from / (the current directory would be on sys.path).
$(BARE)/bin/python: $(STAMP)
	$(BIN)/python -m venv --clear --without-pip $(BARE)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  "$$($(BARE)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/mfdr-deps.pth"
	@cd / && ! $(abspath $(BARE))/bin/python -c "import mfdr" 2>/dev/null || \
	  { echo "$(BARE): mfdr must not be importable"; rm -rf $(BARE); exit 1; }

# espeak-ng (Debian) synthesizes the demo corpus; installed when missing and possible.
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) || echo "could not install espeak-ng"; \
	  else echo "espeak-ng is missing: sudo apt-get install espeak-ng (tests that need it are skipped)"; fi; }

# The whole suite, then the benchmark suites in their quick mode (small sizes, one round) so they never rot.
test: install espeak $(BARE)/bin/python
	$(BIN)/ruff check mfdr mfdr_kernels tests benchmarks
	$(BIN)/python -m pytest tests -q -p no:cacheprovider --benchmark-disable
	MFDR_BENCH_QUICK=1 $(BIN)/python -m pytest benchmarks -q -p no:cacheprovider --benchmark-disable
	PYTHON=$(BARE)/bin/python benchmarks/gpu_check.sh --dry-run
	$(MAKE) --no-print-directory test-triton-oldest

# The Triton tests (interpreter, offline sm_90 compiles) again on the oldest triton the package supports.
test-triton-oldest: install $(OLD_TRITON)/.installed
	PYTHONPATH=$(OLD_TRITON) $(BIN)/python -m pytest tests/mfdr_kernels -q -p no:cacheprovider \
	  --benchmark-disable -k triton

demo: install espeak
	$(BIN)/python -m mfdr demo --out runs/demo

bench: install
	$(BIN)/python -m pytest benchmarks --benchmark-only -q
	$(BIN)/python benchmarks/report.py

lint: install
	$(BIN)/ruff check mfdr mfdr_kernels tests benchmarks

clean:
	rm -rf build *.egg-info mfdr_kernels/_C*.so .pytest_cache
