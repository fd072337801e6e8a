#!/usr/bin/env bash
# The main job: ./run.sh [recipe args...]
# Sets up .venv first (scripts/setup_env.sh), then runs the TIMIT recipe (egs/timit/run.sh),
# which works in egs/timit (data/ and exp/ there, as Kaldi and icefall recipes do): manifests,
# fbank, phone lang dir + HLG, CTC BLSTM training, decoding (greedy, HLG on the engine, HLG on
# Kaldi's decoder), PER, lattice rescoring. With no --timit-dir it uses the NLTK TIMIT sample
# ($NLTK_DATA, ~/nltk_data or ../shared/data); about 10 minutes on 2 CPU cores
# (docs/results.md). Arguments pass through (relative paths are relative to egs/timit):
#   ./run.sh --stage 4 --set num_epochs=10 --exp-dir exp/try
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/setup_env.sh
# passive OpenMP waiting: no spinning threads when other processes share the cores
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec bash egs/timit/run.sh "$@"
