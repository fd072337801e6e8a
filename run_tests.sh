#!/usr/bin/env bash
# Run the test suite: ./run_tests.sh [pytest args...], e.g. ./run_tests.sh -k intersect -x
# Sets up .venv first (scripts/setup_env.sh). The exit code is pytest's, unchanged
# (5 = no tests collected is a failure, not a success).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/setup_env.sh
# passive OpenMP waiting: no spinning threads when other processes share the cores
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/python -m pytest -q "$@"
