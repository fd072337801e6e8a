#!/usr/bin/env bash
# LJ Speech (part 1: 385 clips of one reader, 41.7 min; the text of all 13,100 clips for LMs):
# word-level recognition with a real lexicon and LM. Two lang dirs over one LM vocabulary
# (CMUdict phones + a WFST G2P for the words CMUdict lacks; 500 sentencepiece pieces), a
# pruned word 3-gram in the HLG, a 4-gram and an LSTM LM for rescoring, WER on words.
# Everything but stage 0 (local/prepare_ljspeech.py) is the `wfst-asr` CLI; the settings are
# conf/*.yaml. Runs in its own folder (data/ and exp/ next to this script).
#
#   egs/ljspeech/run.sh [--stage N] [--stop-stage M] [--quick true] [--corpus-dir DIR]
#                       [--models "phone bpe"] [--forced-best true] [--set k=v ...]
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
#   5  train a CTC model per lang dir (conf/ctc_<model>.yaml; BPE from the phone model's
#      encoder)                                                     -> exp/ctc_<model>
#   6  decode dev and test: greedy, HLG (engine and Kaldi's decoder), tuned on dev
#                                                                    -> exp/ctc_<model>/decode
#      (--forced-best true: also search vs model errors of the HLG 1-best, ~80 s per model:
#      exp/ctc_<model>/decode/hlg/forced_best_<set>.tsv)
#   7  an LSTM word LM on the LM text (the lang dirs share words.txt) -> data/lm/nnlm
#   8  lattices, 4-gram whole-lattice and LSTM-LM n-best rescoring, oracle (tuned on dev)
#                                                                    -> exp/ctc_<model>/rescore
# Attention encoder-decoder with BERT distillation (Futami et al. 2020), after the main job
# (--stage 9 --stop-stage 10; about 2.5 hours on 2 cores):
#   9  the transcripts spelled in the BPE pieces (wfst-asr spell, field pieces); on the LM
#      text in pieces (with clip ids: chapter and order), three text teachers (wfst-asr
#      train-mlm): a left-to-right transformer LM, a masked LM on the sentence alone, a masked
#      LM with the previous / next sentences of the chapter as context; their top-8 soft
#      labels of the training transcripts (wfst-asr soft-labels)
#                                  -> data/fbank/*.pieces.jsonl.gz, data/lm/text_lm, *.soft_*.pt
#  10  train conf/attention_bpe.yaml as it is (--distill none) and distilled from each teacher
#      (--distill-weight), all from the CTC BPE model's encoder (stage 5; --att-init), decode
#      dev/test: greedy, beam, joint CTC beam, greedy CTC; the
#      baseline also with shallow fusion / n-best rescoring with the LM and n-best rescoring
#      with the MLM (weight x per-token penalty tuned on dev)
#                                                  -> exp/attention_bpe{,_distill_<teacher>}
# Differentiable beam-search decoding (Collobert et al. 2019), after stage 6 (--stage 11
# --stop-stage 11; about an hour on 2 cores):
#  11  fine-tune the phone CTC model with conf/dbd_phone.yaml (H o L o G, G the pruned 3-gram
#      as a trainable back-off graph), G's log-weights fixed and trained; decode dev/test by
#      the best path in that graph at the training beams and at fewer active states
#      ($dbd_max_active), the CTC model too; the HLG as in stage 6
#                                             -> exp/dbd_phone{_fixed,}, exp/ctc_phone/decode_dbd
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
models="phone bpe"
bpe_init=true       # the BPE model starts from the phone model's encoder (stage 5)
speed_perturb=0.9,1.1
prune_phone=3e-6    # relative-entropy threshold of the HLG's 3-gram (wfst-asr prune-lm):
prune_bpe=1e-5      # word pieces need more (LG's epsilon removal copies ~100 arcs per state)
bpe_size=500
lm_scales=0.6,0.8,1.0,1.2
word_penalties=0,1
nolm_penalties=2,4,6  # the phone model's no-LM baseline (lm_scale 0: words through L only)
# the HLG search (engine and Kaldi's decoder, lattices), per lang dir: the BPE HLG has ~170
# arcs per state (LG without back-off epsilons), the phone HLG ~13
search_beam_phone=15 max_active_phone=3000
search_beam_bpe=8 max_active_bpe=150
# stage 6's grid for the BPE HLG (one setting, tuned on dev: a search there costs ~10x the
# phone HLG's); stage 8 tunes the scales on its lattices
lm_scales_bpe=0.5 word_penalties_bpe=-2
rescore_penalties=-2,-1,0,1  # stage 8's word penalties (lattice sweeps are cheap)
nnlm_epochs=2
nnlm_dim=128
nnlm_text=lm_text  # data/manifests/<this> (quick: text_train, 305 lines)
g2p_args=""
teachers="lm mlm mlm_ctx"  # stage 9: the text teachers (lm and mlm also decode, stage 10)
distill="none lm mlm mlm_ctx"  # stage 10: the baseline (none), one distilled per teacher
att_init=true  # stage 10: the attention encoder's BLSTM starts from exp/ctc_bpe (stage 5)
att_methods=greedy,beam,beam_ctc,aux_ctc  # stage 10's decoding (the baseline adds the LMs')
att_lm_methods=fusion,rescore_lm,rescore_mlm
att_max_len_ratio=0.5  # at most 0.5 pieces per 30 ms encoder frame (speech: ~0.1-0.2)
distill_weight=0.3
context_tokens=32    # mlm_ctx: tokens of the previous and of the next sentences
teacher_text=lm_text_utt  # data/manifests/<this>: the teachers' text (quick: text_train)
# every teacher 20 epochs (the masked LMs leave the unigram plateau only after 7-10 of them)
tlm_args="--epochs 20 --d-model 128 --num-layers 2 --dim-feedforward 512 --lr 1e-3 --batch-size 64"
mlm_args="--epochs 20 --d-model 128 --num-layers 2 --dim-feedforward 512 --lr 1e-3 --batch-size 64"
att_lm_scales=0,0.2,0.4
att_word_penalties=0,1
dbd_max_active=4,16,64  # stage 11: the beam sweep (the training beam: conf/dbd_phone.yaml)
dbd_set=()              # stage 11: more --set of the DBD trainings
dbd_models="dbd_phone_fixed dbd_phone"  # stage 11: G's log-weights fixed / trained
dbd_ctc=true            # stage 11: also the CTC model in the DBD graph
dbd_lm_scales=0.8,1.0,1.2,1.5,2.0  # stage 11: the HLG's grid for the DBD models (they lean on G)
forced_best=false  # stage 6: score each wrong utterance's reference in the HLG (decode --forced-best)
set=()
. "$root/local/parse_options.sh"

