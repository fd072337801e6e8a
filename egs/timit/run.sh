#!/usr/bin/env bash
# TIMIT phone recognition: CTC BLSTM over 48 phones, decoded greedily and with a phone-bigram
# HLG (two backends), PER on the 39-phone set. Thin recipe: the work is in wfst_asr and
# egs/timit/local/*.py.
#
#   egs/timit/run.sh [--stage N] [--stop-stage M] [--timit-dir DIR] [--data-dir DIR]
#                    [--exp-dir DIR] [--loss ctc|hmm|mmi|transducer] [--config NAME]
#                    [--lm-scales 0.1,0.3,...] [--word-penalties -1,0,1] [--set k=v ...]
#
# --loss picks the criterion and, unless --config names another registered experiment (e.g.
# timit.ctc_tdnn_lstm), the config timit.<loss>_blstm (default ctc); EXP_DIR defaults to
# exp/<config without "timit.">. --set k=v (repeatable) goes to `wfst-asr train` (e.g.
# num_epochs=2, model.hidden=64). Stages (each skips work already done: a .done marker per stage):
#   0  manifests (local/prepare_timit.py)                      -> DATA_DIR/manifests
#   1  80-dim fbank + global CMVN (local/compute_fbank.py)     -> DATA_DIR/fbank
#   2  48-phone lang dir, train-only phone bigram G, CTC HLG (+ the graphs of --loss)
#                                                               -> DATA_DIR/lang_phone
#   3  train (wfst-asr train ... --resume: a rerun continues)   -> EXP_DIR (exp/ctc_blstm)
#   4  decode dev/test: greedy, HLG (lm_scale x phone insertion penalty tuned on dev), kaldi;
#   5  score PER (39). Each stage's wall time and peak memory go to EXP_DIR/stage_times.tsv.
# Data: --timit-dir, else the NLTK TIMIT sample in $NLTK_DATA/corpora/timit,
# ~/nltk_data/corpora/timit or ../shared/data/timit_nltk_sample. Markers of stages 0-2 live in
# DATA_DIR (default data/), of stages 3-5 in EXP_DIR; delete them (or the folders) to redo a stage.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

stage=0
stop_stage=5
timit_dir=
exp_dir=
loss=ctc
config=
data_dir=data
lm_scales=0.1,0.2,0.3,0.5,0.7,1.0
word_penalties=-2,-1,0,1
sets=()
while (( $# )); do
    case "$1" in
        --stage) stage=${2:?--stage needs a value}; shift 2 ;;
        --stop-stage) stop_stage=${2:?--stop-stage needs a value}; shift 2 ;;
        --timit-dir) timit_dir=${2:?--timit-dir needs a value}; shift 2 ;;
        --exp-dir) exp_dir=${2:?--exp-dir needs a value}; shift 2 ;;
        --loss) loss=${2:?--loss needs a value}; shift 2 ;;
        --config) config=${2:?--config needs a value}; shift 2 ;;
        --data-dir) data_dir=${2:?--data-dir needs a value}; shift 2 ;;
        --lm-scales) lm_scales=${2:?--lm-scales needs a value}; shift 2 ;;
        --word-penalties) word_penalties=${2:?--word-penalties needs a value}; shift 2 ;;
        --set) sets+=(--set "${2:?--set needs k=v}"); shift 2 ;;
        *) echo "error: unknown argument $1" >&2; sed -n 2,24p "${BASH_SOURCE[0]}" >&2; exit 1 ;;
    esac
done

case "$loss" in
    ctc|hmm|mmi|transducer) ;;
    *) echo "error: --loss must be ctc, hmm, mmi or transducer, got '$loss'" >&2; exit 1 ;;
