#!/usr/bin/env bash
# Kaldi's yesno corpus with the whole pipeline: the smallest wfst_asr recipe, and the template
# for a new corpus (docs/new_corpus.md). Everything but stage 0 (local/prepare_$corpus.py) is
# the `wfst-asr` CLI; the settings are conf/ctc_tdnn.yaml. Runs in its own folder (data/ and
# exp/ next to this script, as Kaldi and icefall recipes do).
#
#   egs/yesno/run.sh [--stage N] [--stop-stage M] [--corpus-dir DIR] [--config FILE]
#                    [--data-dir DIR] [--exp-dir DIR] [--lm-scales 0.5,1] [--word-penalties 0,1]
#                    [--num-mel-bins 23] [--lm-order 2] [--set k=v ...]
#
# A new corpus: copy this folder, set `corpus` below, write local/prepare_<corpus>.py (the
# manifests <corpus>_cuts_{train,dev,test}.jsonl.gz and text_train) and edit conf/.
#
# Stages (a marker per stage: a plain rerun skips what is done; an explicit --stage N reruns
# stages N..stop-stage whatever their markers say):
#   0  lhotse manifests, train / dev / test (local/prepare_yesno.py) -> DATA_DIR/manifests
#   1  23-dim fbank + global CMVN (wfst-asr compute-features)        -> DATA_DIR/fbank
#   2  CMUdict lexicon (wfst-asr lexicon), lang dir (compile-lang), a word bigram on the
#      training text (estimate-lm, compile-lm), the CTC HLG (compile-graph) -> DATA_DIR/lang
#   3  train the CTC model on the word transcripts through the lexicon (wfst-asr train)
#                                                                    -> EXP_DIR
#   4  decode dev and test: greedy, HLG (lm_scale x word penalty tuned on dev), Kaldi's
#      decoder (wfst-asr decode)                                     -> EXP_DIR/decode
#   5  score: WER per method and set (wfst-asr score)                -> EXP_DIR/decode/results.txt
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=${WFST_ASR_ROOT:-$(cd ../.. && pwd)}  # the checkout (its local/ and .venv)

corpus=yesno
stage=0
stop_stage=5
corpus_dir=$root/../shared/data/yesno/waves_yesno
config=conf/ctc_tdnn.yaml
data_dir=data
exp_dir=exp/ctc_tdnn
lm_scales=0.5,1.0
word_penalties=0,1
num_mel_bins=23
lm_order=2
set=()
. "$root/local/parse_options.sh"

python=$root/.venv/bin/python
[[ -x "$python" ]] || python=python3
wfst_asr=("$python" -m wfst_asr.bin.cli --quiet)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
timing_log=$exp_dir/stage_times.tsv
. "$root/local/stages.sh"
mkdir -p "$exp_dir"

manifests=$data_dir/manifests fbank=$data_dir/fbank lang=$data_dir/lang

stage0() {
    timed "$python" "local/prepare_$corpus.py" --corpus-dir "$corpus_dir" --out-dir "$manifests"
}
stage1() {
    timed "${wfst_asr[@]}" compute-features --out-dir "$fbank" --kind fbank \
        --num-mel-bins "$num_mel_bins" --cuts "$manifests/${corpus}_cuts_train.jsonl.gz" \
        --cuts "$manifests/${corpus}_cuts_dev.jsonl.gz" \
        --cuts "$manifests/${corpus}_cuts_test.jsonl.gz" \
        --cmvn-from "${corpus}_cuts_train.jsonl.gz"
}
stage2() {
    mkdir -p "$data_dir/local"
    timed "${wfst_asr[@]}" lexicon --text "$manifests/text_train" --utt-ids \
        --out "$data_dir/local/lexicon.txt"
    "${wfst_asr[@]}" compile-lang --lang-dir "$lang" --lexicon "$data_dir/local/lexicon.txt"
    "${wfst_asr[@]}" estimate-lm --text "$manifests/text_train" --skip-first-field \
        --order "$lm_order" \
        --out "$lang/lm.arpa"
    "${wfst_asr[@]}" compile-lm --arpa "$lang/lm.arpa" --words "$lang/words.txt" \
        --out "$lang/G.fst"
    "${wfst_asr[@]}" compile-graph --lang-dir "$lang" --kind HLG
}
stage3() {  # the config's data paths point at data/; --data-dir moves them
    local -a sets=(--set "train_cuts=$fbank/${corpus}_cuts_train.jsonl.gz"
                   --set "dev_cuts=$fbank/${corpus}_cuts_dev.jsonl.gz" --set "cmvn=$fbank/cmvn.pt"
                   --set "lang_dir=$lang" --set "tokens=$lang/tokens.txt") s
    for s in ${set[@]+"${set[@]}"}; do sets+=(--set "$s"); done
    timed "${wfst_asr[@]}" train --config "$config" --exp-dir "$exp_dir" --resume "${sets[@]}"
}
stage4() {
    timed "${wfst_asr[@]}" decode --exp-dir "$exp_dir" --lang-dir "$lang" \
        --dev-cuts "$fbank/${corpus}_cuts_dev.jsonl.gz" \
        --test-cuts "$fbank/${corpus}_cuts_test.jsonl.gz" \
        --lm-scales "$lm_scales" --word-penalties "$word_penalties" --metric WER \
        --out-dir "$exp_dir/decode"
}
stage5() {
    "${wfst_asr[@]}" score --decode-dir "$exp_dir/decode" --metric WER
}

run_stage 0 "$data_dir/.stage0.done" "manifests of $corpus_dir -> $manifests" stage0
run_stage 1 "$data_dir/.stage1.done" "fbank + CMVN -> $fbank" stage1
run_stage 2 "$data_dir/.stage2.done" "lexicon, lang dir, bigram G, HLG -> $lang" stage2
run_stage 3 "$exp_dir/.stage3.done" "train $config -> $exp_dir" stage3
run_stage 4 "$exp_dir/.stage4.done" "decode dev and test -> $exp_dir/decode" stage4
run_stage 5 "$exp_dir/.stage5.done" "score (WER)" stage5
