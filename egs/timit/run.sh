#!/usr/bin/env bash
# TIMIT phone recognition: 48 phones, PER on the 39-phone set. Run from anywhere; it works in
# its own folder (egs/timit: data/ and exp/ are written there, as Kaldi and icefall recipes do).
#
#   egs/timit/run.sh [--stage N] [--stop-stage M] [--timit-dir DIR] [--data-dir DIR]
#                    [--exp-dir DIR] [--loss ctc|hmm|mmi|transducer|segmental|attention|dbd]
#                    [--config FILE|NAME]
#                    [--lm-scales 0.1,0.3,...] [--word-penalties -1,0,1] [--set k=v ...]
#                    [--gmm-dir DIR] [--gmm-args "ARGS"] [--gmm-lm-scales 0.2,...]
#                    [--gmm-word-penalties -1,0,...] [--nnlm-epochs N]
#                    [--lattice-args "ARGS"] [--rescore-args "ARGS"]
#                    [--distill none|lm|mlm] [--distill-weight W] [--mlm-args "ARGS"]
#                    [--tlm-args "ARGS"] [--dbd-max-active K,K,...]
#
# --loss picks the criterion and, unless --config names another config file (e.g.
# conf/ctc_tdnn_lstm.yaml) or a registered base, the recipe's settings conf/<loss>_blstm.yaml;
# EXP_DIR defaults to exp/<config file stem>. --set k=v (repeatable) goes to `wfst-asr train`
# (e.g. num_epochs=2, model.hidden=64).
# Stages (a marker per stage: a plain rerun skips what is done; an explicit --stage N reruns
# stages N..stop-stage whatever their markers say):
#   0  manifests (local/prepare_timit.py)                      -> DATA_DIR/manifests
#   1  80-dim fbank + global CMVN (wfst-asr compute-features)  -> DATA_DIR/fbank
#   2  48-phone lang dir, train-only phone bigram G, CTC HLG (+ the graphs of --loss)
#                                                               -> DATA_DIR/lang_phone
#   3  (--loss hmm) monophone GMM-HMM (wfst-asr train-mono, --gmm-args "ARGS"), its alignments
#      of train and dev, its PER with its HCLG (wfst-asr decode / score), its alignments'
#      boundary accuracy (wfst-asr align)                        -> GMM_DIR (exp/mono)
#      (--loss segmental) the hand-labelled .phn segmentations as per-frame 48-phone labels
#      (wfst-asr frame-labels, field phones_48_frames)          -> DATA_DIR/frames
#      (--loss attention) text models on the training transcripts (wfst-asr cuts-text,
#      train-mlm; dev text for the figures): a masked LM (BERT, --mlm-args "ARGS") and a
#      left-to-right transformer LM (--tlm-args "ARGS"), and their top-8 soft labels of the
#      training cuts (wfst-asr soft-labels)  -> EXP_ROOT/text_lm, DATA_DIR/fbank/*.soft_*.pt
#      --distill lm|mlm trains the attention model with (1 - W) CE + W KL(teacher || model),
#      W = --distill-weight (EXP_DIR default exp/attention_blstm_distill_<teacher>)
#   4  train (wfst-asr train ... --resume: a rerun continues)   -> EXP_DIR (exp/ctc_blstm)
#      (--loss dbd: differentiable beam-search decoding over H o G, G the bigram with trainable
#      log-weights, fine-tuning the CTC model EXP_ROOT/ctc_blstm/averaged.pt: run --loss ctc
#      first; its decode adds method dbd, at --dbd-max-active K,... active states too)
#   5  decode dev and test (wfst-asr decode): greedy, HLG / HCLG / LG (lm_scale x phone
#      insertion penalty tuned on dev), Kaldi's decoder at that setting; a segmental model:
#      the segment lattice's best path; an attention model: greedy, beam, joint CTC/attention
#      beam, greedy CTC, shallow fusion and n-best rescoring with the transformer LM, n-best
#      rescoring with the MLM (LM weight x per-token penalty tuned on dev, --att-lm-scales /
#      --att-word-penalties)                                    -> EXP_DIR/decode
#   6  score (wfst-asr score): PER on 39 phones (48 -> 39 folding), per-speaker reports
#                                                               -> EXP_DIR/decode/results.txt
#      and (not --loss transducer / attention) forced alignments of the transcripts
#      (wfst-asr align), their boundary accuracy against the .phn boundaries -> EXP_DIR/align
#   7-9 (--loss ctc, attention): 7 dev/test lattices with the HLG (wfst-asr make-lattices;
#      an attention model: of its CTC branch)
#      -> EXP_DIR/lats/{dev,test}; 8 the training transcripts (wfst-asr cuts-text), a phone
#      3-gram (wfst-asr estimate-lm) and an LSTM LM (wfst-asr train-nnlm, --nnlm-epochs N) on
#      them -> EXP_DIR/lm; 9 (wfst-asr rescore) 1-best of the lattices, 3-gram whole-lattice
#      rescoring, LSTM-LM n-best rescoring (scales / penalties tuned on dev, applied to test),
#      lattice oracle, PER on 39 phones, and for an attention model its decoder's rescoring
#      of the n-best lists (icefall's attention rescoring: lm_scale x attention_scale x
#      penalty tuned on dev) -> EXP_DIR/rescore (a decode dir: results.txt);
#      --lattice-args "ARGS" / --rescore-args "ARGS" go to stage 7 / 9 (e.g. "--output-beam 4")
# Data: --timit-dir, else the NLTK TIMIT sample in $NLTK_DATA/corpora/timit,
# ~/nltk_data/corpora/timit or the shared/data/timit_nltk_sample next to the checkout. Each
# stage's wall time and peak memory go to EXP_DIR/stage_times.tsv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=$(cd ../.. && pwd)

