#!/usr/bin/env bash
# LJ Speech (part 1: 385 clips of one reader, 41.7 min; the text of all 13,100 clips for LMs):
# word-level recognition with a real lexicon and LM. Two lang dirs over one LM vocabulary
# (CMUdict phones + a WFST G2P for the words CMUdict lacks; 500 sentencepiece pieces), a
# pruned word 3-gram in the HLG, a 4-gram and an LSTM LM for rescoring, WER on words.
# Everything but stage 0 (local/prepare_ljspeech.py) is the `wfst-asr` CLI; the settings are
# conf/*.yaml. Runs in its own folder (data/ and exp/ next to this script).
#
#   egs/ljspeech/run.sh [--stage N] [--stop-stage M] [--quick true] [--corpus-dir DIR]
#                       [--models "bpe phone"] [--set k=v ...]
#
# Stages (a marker per stage: a plain rerun skips what is done; an explicit --stage N reruns
# stages N..stop-stage whatever their markers say):
#   0  manifests train/dev/test (the corpus README's split), LM text without dev and test
#      (local/prepare_ljspeech.py)                                   -> data/manifests
#   1  80-dim fbank + CMVN, speed perturbation 0.9/1.1 of train      -> data/fbank
#   2  lang dirs: phones (CMUdict + G2P trained on CMUdict for the OOVs), BPE 500
#                                                                    -> data/lang_{phone,bpe_500}
#   3  LMs on the LM text: 3-gram (pruned) for the HLG, 4-gram, per lang dir; perplexity and
#      OOV rate on dev and test                                      -> data/lang_*/, data/lm
#   4  HLG of each lang dir (compile-graph)                          -> data/lang_*/HLG.*
#   5  train a CTC model per lang dir (conf/ctc_<model>.yaml)        -> exp/ctc_<model>
#   6  decode dev and test: greedy, HLG (engine and Kaldi's decoder), tuned on dev
#                                                                    -> exp/ctc_<model>/decode
#   7  an LSTM word LM per lang dir on the LM text                  -> data/lm/nnlm_<model>
#   8  lattices, 4-gram whole-lattice and LSTM-LM n-best rescoring, oracle (tuned on dev)
#                                                                    -> exp/ctc_<model>/rescore
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=${WFST_ASR_ROOT:-$(cd ../.. && pwd)}  # the checkout (its local/ and .venv)

corpus=ljspeech
stage=0
stop_stage=8
quick=false
corpus_dir=$root/../shared/data/ljspeech_part1
data_dir=data
exp_dir=exp
models="bpe phone"
speed_perturb=0.9,1.1
prune_phone=3e-6    # relative-entropy threshold of the HLG's 3-gram (wfst-asr prune-lm):
prune_bpe=1e-5      # word pieces need more (LG's epsilon removal copies ~100 arcs per state)
bpe_size=500
lm_scales=0.3,0.5,0.7,0.9,1.1
word_penalties=-1,0,1,2
search_beam=15     # the HLG search (engine and Kaldi's decoder, lattices)
max_active=3000
nnlm_epochs=2
nnlm_dim=128
nnlm_text=lm_text  # data/manifests/<this> (quick: text_train, 305 lines)
g2p_args=""
set=()
. "$root/local/parse_options.sh"

python=$root/.venv/bin/python
[[ -x "$python" ]] || python=python3
wfst_asr=("$python" -m wfst_asr.bin.cli --quiet)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [[ $quick == true ]]; then  # CI: every stage, tiny settings
    speed_perturb="" nnlm_epochs=1 nnlm_dim=32 lm_scales=0.5,1.0 word_penalties=0
    search_beam=8 max_active=200 nnlm_text=text_train prune_bpe=1e-4 prune_phone=1e-4
    g2p_args="--order 3 --iters 2"
    set=(num_epochs=1 model.hidden=32 model.num_layers=1 ${set[@]+"${set[@]}"})
fi
timing_log=$exp_dir/stage_times.tsv
. "$root/local/stages.sh"
mkdir -p "$exp_dir"