python=$root/.venv/bin/python
[[ -x "$python" ]] || python=python3
wfst_asr=("$python" -m wfst_asr.bin.cli --quiet)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# one intra-op thread: the engine runs its own two threads, and on 2 cores PyTorch's OpenMP
# pool on top of them made a training epoch 2.7x slower (103 s against 37 s, measured)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [[ $quick == true ]]; then  # CI: every stage, tiny settings
    speed_perturb="" nnlm_epochs=1 nnlm_dim=32 lm_scales=0.5,1.0 word_penalties=0
    nolm_penalties=0 lm_scales_bpe=0.5,1.0 word_penalties_bpe=0 rescore_penalties=0
    search_beam_phone=8 max_active_phone=200 search_beam_bpe=8
    max_active_bpe=200 nnlm_text=text_train prune_bpe=1e-4 prune_phone=1e-4
    tlm_args="--epochs 1 --d-model 16 --nhead 2 --num-layers 1 --dim-feedforward 32"
    mlm_args=$tlm_args att_lm_scales=0,0.3 att_word_penalties=0 teacher_text=text_train
    distill="none mlm_ctx" att_methods=beam att_max_len_ratio=0.05
    g2p_args="--order 3 --iters 2" dbd_max_active=4 dbd_models=dbd_phone dbd_ctc=false
    dbd_lm_scales=1.0
    dbd_set=(--set loss.max_active_states=16 --set loss.search_beam=8)
    set=(num_epochs=1 model.hidden=32 model.num_layers=1 ${set[@]+"${set[@]}"})
fi
timing_log=$exp_dir/stage_times.tsv
. "$root/local/stages.sh"
mkdir -p "$exp_dir"