stage=0
stop_stage=9
timit_dir=
exp_dir=
loss=ctc
config=
data_dir=data
lm_scales=0.1,0.2,0.3,0.5,0.7,1.0
word_penalties=-2,-1,0,1
set=()
nnlm_epochs=20
lattice_args=
rescore_args=
gmm_dir=
gmm_args=
gmm_lm_scales=0.2,0.3,0.5,0.7,1.0
gmm_word_penalties=-1,0,1,2
distill=none
distill_weight=0.3
dbd_max_active=2,4,16  # --loss dbd: method dbd also at these active states (the beam sweep)
# the text models of stage 3 (--loss attention), tuned on the dev text's (pseudo-)perplexity
mlm_args="--epochs 300 --d-model 128 --num-layers 2 --dim-feedforward 512 --lr 1e-3 --dropout 0.1"
tlm_args="--epochs 60 --d-model 128 --num-layers 2 --dim-feedforward 512 --lr 1e-3 --dropout 0.1"
att_lm_scales=0,0.1,0.2,0.3,0.5
att_word_penalties=-1,-0.5,0,0.5
. "$root/local/parse_options.sh"
if (( $# )); then
    echo "$0: error: unexpected argument $1 (see $0 --help)" >&2
    exit 1
fi

case "$loss" in
    ctc|hmm|mmi|transducer|segmental|attention|dbd) ;;
    *) echo "error: --loss must be ctc, hmm, mmi, transducer, segmental, attention or dbd," \
            "got '$loss'" >&2
       exit 1 ;;
esac
case "$distill" in
    none) ;;
    lm|mlm) [[ "$loss" == attention ]] || { echo "error: --distill is for --loss attention" >&2
                                           exit 1; } ;;
    *) echo "error: --distill must be none, lm or mlm, got '$distill'" >&2; exit 1 ;;
esac
config=${config:-conf/${loss}_blstm.yaml}  # the recipe's settings (conf/*.yaml)
config_stem=$(basename "$config"); config_stem=${config_stem%.*}
[[ "$distill" != none ]] && config_stem+="_distill_$distill"
exp_dir=${exp_dir:-exp/$config_stem}
gmm_dir=${gmm_dir:-$(dirname "$exp_dir")/mono}

python=$root/.venv/bin/python
[[ -x "$python" ]] || python=python3
wfst_asr=("$python" -m wfst_asr.bin.cli --quiet)
# passive OpenMP waiting: no spinning threads when other processes share the cores
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

manifest_dir=$data_dir/manifests
fbank_dir=$data_dir/fbank
lang_dir=$data_dir/lang_phone
frames_dir=$data_dir/frames
text_lm_dir=$(dirname "$exp_dir")/text_lm

if [[ -z "$timit_dir" ]]; then
    for d in ${NLTK_DATA:+"$NLTK_DATA/corpora/timit"} "$HOME/nltk_data/corpora/timit" \
             "$root/../shared/data/timit_nltk_sample"; do
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
. "$root/local/stages.sh"
quiet_kaldi() { grep -v -e '^\[I\]' -e 'kaldilm/csrc' >&2; }

