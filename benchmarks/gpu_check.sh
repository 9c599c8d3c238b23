#!/usr/bin/env bash
# The GPU check, one prepared command for a lent GPU (<= 8 minutes on one H200): SAWA, DFC and GCPU
# correctness and timings, the MFDR training step (eager, AMP, torch.compile, CUDA graphs) and the CUDA
# tests, each stage in its own process with its own time limit inside a global budget
# (benchmarks/gpu_check/driver.py says how). No install needed: the package is found from this checkout.
#
#   benchmarks/gpu_check.sh                 # on a CUDA machine; tables on stdout, logs on stderr
#   OUT=dir benchmarks/gpu_check.sh         # also dir/gpu_check.md, dir/summary.json, dir/logs/*.log
#   benchmarks/gpu_check.sh --dry-run       # CPU rehearsal: Triton interpreter, tiny shapes (make test)
#   benchmarks/gpu_check.sh --help          # stages, budget, options
#
# Python: $PYTHON if set, else .venv/bin/python if it exists, else python3.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MFDR_KERNELS_NO_JIT=1
exec "$PY" benchmarks/gpu_check/driver.py "$@"
