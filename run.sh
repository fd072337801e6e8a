#!/usr/bin/env bash
# The main job: ./run.sh [recipe args...]
# Sets up .venv first (scripts/setup_env.sh), then runs egs/timit/run.sh if it exists,
# else the small end-to-end CTC example on Kaldi's yesno corpus, egs/yesno/run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/setup_env.sh
# passive OpenMP waiting: no spinning threads when other processes share the cores
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [[ -f egs/timit/run.sh ]]; then
    exec bash egs/timit/run.sh "$@"
fi
exec bash egs/yesno/run.sh "$@"