stage0() {
    timed "$python" local/prepare_timit.py --timit-dir "$timit_dir" --out-dir "$manifest_dir" \
        --no-progress
}
stage1() {
    local -a cuts=()
    for split in train dev test; do
        [[ -f "$manifest_dir/timit_cuts_$split.jsonl.gz" ]] \
            && cuts+=(--cuts "$manifest_dir/timit_cuts_$split.jsonl.gz")
    done
    timed "${wfst_asr[@]}" compute-features "${cuts[@]}" --out-dir "$fbank_dir" \
        --kind fbank --num-mel-bins 80 --cmvn-from timit_cuts_train.jsonl.gz
}
stage2() {  # the lang dir and HLG; the graphs of the other criteria next to them, if needed
    timed "$python" local/make_graph.py --manifest-dir "$manifest_dir" --lang-dir "$lang_dir" \
        --loss "$loss" 2> >(quiet_kaldi)
}
stage3() {  # --loss hmm: the monophone GMM whose alignments the hybrid trains on
    local -a extra
    read -r -a extra <<< "$gmm_args"
    timed "${wfst_asr[@]}" train-mono --train-cuts "$fbank_dir/timit_cuts_train.jsonl.gz" \
        --align-cuts "$fbank_dir/timit_cuts_dev.jsonl.gz" --lang-dir "$lang_dir" \
        --token-field phones_48 --out-dir "$gmm_dir" ${extra[@]+"${extra[@]}"} \
        2> >(quiet_kaldi)
    # TIMIT only: how often the aligned phone is the hand-labelled one (-> summary.json)
    "$python" local/gmm_agreement.py --lang-dir "$lang_dir" --gmm-dir "$gmm_dir"
    # the GMM's own PER, with its HCLG
    "${wfst_asr[@]}" decode --exp-dir "$gmm_dir" --lang-dir "$lang_dir" \
        --dev-cuts "$fbank_dir/timit_cuts_dev.jsonl.gz" \
        --test-cuts "$fbank_dir/timit_cuts_test.jsonl.gz" --lm-scales="$gmm_lm_scales" \
        --word-penalties="$gmm_word_penalties" --metric PER \
        --map local/phones.60-48-39.map --map-from 48 --map-to 39 --out-dir "$gmm_dir/decode" \
        > "$gmm_dir/decode.log" 2> >(quiet_kaldi)
    "${wfst_asr[@]}" score --decode-dir "$gmm_dir/decode"
    # its Viterbi alignments of the transcripts, scored against the .phn boundaries
    "${wfst_asr[@]}" align --exp-dir "$gmm_dir" --lang-dir "$lang_dir" --ref-field phones_48 \
        --cuts "dev=$fbank_dir/timit_cuts_dev.jsonl.gz" \
        --cuts "test=$fbank_dir/timit_cuts_test.jsonl.gz" --ref-alignment phone \
        --map local/phones.60-48-39.map --map-from 61 --map-to 48 --out-dir "$gmm_dir/align"
}
stage3_frames() {  # --loss segmental: the reference segmentations, one label per frame
    local split
    mkdir -p "$frames_dir"
    for split in train dev test; do
        "${wfst_asr[@]}" frame-labels --cuts "$fbank_dir/timit_cuts_$split.jsonl.gz" \
            --out "$frames_dir/timit_cuts_$split.jsonl.gz" --alignment phone \
            --map local/phones.60-48-39.map --map-from 61 --map-to 48 --field phones_48_frames
    done
}
stage3_text() {  # --loss attention: the text teachers and their soft labels
    local split
    mkdir -p "$text_lm_dir"
    for split in train dev; do
        "${wfst_asr[@]}" cuts-text --cuts "$fbank_dir/timit_cuts_$split.jsonl.gz" \
            --field phones_48 --out "$text_lm_dir/text_$split"
    done
    local teacher objective
    local -a extra
    for teacher in mlm lm; do
        objective=mlm; read -r -a extra <<< "$mlm_args"
        [[ "$teacher" == lm ]] && { objective=causal; read -r -a extra <<< "$tlm_args"; }
        timed "${wfst_asr[@]}" train-mlm "$text_lm_dir/text_train" "$lang_dir/tokens.txt" \
            "$text_lm_dir/$teacher" --dev-text "$text_lm_dir/text_dev" --objective "$objective" \
            ${extra[@]+"${extra[@]}"} --resume | tail -n 1
        timed "${wfst_asr[@]}" soft-labels --teacher "$text_lm_dir/$teacher/textlm.pt" \
            --cuts "$fbank_dir/timit_cuts_train.jsonl.gz" --tokens "$lang_dir/tokens.txt" \
            --field phones_48 --k 8 --out "$fbank_dir/timit_cuts_train.soft_$teacher.pt"
    done
}
stage4() {
    local -a args=(--set "train_cuts=$fbank_dir/timit_cuts_train.jsonl.gz"
                   --set "dev_cuts=$fbank_dir/timit_cuts_dev.jsonl.gz")
    if [[ "$loss" == hmm ]]; then
        args=(--set "train_cuts=$gmm_dir/cuts_train.jsonl.gz"
              --set "dev_cuts=$gmm_dir/cuts_dev.jsonl.gz")
    elif [[ "$loss" == segmental ]]; then
        args=(--set "train_cuts=$frames_dir/timit_cuts_train.jsonl.gz"
              --set "dev_cuts=$frames_dir/timit_cuts_dev.jsonl.gz")
    elif [[ "$distill" != none ]]; then
        args+=(--set "loss.soft_labels=$fbank_dir/timit_cuts_train.soft_$distill.pt"
               --set "loss.distill_weight=$distill_weight" --set "loss.distill_k=8")
    elif [[ "$loss" == dbd ]]; then  # fine-tunes the CTC model of the same exp root
        local init
        init=$(dirname "$exp_dir")/ctc_blstm/averaged.pt
        [[ -f $init ]] || { echo "$0: --loss dbd fine-tunes $init: run --loss ctc first" >&2
                            return 1; }
        args+=(--set "init_from=$init")
    fi
    local s
    for s in ${set[@]+"${set[@]}"}; do args+=(--set "$s"); done
    timed "${wfst_asr[@]}" train --config "$config" --set "cmvn=$fbank_dir/cmvn.pt" \
        --set "tokens=$lang_dir/tokens.txt" --set "lang_dir=$lang_dir" "${args[@]}" \
        --exp-dir "$exp_dir" --resume
}
stage5() {  # the methods of the model's loss, lm_scale x penalty tuned on dev
    local -a ref=()
    # the hybrid trained on alignments, the segmental model on per-frame labels
    [[ "$loss" == hmm || "$loss" == segmental ]] && ref=(--ref-field phones_48)
    local scales=$lm_scales penalties=$word_penalties
    if [[ "$loss" == attention ]]; then  # the transformer LM and the MLM of stage 3
        scales=$att_lm_scales penalties=$att_word_penalties
        ref+=(--text-lm "$text_lm_dir/lm/textlm.pt" --mlm "$text_lm_dir/mlm/textlm.pt")
    fi
    [[ "$loss" == dbd ]] && ref+=(--dbd-max-active "$dbd_max_active")
    timed "${wfst_asr[@]}" decode --exp-dir "$exp_dir" --lang-dir "$lang_dir" \
        --dev-cuts "$fbank_dir/timit_cuts_dev.jsonl.gz" \
        --test-cuts "$fbank_dir/timit_cuts_test.jsonl.gz" --lm-scales="$scales" \
        --word-penalties="$penalties" ${ref[@]+"${ref[@]}"} --metric PER \
        --map local/phones.60-48-39.map --map-from 48 --map-to 39 --out-dir "$exp_dir/decode"
}
stage6() {
    "${wfst_asr[@]}" score --decode-dir "$exp_dir/decode"
    [[ "$loss" == transducer || "$loss" == attention || "$loss" == dbd ]] && return 0
    # forced alignments of the transcripts; boundary accuracy against the .phn boundaries
    "${wfst_asr[@]}" align --exp-dir "$exp_dir" --ref-field phones_48 \
        --cuts "dev=$fbank_dir/timit_cuts_dev.jsonl.gz" \
        --cuts "test=$fbank_dir/timit_cuts_test.jsonl.gz" --ref-alignment phone \
        --map local/phones.60-48-39.map --map-from 61 --map-to 48 --out-dir "$exp_dir/align"
}
# stages 7-9: lattices and rescoring on top of the CTC model's bigram HLG
stage7() {
    local -a extra
    read -r -a extra <<< "$lattice_args"
    timed "${wfst_asr[@]}" make-lattices --exp-dir "$exp_dir" --lang-dir "$lang_dir" \
        --dev-cuts "$fbank_dir/timit_cuts_dev.jsonl.gz" \
        --test-cuts "$fbank_dir/timit_cuts_test.jsonl.gz" --out-dir "$exp_dir/lats" \
        ${extra[@]+"${extra[@]}"}
}
stage8() {  # the LMs see the 48-phone transcripts of the TRAINING cuts only
    local lm_dir=$exp_dir/lm
    "${wfst_asr[@]}" cuts-text --cuts "$fbank_dir/timit_cuts_train.jsonl.gz" \
        --field phones_48 --out "$lm_dir/text_train"
    "${wfst_asr[@]}" estimate-lm --text "$lm_dir/text_train" --skip-first-field --order 3 \
        --vocab "$lang_dir/words.txt" --out "$lm_dir/3gram.arpa"
    timed "${wfst_asr[@]}" train-nnlm "$lm_dir/text_train" "$lang_dir/words.txt" \
        "$lm_dir/nnlm" --epochs "$nnlm_epochs" --embed-dim 128 --hidden-dim 128 \
        --num-layers 2 --dropout 0.2 --batch-size 16 --lr 2e-3 --resume \
        2> >(grep -v -e 'batch/s' -e 'batch\]' >&2)
}
stage9() {
    local -a extra
    local f
    for f in "$exp_dir/lats/dev/index.tsv" "$exp_dir/lats/test/index.tsv" \
             "$exp_dir/lm/3gram.arpa" "$exp_dir/lm/nnlm/lm.pt"; do
        if [[ ! -f "$f" ]]; then
            echo "stage 9: error: $f not found (run stages 7 and 8 first)" >&2
            return 2
        fi
    done
    read -r -a extra <<< "$rescore_args"
    # an attention model: its decoder rescores the n-best of its CTC branch's lattices too
    [[ "$loss" == attention ]] && extra=(--attention "$exp_dir" ${extra[@]+"${extra[@]}"})
    timed "${wfst_asr[@]}" rescore --lat-dir "$exp_dir/lats" --lang-dir "$lang_dir" \
        --dev-cuts "$fbank_dir/timit_cuts_dev.jsonl.gz" \
        --test-cuts "$fbank_dir/timit_cuts_test.jsonl.gz" --ref-field phones_48 --metric PER \
        --map local/phones.60-48-39.map --map-from 48 --map-to 39 \
        --ngram-arpa "$exp_dir/lm/3gram.arpa" --nnlm "$exp_dir/lm/nnlm/lm.pt" \
        --lm-scales="$lm_scales" --word-penalties="$word_penalties" \
        --out-dir "$exp_dir/rescore" ${extra[@]+"${extra[@]}"}
}

