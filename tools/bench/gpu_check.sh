#!/usr/bin/env bash
# GPU check (issue 18): the device-parametrised tests on CUDA, then tools/bench/gpu_check.py
# (engine CTC vs torch ctc_loss, intersect_dense_pruned decoding, pruned RNN-T, training steps
# of timit.ctc_blstm: one markdown table). Under 8 minutes on a CUDA machine: each part runs
# under a timeout (GPU_CHECK_TEST_TIMEOUT, default 240 s; GPU_CHECK_BENCH_TIMEOUT, default
# 210 s).
#
#   tools/bench/gpu_check.sh                       # from anywhere; runs in the repo root
#   tools/bench/gpu_check.sh --quick               # small sizes (CI runs this CPU-only)
#   tools/bench/gpu_check.sh --out exp/gpu_check.md --rounds 9   # arguments of gpu_check.py
#
# Without a GPU it says "no GPU found", names the device tests without running them (their
# cpu cases run in the normal suite) and runs gpu_check.py on the CPU, whose table says so too.
# PYTHON: the interpreter (default .venv/bin/python). Exit status: non-zero when the tests or
# any row of the table failed (the table is written either way).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
test_timeout=${GPU_CHECK_TEST_TIMEOUT:-240}
bench_timeout=${GPU_CHECK_BENCH_TIMEOUT:-210}

# The device-parametrised tests: those taking the `device` fixture of tests/conftest.py (one
# case per entry of its `devices`: "cpu", plus "cuda" when available) or parametrised over it.
mapfile -t device_tests < <(grep -lE \
    'def test_[A-Za-z0-9_]*\([^)]*\bdevice\b|parametrize\("device"' tests/test_*.py || true)
if [ "${#device_tests[@]}" -eq 0 ]; then
    echo "gpu_check: no device-parametrised tests found under tests/" >&2
    exit 1
fi

has_gpu=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))')
status=0
if [ "$has_gpu" = 1 ]; then
    echo "== device tests on CUDA (-k cuda): ${device_tests[*]}"
    timeout "$test_timeout" "$PYTHON" -m pytest -q -x -k cuda "${device_tests[@]}" || {
        rc=$?
        echo "gpu_check: the device tests failed (exit $rc; 124: over ${test_timeout} s)" >&2
        status=1
    }
else
    echo "no GPU found: the cuda cases of the device-parametrised tests are not run" \
         "(${device_tests[*]}; their cpu cases run in the normal suite)"
fi

echo "== tools/bench/gpu_check.py $*"
timeout "$bench_timeout" "$PYTHON" tools/bench/gpu_check.py "$@" || {
    rc=$?
    echo "gpu_check: gpu_check.py failed (exit $rc; 124: over ${bench_timeout} s)" >&2
    status=1
}
echo "gpu_check: done in ${SECONDS} s"
exit "$status"