manifests=$data_dir/manifests fbank=$data_dir/fbank lm_dir=$data_dir/lm
search_of() {  # --search-beam/--max-active(-states) values of a model's lang dir
    case $1 in bpe) echo "$search_beam_bpe $max_active_bpe" ;;
               *) echo "$search_beam_phone $max_active_phone" ;; esac
}
grid_of() {  # stage 6's --lm-scales and --word-penalties of a model
    case $1 in bpe) echo "$lm_scales_bpe $word_penalties_bpe" ;;
               *) echo "$lm_scales $word_penalties" ;; esac
}
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
    # word pieces: sentencepiece on the LM text (it holds the training transcripts), spelling
    # the phone lexicon's words: one vocabulary (the same words.txt) for both lang dirs
    timed "${wfst_asr[@]}" train-bpe --text "$manifests/lm_text" --vocab-size "$bpe_size" \
        --out-dir "$bpe"
    "${wfst_asr[@]}" lexicon --words "$local_dir/lexicon_phone.txt" --bpe-model "$bpe/bpe.model" \
        --out "$local_dir/lexicon_bpe.txt"
    "${wfst_asr[@]}" compile-lang --lang-dir "$bpe" --lexicon "$local_dir/lexicon_bpe.txt"
    cmp -s "$phone/words.txt" "$bpe/words.txt" || {
        echo "$0: $phone/words.txt and $bpe/words.txt differ (one vocabulary expected)" >&2
        exit 1
    }
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
    local m init
    for m in $models; do
        # the BPE model starts from the phone model's encoder when there is one (bpe_init)
        init=$exp_dir/ctc_phone/averaged.pt
        [[ $m == bpe && $bpe_init == true && -f $init ]] && init=(--set "init_from=$init") \
            || init=()
        # shellcheck disable=SC2046
        timed "${wfst_asr[@]}" train --config "conf/ctc_$m.yaml" --exp-dir "$exp_dir/ctc_$m" \
            --resume $(sets "$m") ${init[@]+"${init[@]}"}
    done
}
stage6() {
    local m beam active scales penalties
    for m in $models; do
        read -r beam active <<< "$(search_of "$m")"
        read -r scales penalties <<< "$(grid_of "$m")"
        # shellcheck disable=SC2046
        timed "${wfst_asr[@]}" decode --exp-dir "$exp_dir/ctc_$m" --lang-dir "$(lang_dir_of "$m")" \
            --dev-cuts "$fbank/${corpus}_cuts_dev.jsonl.gz" \
            --test-cuts "$fbank/${corpus}_cuts_test.jsonl.gz" --ref-field text \
            --search-beam "$beam" --max-active "$active" \
            --lm-scales "$scales" --word-penalties="$penalties" --metric WER \
            $([[ $forced_best == true ]] && echo --forced-best) --out-dir "$exp_dir/ctc_$m/decode"
        "${wfst_asr[@]}" score --decode-dir "$exp_dir/ctc_$m/decode" --metric WER
        [[ $m == phone ]] || continue
        # no LM (words through the lexicon only): the phone model's baseline, as greedy is BPE's
        timed "${wfst_asr[@]}" decode --exp-dir "$exp_dir/ctc_$m" --lang-dir "$(lang_dir_of "$m")" \
            --dev-cuts "$fbank/${corpus}_cuts_dev.jsonl.gz" \
            --test-cuts "$fbank/${corpus}_cuts_test.jsonl.gz" --ref-field text --methods hlg \
            --search-beam "$beam" --max-active "$active" --lm-scales 0 \
            --word-penalties="$nolm_penalties" --metric WER --out-dir "$exp_dir/ctc_$m/decode_nolm"
        "${wfst_asr[@]}" score --decode-dir "$exp_dir/ctc_$m/decode_nolm" --metric WER
    done
}
stage7() {  # one LM: the lang dirs share words.txt (stage 2)
    local m
    for m in $models; do break; done
    # shellcheck disable=SC2046
    timed "${wfst_asr[@]}" train-nnlm "$manifests/$nnlm_text" "$(lang_dir_of "$m")/words.txt" \
        "$lm_dir/nnlm" $([[ $nnlm_text == lm_text ]] && echo --no-utt-id) --oov skip \
        --epochs "$nnlm_epochs" \
        --embed-dim "$nnlm_dim" --hidden-dim "$nnlm_dim" --num-layers 1 --resume
}
stage8() {
    local m lang exp beam active
    for m in $models; do
        lang=$(lang_dir_of "$m") exp=$exp_dir/ctc_$m
        read -r beam active <<< "$(search_of "$m")"
        timed "${wfst_asr[@]}" make-lattices --exp-dir "$exp" --lang-dir "$lang" \
            --dev-cuts "$fbank/${corpus}_cuts_dev.jsonl.gz" \
            --test-cuts "$fbank/${corpus}_cuts_test.jsonl.gz" --out-dir "$exp/lats" \
            --search-beam "$beam" --max-active-states "$active"
        timed "${wfst_asr[@]}" rescore --lat-dir "$exp/lats" --lang-dir "$lang" \
            --dev-cuts "$fbank/${corpus}_cuts_dev.jsonl.gz" \
            --test-cuts "$fbank/${corpus}_cuts_test.jsonl.gz" \
            --ngram-arpa "$lang/4gram.arpa" --nnlm "$lm_dir/nnlm/lm.pt" \
            --lm-scales "$lm_scales" --word-penalties="$rescore_penalties" --metric WER \
            --out-dir "$exp/rescore"
    done
}
stage9() {
    local bpe s teacher objective t_dir=$lm_dir/text_lm
    local -a extra
    bpe=$(lang_dir_of bpe)
    for s in train dev test; do
        "${wfst_asr[@]}" spell --bpe-model "$bpe/bpe.model" --field pieces \
            --cuts "$fbank/${corpus}_cuts_$s.jsonl.gz" --out "$fbank/${corpus}_cuts_$s.pieces.jsonl.gz"
    done
    mkdir -p "$t_dir"
    "${wfst_asr[@]}" spell --bpe-model "$bpe/bpe.model" --text "$manifests/$teacher_text" \
        --out "$t_dir/text_lm"
    "${wfst_asr[@]}" cuts-text --cuts "$fbank/${corpus}_cuts_dev.pieces.jsonl.gz" \
        --field pieces --out "$t_dir/text_dev"
    for teacher in $teachers; do
        case $teacher in
            lm) objective=causal; read -r -a extra <<< "$tlm_args" ;;
            mlm) objective=mlm; read -r -a extra <<< "$mlm_args" ;;
            mlm_ctx) objective=mlm; read -r -a extra <<< "$mlm_args"
                     extra+=(--context-tokens "$context_tokens" --chapter-regex '^(LJ[0-9]+)-') ;;
            *) echo "$0: unknown teacher $teacher (lm, mlm, mlm_ctx)" >&2; exit 1 ;;
        esac
        timed "${wfst_asr[@]}" train-mlm "$t_dir/text_lm" "$bpe/tokens.txt" "$t_dir/$teacher" \
            --dev-text "$t_dir/text_dev" --objective "$objective" --oov skip \
            ${extra[@]+"${extra[@]}"} --resume | tail -n 1
        timed "${wfst_asr[@]}" soft-labels --teacher "$t_dir/$teacher/textlm.pt" \
            --cuts "$fbank/${corpus}_cuts_train.pieces.jsonl.gz" --tokens "$bpe/tokens.txt" \
            --field pieces --k 8 --out "$fbank/${corpus}_cuts_train.soft_$teacher.pt" --no-progress
    done
}
stage10() {
    local bpe t_dir=$lm_dir/text_lm name teacher exp
    local -a args
    bpe=$(lang_dir_of bpe)
    for teacher in $distill; do
        name=attention_bpe args=()
        if [[ $teacher != none ]]; then
            name+=_distill_$teacher
            args=(--set "loss.soft_labels=$fbank/${corpus}_cuts_train.soft_$teacher.pt"
                  --set "loss.distill_weight=$distill_weight" --set "loss.distill_k=8")
        fi
        [[ $att_init == true && -f $exp_dir/ctc_bpe/averaged.pt ]] \
            && args+=(--set "init_from=$exp_dir/ctc_bpe/averaged.pt")
        exp=$exp_dir/$name
        # shellcheck disable=SC2046
        timed "${wfst_asr[@]}" train --config conf/attention_bpe.yaml --exp-dir "$exp" --resume \
            $(sets bpe) --set "train_cuts=$fbank/${corpus}_cuts_train.pieces.jsonl.gz" \
            --set "dev_cuts=$fbank/${corpus}_cuts_dev.pieces.jsonl.gz" ${args[@]+"${args[@]}"}
        # the baseline also with the LMs (fusion, n-best rescoring); the distilled models
        # as they are: distillation must help without any LM at decoding time
        local -a lms=(--methods "$att_methods")
        [[ $teacher == none ]] && lms=(--methods "$att_methods,$att_lm_methods"
                                       --text-lm "$t_dir/lm/textlm.pt" --mlm "$t_dir/mlm/textlm.pt")
        timed "${wfst_asr[@]}" decode --exp-dir "$exp" --lang-dir "$bpe" \
            --dev-cuts "$fbank/${corpus}_cuts_dev.pieces.jsonl.gz" \
            --test-cuts "$fbank/${corpus}_cuts_test.pieces.jsonl.gz" --ref-field text \
            "${lms[@]}" --lm-scales "$att_lm_scales" --word-penalties="$att_word_penalties" \
            --max-len-ratio "$att_max_len_ratio" --metric WER --out-dir "$exp/decode"
        "${wfst_asr[@]}" score --decode-dir "$exp/decode" --metric WER
    done
}
stage11() {
    local phone name train_lm exp
    phone=$(lang_dir_of phone)
    local -a dec=(--lang-dir "$phone" --dev-cuts "$fbank/${corpus}_cuts_dev.jsonl.gz"
                  --test-cuts "$fbank/${corpus}_cuts_test.jsonl.gz" --ref-field text
                  --metric WER --dbd-max-active "$dbd_max_active")
    # the CTC model in the DBD graph (the ARPA's weights), at the same beams
    if [[ $dbd_ctc == true ]]; then
        timed "${wfst_asr[@]}" decode --exp-dir "$exp_dir/ctc_phone" --methods dbd \
            --dbd-config conf/dbd_phone.yaml "${dec[@]}" --out-dir "$exp_dir/ctc_phone/decode_dbd"
        "${wfst_asr[@]}" score --decode-dir "$exp_dir/ctc_phone/decode_dbd" --metric WER
    fi
    local penalties beam active
    read -r _ penalties <<< "$(grid_of phone)"
    read -r beam active <<< "$(search_of phone)"
    for name in $dbd_models; do
        train_lm=true exp=$exp_dir/$name
        [[ $name == *_fixed ]] && train_lm=false
        # shellcheck disable=SC2046
        timed "${wfst_asr[@]}" train --config conf/dbd_phone.yaml --exp-dir "$exp" --resume \
            $(sets phone) --set "init_from=$exp_dir/ctc_phone/averaged.pt" \
            --set "loss.train_lm=$train_lm" ${dbd_set[@]+"${dbd_set[@]}"}
        timed "${wfst_asr[@]}" decode --exp-dir "$exp" --methods dbd,hlg "${dec[@]}" \
            --search-beam "$beam" --max-active "$active" --lm-scales "$dbd_lm_scales" \
            --word-penalties="$penalties" --out-dir "$exp/decode"
        "${wfst_asr[@]}" score --decode-dir "$exp/decode" --metric WER
    done
}