esac
config=${config:-timit.${loss}_blstm}  # the registered experiment (wfst_asr/train/config.py)
exp_dir=${exp_dir:-exp/${config#timit.}}

python=.venv/bin/python
[[ -x "$python" ]] || python=python3
# passive OpenMP waiting: no spinning threads when other processes share the cores
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

manifest_dir=$data_dir/manifests
fbank_dir=$data_dir/fbank
lang_dir=$data_dir/lang_phone

if [[ -z "$timit_dir" ]]; then
    for d in ${NLTK_DATA:+"$NLTK_DATA/corpora/timit"} "$HOME/nltk_data/corpora/timit" \
             ../shared/data/timit_nltk_sample; do
        if [[ -d "$d" ]]; then timit_dir=$d; break; fi
    done
fi
if (( stage <= 2 )) && [[ -z "$timit_dir" || ! -d "$timit_dir" ]]; then
    echo "error: no TIMIT data${timit_dir:+ at $timit_dir}." >&2
    echo "Get the NLTK TIMIT sample with \`python -m nltk.downloader timit\` (it goes to" >&2
    echo "~/nltk_data/corpora/timit), or pass --timit-dir DIR pointing at a full LDC TIMIT" >&2
    echo "(the folder with TRAIN/ and TEST/)." >&2
    exit 1
fi

timing_log=$exp_dir/stage_times.tsv
py=("$python")  # the stages' python; run_stage wraps it to time the stage and its peak memory
run_stage() {  # run_stage N MARKER DESCRIPTION CMD...: run CMD unless MARKER exists; time it
    local n=$1 marker=$2 what=$3
    shift 3
    py=("$python" egs/utils/timed.py --label "stage $n" --log "$timing_log" -- "$python")
    (( stage <= n && n <= stop_stage )) || return 0
    echo "stage $n: $what"
    if [[ -f "$marker" ]]; then
        echo "stage $n: already done ($marker exists), skipped"
        return 0
    fi
    local start=$SECONDS
    "$@"
    mkdir -p "$(dirname "$marker")"
    date > "$marker"
    echo "stage $n took $(( SECONDS - start )) s (times and peak memory: $timing_log)"
}

stage0() {
    "${py[@]}" egs/timit/local/prepare_timit.py --timit-dir "$timit_dir" --out-dir "$manifest_dir" \
        --no-progress
}
stage1() {
    "${py[@]}" egs/timit/local/compute_fbank.py --manifest-dir "$manifest_dir" --out-dir "$fbank_dir"
}
stage2() {  # the lang dir and HLG; the graphs of the other criteria next to them, if needed
    "${py[@]}" egs/timit/local/make_graph.py --manifest-dir "$manifest_dir" --lang-dir "$lang_dir" \
        --loss "$loss" 2> >(grep -v -e '^\[I\]' -e 'kaldilm/csrc' >&2)
}
stage3() {
    "${py[@]}" -m wfst_asr.bin.cli train --config "$config" \
        --set "train_cuts=$fbank_dir/timit_cuts_train.jsonl.gz" \
        --set "dev_cuts=$fbank_dir/timit_cuts_dev.jsonl.gz" \
        --set "cmvn=$fbank_dir/cmvn.pt" --set "tokens=$lang_dir/tokens.txt" \
        --set "lang_dir=$lang_dir" \
        ${sets[@]+"${sets[@]}"} --exp-dir "$exp_dir" --resume
}
stage45() {  # decode_timit.py (ctc), decode_hmm.py (hmm, mmi), decode_transducer.py (transducer)
    local script=decode_timit.py
    case "$loss" in hmm|mmi) script=decode_hmm.py ;; transducer) script=decode_transducer.py ;; esac
    "${py[@]}" "egs/timit/local/$script" --loss "$loss" --exp-dir "$exp_dir" --lang-dir "$lang_dir" \
        --dev-cuts "$fbank_dir/timit_cuts_dev.jsonl.gz" \
        --test-cuts "$fbank_dir/timit_cuts_test.jsonl.gz" --lm-scales="$lm_scales" \
        --word-penalties="$word_penalties"
}

echo "TIMIT data: ${timit_dir:-(not needed)}; loss $loss ($config); exp dir: $exp_dir;" \
    "stages $stage..$stop_stage"
run_stage 0 "$data_dir/.timit_stage0.done" "prepare manifests from $timit_dir -> $manifest_dir" stage0
run_stage 1 "$data_dir/.timit_stage1.done" "fbank features + CMVN -> $fbank_dir" stage1
run_stage 2 "$data_dir/.timit_stage2.$loss.done" "phone lang dir + graphs ($loss) -> $lang_dir" \
    stage2
run_stage 3 "$exp_dir/.stage3.done" "train $config -> $exp_dir" stage3
if (( stage <= 5 && 4 <= stop_stage )); then
    run_stage 4 "$exp_dir/.stage45.done" "decode dev/test and score PER (stages 4+5)" stage45
    echo "results: $exp_dir/results.txt"
    cat "$exp_dir/results.txt"
fi
