#!/usr/bin/env bash
# TIMIT phone recognition: CTC BLSTM over 48 phones, decoded greedily and with a phone-bigram
# HLG (two backends), PER on the 39-phone set. Thin recipe: the work is in wfst_asr and
# egs/timit/local/*.py.
#
#   egs/timit/run.sh [--stage N] [--stop-stage M] [--timit-dir DIR] [--data-dir DIR]
#                    [--exp-dir DIR] [--loss ctc|hmm|mmi|transducer] [--config FILE|NAME]
#                    [--lm-scales 0.1,0.3,...] [--word-penalties -1,0,1] [--set k=v ...]
#                    [--gmm-dir DIR] [--gmm-args "ARGS"] [--nnlm-epochs N]
#                    [--lattice-args "ARGS"] [--rescore-args "ARGS"]
#
# --loss picks the criterion and, unless --config names another config file (e.g.
# egs/timit/conf/ctc_tdnn_lstm.yaml) or registered base, the recipe's config
# egs/timit/conf/<loss>_blstm.yaml (default ctc); EXP_DIR defaults to exp/<config file stem>.
# --set k=v (repeatable) goes to `wfst-asr train` (e.g.
# num_epochs=2, model.hidden=64). Stages (each skips work already done: a .done marker per stage):
#   0  manifests (local/prepare_timit.py)                      -> DATA_DIR/manifests
#   1  80-dim fbank + global CMVN (wfst-asr compute-features)  -> DATA_DIR/fbank
#   2  48-phone lang dir, train-only phone bigram G, CTC HLG (+ the graphs of --loss)
#                                                               -> DATA_DIR/lang_phone
#   3  train (wfst-asr train ... --resume: a rerun continues)   -> EXP_DIR (exp/ctc_blstm)
#      --loss hmm: first a monophone GMM-HMM (local/train_mono.py, its own marker and timing
#      row "stage 3 gmm"; --gmm-args "ARGS" go to it) -> GMM_DIR (default: exp/mono next to
#      EXP_DIR), whose alignments (GMM_DIR/cuts_{train,dev}.jsonl.gz) the hybrid trains on
#   4  decode dev/test: greedy, HLG (lm_scale x phone insertion penalty tuned on dev), kaldi;
#   5  score PER (39). Each stage's wall time and peak memory go to EXP_DIR/stage_times.tsv.
#   6-8 (--loss ctc only; local/rescore_timit.py): 6 dev/test lattices with the HLG
#      -> EXP_DIR/lats/{dev,test}; 7 phone 3-gram (wfst-asr estimate-lm) and LSTM LM
#      (wfst-asr train-nnlm, --nnlm-epochs N) on the training transcripts -> EXP_DIR/lm;
#      8 1-best of the lattices, 3-gram whole-lattice rescoring, LSTM-LM n-best rescoring
#      (scales / penalties tuned on dev, applied to test), lattice oracle -> EXP_DIR/rescore;
#      --lattice-args "ARGS" / --rescore-args "ARGS" go to stage 6 / 8 (e.g. "--output-beam 4")
# Data: --timit-dir, else the NLTK TIMIT sample in $NLTK_DATA/corpora/timit,
# ~/nltk_data/corpora/timit or ../shared/data/timit_nltk_sample. Markers of stages 0-2 live in
# DATA_DIR (default data/), of stages 3-8 in EXP_DIR; delete them (or the folders) to redo a stage.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

stage=0
stop_stage=8
timit_dir=
exp_dir=
loss=ctc
config=
data_dir=data
lm_scales=0.1,0.2,0.3,0.5,0.7,1.0
word_penalties=-2,-1,0,1
sets=()
nnlm_epochs=20
lattice_args=
rescore_args=
gmm_dir=
gmm_args=
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
        --nnlm-epochs) nnlm_epochs=${2:?--nnlm-epochs needs a value}; shift 2 ;;
        --lattice-args) lattice_args=${2?--lattice-args needs a value}; shift 2 ;;
        --rescore-args) rescore_args=${2?--rescore-args needs a value}; shift 2 ;;
        --gmm-dir) gmm_dir=${2:?--gmm-dir needs a value}; shift 2 ;;
        --gmm-args) gmm_args=${2?--gmm-args needs a value}; shift 2 ;;
        *) echo "error: unknown argument $1" >&2; sed -n 2,34p "${BASH_SOURCE[0]}" >&2; exit 1 ;;
    esac
done

case "$loss" in
    ctc|hmm|mmi|transducer) ;;
    *) echo "error: --loss must be ctc, hmm, mmi or transducer, got '$loss'" >&2; exit 1 ;;