echo "TIMIT data: ${timit_dir:-(not needed)}; loss $loss ($config); exp dir: $exp_dir;" \
    "stages $stage..$stop_stage"
mkdir -p "$exp_dir"
run_stage 0 "$data_dir/.stage0.done" "prepare manifests from $timit_dir -> $manifest_dir" stage0
run_stage 1 "$data_dir/.stage1.done" "fbank features + CMVN -> $fbank_dir" stage1
run_stage 2 "$data_dir/.stage2.$loss.done" "phone lang dir + graphs ($loss) -> $lang_dir" stage2
if [[ "$loss" == hmm ]]; then
    run_stage 3 "$gmm_dir/.stage3.done" "monophone GMM and its alignments -> $gmm_dir" stage3
elif [[ "$loss" == segmental ]]; then
    run_stage 3 "$data_dir/.stage3.frames.done" "per-frame phone labels -> $frames_dir" \
        stage3_frames
elif [[ "$loss" == attention ]]; then
    run_stage 3 "$text_lm_dir/.stage3.text.done" \
        "masked LM + transformer LM on the training text, soft labels -> $text_lm_dir" stage3_text
elif (( stage <= 3 && 3 <= stop_stage )); then
    echo "stage 3: the monophone GMM is for --loss hmm only: skipped"
fi
run_stage 4 "$exp_dir/.stage4.done" "train $config -> $exp_dir" stage4
run_stage 5 "$exp_dir/.stage5.done" "decode dev and test" stage5
run_stage 6 "$exp_dir/.stage6.done" "score PER (39 phones)" stage6
if (( stage <= 9 && 7 <= stop_stage )); then
    if [[ "$loss" == ctc || "$loss" == attention ]]; then
        run_stage 7 "$exp_dir/.stage7.done" "dev/test lattices with the HLG -> $exp_dir/lats" \
            stage7
        run_stage 8 "$exp_dir/.stage8.done" "phone 3-gram + LSTM LM on train -> $exp_dir/lm" \
            stage8
        run_stage 9 "$exp_dir/.stage9.done" \
            "3-gram lattice / LSTM-LM n-best rescoring, oracle -> $exp_dir/rescore" stage9
    else
        echo "stages 7-9 (lattice rescoring) are for --loss ctc and attention only: skipped"
    fi
fi
