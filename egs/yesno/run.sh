#!/usr/bin/env bash
# Kaldi's yesno corpus: a small end-to-end CTC example (train, decode, score) on real data.
# The work is done by examples/ctc_yesno.py; this script only checks the data and runs it.
#
#   egs/yesno/run.sh [--stage N] [--stop-stage N] [--data-dir DIR] [--exp-dir DIR] [ARGS...]
#
# Other ARGS (e.g. --epochs 20 --seed 1) go to examples/ctc_yesno.py. Stages:
#   0  check that DIR (default ../shared/data/yesno/waves_yesno) holds the wavs
#   1  train a tiny CTC model and decode the test set (greedy and graph search)
#   2  print EXP_DIR/results.txt (default exp/yesno)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

stage=0
stop_stage=2
data_dir=../shared/data/yesno/waves_yesno
exp_dir=exp/yesno
extra=()
while (( $# )); do
    case "$1" in
        --stage) stage=${2:?--stage needs a value}; shift 2 ;;
        --stop-stage) stop_stage=${2:?--stop-stage needs a value}; shift 2 ;;
        --data-dir) data_dir=${2:?--data-dir needs a value}; shift 2 ;;
        --exp-dir) exp_dir=${2:?--exp-dir needs a value}; shift 2 ;;
        *) extra+=("$1"); shift ;;
    esac
done

python=.venv/bin/python
[[ -x "$python" ]] || python=python3
# passive OpenMP waiting: no spinning threads when other processes share the cores
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

if (( stage <= 0 && 0 <= stop_stage )); then
    echo "stage 0: check data in $data_dir"
    shopt -s nullglob
    wavs=("$data_dir"/*.wav)
    num_wavs=${#wavs[@]}
    if (( num_wavs == 0 )); then
        echo "error: no *.wav files in $data_dir" >&2
        echo "Get waves_yesno.tar.gz from OpenSLR resource 1 (https://www.openslr.org/1/); it" >&2
        echo "unpacks to a waves_yesno/ folder: unpack it in ../shared/data/yesno (next to this" >&2
        echo "checkout), or pass --data-dir DIR." >&2
        exit 1
    fi
    echo "found $num_wavs wavs"
fi

if (( stage <= 1 && 1 <= stop_stage )); then
    echo "stage 1: train and decode (examples/ctc_yesno.py)"
    start=$SECONDS
    "$python" examples/ctc_yesno.py --data-dir "$data_dir" --exp-dir "$exp_dir" \
        ${extra[@]+"${extra[@]}"}
    echo "stage 1 took $(( SECONDS - start )) s"
fi

if (( stage <= 2 && 2 <= stop_stage )); then
    echo "stage 2: results ($exp_dir/results.txt)"
    cat "$exp_dir/results.txt"
fi
