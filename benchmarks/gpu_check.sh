#!/usr/bin/env bash
# The GPU check, one command on a CUDA machine: the CUDA tests of the Triton backends (compiled
# kernels, so TRITON_INTERPRET=0), then correctness against the references and the timing tables:
# benchmarks/gpu_check.py (SAWA) and benchmarks/bench_dfc.py --device cuda (DFC).
# Extra arguments go to gpu_check.py, e.g. `benchmarks/gpu_check.sh --dtype bf16`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
TRITON_INTERPRET=0 "$PY" -m pytest -q tests/mfdr_kernels/sawa/test_triton.py tests/mfdr_kernels/dfc/test_cuda.py -k cuda
TRITON_INTERPRET=0 "$PY" benchmarks/gpu_check.py "$@"
TRITON_INTERPRET=0 "$PY" benchmarks/bench_dfc.py --device cuda
