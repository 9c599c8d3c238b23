#!/usr/bin/env bash
# SAWA on a CUDA machine, one command: the CUDA tests of the Triton backend (compiled kernels, so
# TRITON_INTERPRET=0), then benchmarks/gpu_check.py (correctness against the reference + the timing table).
# Extra arguments go to gpu_check.py, e.g. `benchmarks/gpu_check.sh --dtype bf16`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
TRITON_INTERPRET=0 "$PY" -m pytest -q tests/mfdr_kernels/sawa/test_triton.py -k cuda
TRITON_INTERPRET=0 "$PY" benchmarks/gpu_check.py "$@"