manifests=$data_dir/manifests fbank=$data_dir/fbank lm_dir=$data_dir/lm
prune_of() { case $1 in bpe) echo "$prune_bpe" ;; *) echo "$prune_phone" ;; esac; }
lang_dir_of() { case $1 in bpe) echo "$data_dir/lang_bpe_$bpe_size" ;; *) echo "$data_dir/lang_$1" ;; esac; }

stage0() {
    timed "$python" "local/prepare_$corpus.py" --corpus-dir "$corpus_dir" --out-dir "$manifests"
}
stage1() {
    local -a sp=()
    [[ -n $speed_perturb ]] && sp=(--speed-perturb "$speed_perturb")
    timed "${wfst_asr[@]}" compute-features --out-dir "$fbank" --kind fbank \
        --num-mel-bins 80 --cuts "$manifests/${corpus}_cuts_train.jsonl.gz" \
        --cuts "$manifests/${corpus}_cuts_dev.jsonl.gz" \
        --cuts "$manifests/${corpus}_cuts_test.jsonl.gz" \
        --cmvn-from "${corpus}_cuts_train.jsonl.gz" ${sp[@]+"${sp[@]}"} --num-jobs 2
}
stage2() {
    local local_dir=$data_dir/local phone bpe
    phone=$(lang_dir_of phone) bpe=$(lang_dir_of bpe)
    mkdir -p "$local_dir"
    # phones: CMUdict for the words it has, the G2P (trained on CMUdict) for the others
    timed "${wfst_asr[@]}" lexicon --text "$manifests/lm_text" --out "$local_dir/lexicon_cmu.txt" \
        --oov-file "$local_dir/oovs.txt"
    # shellcheck disable=SC2086
    timed "${wfst_asr[@]}" train-g2p --cmudict --out-dir "$local_dir/g2p" $g2p_args
    timed "${wfst_asr[@]}" g2p --model-dir "$local_dir/g2p" --words "$local_dir/oovs.txt" \
        --out "$local_dir/lexicon_g2p.txt"
    cat "$local_dir/lexicon_cmu.txt" "$local_dir/lexicon_g2p.txt" > "$local_dir/lexicon_phone.txt"
    "${wfst_asr[@]}" compile-lang --lang-dir "$phone" --lexicon "$local_dir/lexicon_phone.txt"
    # word pieces: sentencepiece on the LM text (it holds the training transcripts)
    timed "${wfst_asr[@]}" train-bpe --text "$manifests/lm_text" --vocab-size "$bpe_size" \
        --out-dir "$bpe"
    "${wfst_asr[@]}" lexicon --text "$manifests/lm_text" --bpe-model "$bpe/bpe.model" \
        --out "$local_dir/lexicon_bpe.txt"
    "${wfst_asr[@]}" compile-lang --lang-dir "$bpe" --lexicon "$local_dir/lexicon_bpe.txt"
}
stage3() {
    local m lang
    mkdir -p "$lm_dir"
    for m in $models; do
        lang=$(lang_dir_of "$m")
        # sentences with a word the lang dir cannot spell (G2P alphabet) are left out
        timed "${wfst_asr[@]}" estimate-lm --text "$manifests/lm_text" --order 3 \
            --vocab "$lang/words.txt" --drop-oov-sentences --prune "$(prune_of "$m")" \
            --out "$lang/lm.arpa"
        "${wfst_asr[@]}" compile-lm --arpa "$lang/lm.arpa" --words "$lang/words.txt" \
            --out "$lang/G.fst"
        "${wfst_asr[@]}" estimate-lm --text "$manifests/lm_text" --order 4 \
            --vocab "$lang/words.txt" --drop-oov-sentences --out "$lang/4gram.arpa"
        "${wfst_asr[@]}" lm-eval --arpa "$lang/lm.arpa" --arpa "$lang/4gram.arpa" \
            --text "$manifests/text_dev" --text "$manifests/text_test" --skip-first-field \
            | tee "$lang/lm_eval.txt"
    done
}
stage4() {
    local m
    for m in $models; do
        timed "${wfst_asr[@]}" compile-graph --lang-dir "$(lang_dir_of "$m")" --kind HLG
    done
}
sets() {  # the config's data paths point at data/; --data-dir moves them
    local m=$1 lang s
    lang=$(lang_dir_of "$m")
    echo --set "train_cuts=$fbank/${corpus}_cuts_train.jsonl.gz" \
        --set "dev_cuts=$fbank/${corpus}_cuts_dev.jsonl.gz" --set "cmvn=$fbank/cmvn.pt" \
        --set "lang_dir=$lang" --set "tokens=$lang/tokens.txt"
    for s in ${set[@]+"${set[@]}"}; do echo --set "$s"; done
}
stage5() {
    local m
    for m in $models; do
        # shellcheck disable=SC2046
        timed "${wfst_asr[@]}" train --config "conf/ctc_$m.yaml" --exp-dir "$exp_dir/ctc_$m" \
            --resume $(sets "$m")
    done
}
stage6() {
    local m
    for m in $models; do
        timed "${wfst_asr[@]}" decode --exp-dir "$exp_dir/ctc_$m" --lang-dir "$(lang_dir_of "$m")" \
            --dev-cuts "$fbank/${corpus}_cuts_dev.jsonl.gz" \
            --test-cuts "$fbank/${corpus}_cuts_test.jsonl.gz" --ref-field text \
            --search-beam "$search_beam" --max-active "$max_active" \
            --lm-scales "$lm_scales" --word-penalties "$word_penalties" --metric WER \
            --out-dir "$exp_dir/ctc_$m/decode"
        "${wfst_asr[@]}" score --decode-dir "$exp_dir/ctc_$m/decode" --metric WER
    done
}
stage7() {
    local m lang
    for m in $models; do
        lang=$(lang_dir_of "$m")
        timed "${wfst_asr[@]}" train-nnlm "$manifests/$nnlm_text" "$lang/words.txt" \
            "$lm_dir/nnlm_$m" $([[ $nnlm_text == lm_text ]] && echo --no-utt-id) --oov skip \
            --epochs "$nnlm_epochs" \
            --embed-dim "$nnlm_dim" --hidden-dim "$nnlm_dim" --num-layers 1 --resume
    done
}
stage8() {
    local m lang exp
    for m in $models; do
        lang=$(lang_dir_of "$m") exp=$exp_dir/ctc_$m
        timed "${wfst_asr[@]}" make-lattices --exp-dir "$exp" --lang-dir "$lang" \
            --dev-cuts "$fbank/${corpus}_cuts_dev.jsonl.gz" \
            --test-cuts "$fbank/${corpus}_cuts_test.jsonl.gz" --out-dir "$exp/lats" \
            --search-beam "$search_beam" --max-active-states "$max_active"
        timed "${wfst_asr[@]}" rescore --lat-dir "$exp/lats" --lang-dir "$lang" \
            --dev-cuts "$fbank/${corpus}_cuts_dev.jsonl.gz" \
            --test-cuts "$fbank/${corpus}_cuts_test.jsonl.gz" \
            --ngram-arpa "$lang/4gram.arpa" --nnlm "$lm_dir/nnlm_$m/lm.pt" \
            --lm-scales "$lm_scales" --word-penalties "$word_penalties" --metric WER \
            --out-dir "$exp/rescore"
    done
}

run_stage 0 "$data_dir/.stage0.done" "manifests and LM text of $corpus_dir -> $manifests" stage0
run_stage 1 "$data_dir/.stage1.done" "fbank + CMVN -> $fbank" stage1
run_stage 2 "$data_dir/.stage2.done" "lang dirs (CMUdict + G2P phones, BPE $bpe_size)" stage2
run_stage 3 "$data_dir/.stage3.done" "3-gram (pruned) and 4-gram per lang dir" stage3
run_stage 4 "$data_dir/.stage4.done" "HLG per lang dir" stage4
run_stage 5 "$exp_dir/.stage5.done" "train CTC: $models" stage5
run_stage 6 "$exp_dir/.stage6.done" "decode and score dev/test" stage6
run_stage 7 "$data_dir/.stage7.done" "LSTM word LM per lang dir -> $lm_dir" stage7
run_stage 8 "$exp_dir/.stage8.done" "lattices, 4-gram / LSTM-LM rescoring, oracle" stage8
