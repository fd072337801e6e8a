#!/usr/bin/env bash
# The main job: ./run.sh [recipe args...]
# Sets up .venv first (scripts/setup_env.sh), then runs the main recipe. For now that is the
# small end-to-end CTC example on Kaldi's yesno corpus (egs/yesno/run.sh); it becomes the
# TIMIT recipe (egs/timit/run.sh) once that one meets its bar (all stages on the NLTK sample in
# under 20 minutes on 2 cores, with a tuned PER in docs/results.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/setup_env.sh
# passive OpenMP waiting: no spinning threads when other processes share the cores
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec bash egs/yesno/run.sh "$@"