run_stage 0 "$data_dir/.stage0.done" "manifests and LM text of $corpus_dir -> $manifests" stage0
run_stage 1 "$data_dir/.stage1.done" "fbank + CMVN -> $fbank" stage1
run_stage 2 "$data_dir/.stage2.done" "lang dirs (CMUdict + G2P phones, BPE $bpe_size)" stage2
run_stage 3 "$data_dir/.stage3.done" "3-gram (pruned) and 4-gram per lang dir" stage3
run_stage 4 "$data_dir/.stage4.done" "HLG per lang dir" stage4
run_stage 5 "$exp_dir/.stage5.done" "train CTC: $models" stage5
run_stage 6 "$exp_dir/.stage6.done" "decode and score dev/test" stage6
run_stage 7 "$data_dir/.stage7.done" "LSTM word LM -> $lm_dir/nnlm" stage7
run_stage 8 "$exp_dir/.stage8.done" "lattices, 4-gram / LSTM-LM rescoring, oracle" stage8
run_stage 9 "$data_dir/.stage9.done" "pieces, text teachers (LM, MLM, MLM + context), soft labels" \
    stage9
run_stage 10 "$exp_dir/.stage10.done" "attention models: baseline and distilled ($distill)" \
    stage10
run_stage 11 "$exp_dir/.stage11.done" "DBD: the phone model fine-tuned through its decoder" \
    stage11