esac
config=${config:-egs/timit/conf/${loss}_blstm.yaml}  # the recipe's settings (conf/*.yaml)
config_stem=$(basename "$config"); config_stem=${config_stem%.*}
exp_dir=${exp_dir:-exp/$config_stem}
gmm_dir=${gmm_dir:-$(dirname "$exp_dir")/mono}

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
    local split
    local -a cuts=()
    for split in train dev test; do cuts+=(--cuts "$manifest_dir/timit_cuts_$split.jsonl.gz"); done
    "${py[@]}" -m wfst_asr.bin.cli compute-features "${cuts[@]}" --out-dir "$fbank_dir" \
        --cmvn-from timit_cuts_train.jsonl.gz
}
stage2() {  # the lang dir and HLG; the graphs of the other criteria next to them, if needed
    "${py[@]}" egs/timit/local/make_graph.py --manifest-dir "$manifest_dir" --lang-dir "$lang_dir" \
        --loss "$loss" 2> >(grep -v -e '^\[I\]' -e 'kaldilm/csrc' >&2)
}
stage3_gmm() {  # --loss hmm: the monophone GMM whose alignments the hybrid trains on
    if [[ -f "$gmm_dir/.done" ]]; then
        echo "stage 3: GMM already done ($gmm_dir/.done exists), skipped"
        return 0
    fi
    local -a extra
    read -r -a extra <<< "$gmm_args"
    "$python" egs/utils/timed.py --label "stage 3 gmm" --log "$timing_log" -- "$python" \
        egs/timit/local/train_mono.py --manifest-dir "$manifest_dir" --fbank-dir "$fbank_dir" \
        --lang-dir "$lang_dir" --out-dir "$gmm_dir" ${extra[@]+"${extra[@]}"} \
        2> >(grep -v -e '^\[I\]' -e 'kaldilm/csrc' >&2)
    date > "$gmm_dir/.done"
}
stage3() {
    local -a cuts=(--set "train_cuts=$fbank_dir/timit_cuts_train.jsonl.gz"
                   --set "dev_cuts=$fbank_dir/timit_cuts_dev.jsonl.gz")
    if [[ "$loss" == hmm ]]; then
        stage3_gmm
        cuts=(--set "train_cuts=$gmm_dir/cuts_train.jsonl.gz"
              --set "dev_cuts=$gmm_dir/cuts_dev.jsonl.gz")
    fi
    "${py[@]}" -m wfst_asr.bin.cli train --config "$config" "${cuts[@]}" \
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
# stages 6-8: lattices and rescoring on top of the CTC model's bigram HLG (issue 6)
stage6() {
    local -a extra
    read -r -a extra <<< "$lattice_args"
    "${py[@]}" egs/timit/local/rescore_timit.py lattices --exp-dir "$exp_dir" \
        --lang-dir "$lang_dir" --dev-cuts "$fbank_dir/timit_cuts_dev.jsonl.gz" \
        --test-cuts "$fbank_dir/timit_cuts_test.jsonl.gz" ${extra[@]+"${extra[@]}"}
}
stage7() {
    "${py[@]}" egs/timit/local/rescore_timit.py lms --out-dir "$exp_dir/lm" \
        --train-cuts "$fbank_dir/timit_cuts_train.jsonl.gz" --lang-dir "$lang_dir" \
        --nnlm-epochs "$nnlm_epochs" 2> >(grep -v -e 'batch/s' -e 'batch\]' >&2)
}
stage8() {
    local -a extra
    read -r -a extra <<< "$rescore_args"
    "${py[@]}" egs/timit/local/rescore_timit.py rescore --exp-dir "$exp_dir" ${extra[@]+"${extra[@]}"} \
        --lang-dir "$lang_dir" --dev-cuts "$fbank_dir/timit_cuts_dev.jsonl.gz" \
        --test-cuts "$fbank_dir/timit_cuts_test.jsonl.gz" --lm3 "$exp_dir/lm/3gram.arpa" \
        --nnlm "$exp_dir/lm/nnlm/lm.pt" --lm-scales="$lm_scales" \
        --word-penalties="$word_penalties"
}

echo "TIMIT data: ${timit_dir:-(not needed)}; loss $loss ($config); exp dir: $exp_dir;" \
    "stages $stage..$stop_stage"
[[ "$loss" != hmm ]] || echo "GMM dir (alignments of the hybrid): $gmm_dir"
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
if (( stage <= 8 && 6 <= stop_stage )); then
    if [[ "$loss" == ctc ]]; then
        run_stage 6 "$exp_dir/.stage6.done" "dev/test lattices with the HLG -> $exp_dir/lats" stage6
        run_stage 7 "$exp_dir/.stage7.done" "phone 3-gram + LSTM LM on train -> $exp_dir/lm" \
            stage7
        run_stage 8 "$exp_dir/.stage8.done" \
            "3-gram lattice / LSTM-LM n-best rescoring, oracle -> $exp_dir/rescore" stage8
        echo "rescoring results: $exp_dir/rescore/results.txt"
        cat "$exp_dir/rescore/results.txt"
    else
        echo "stages 6-8 (lattice rescoring) are for --loss ctc only: skipped"
    fi
fi
