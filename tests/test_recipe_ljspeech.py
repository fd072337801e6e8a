"""egs/ljspeech/run.sh --quick true: every stage on the real LJ Speech subset with tiny settings
(a tiny model, one epoch), then a rerun that skips every finished stage. Checks the outputs
each stage promises: both lang dirs (every LM word spelled, or listed as an OOV), the LMs'
perplexity table, both HLGs, both models' decode and rescoring results (WER per method).

Skipped with a printed reason without ../shared/data.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import recipe_wer, shared_data_dir

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "egs" / "ljspeech" / "run.sh"
MODELS = ("bpe", "phone")
#: the last stage the test runs (8: lattices, on-demand 4-gram and LSTM-LM rescoring, oracle;
#: 10: the attention models, baseline and distilled from each text teacher)
STOP = 11
TEACHERS = ("lm", "mlm", "mlm_ctx")


def _run(args: list[str], timeout: int = 1500) -> str:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", WFST_ASR_ROOT=str(ROOT))
    proc = subprocess.run(["bash", str(RECIPE), *args], env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout




@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    corpus = shared_data_dir() / "ljspeech_part1"
    root = tmp_path_factory.mktemp("ljspeech")
    args = ["--quick", "true", "--corpus-dir", str(corpus), "--data-dir", str(root / "data"),
            "--exp-dir", str(root / "exp"), "--stop-stage", str(STOP)]
    return root, args, _run(args)


def test_every_stage_runs(quick_run) -> None:
    root, _, out = quick_run
    for n in range(STOP + 1):
        assert f"stage {n}:" in out, out
    data, exp = root / "data", root / "exp"
    for m, lang in (("bpe", data / "lang_bpe_500"), ("phone", data / "lang_phone")):
        for f in ("HLG.fst", "G.fst", "lm.arpa", "4gram.arpa", "lm_eval.txt", "words.txt"):
            assert (lang / f).is_file(), lang / f
        decode = exp / f"ctc_{m}" / "decode" / "results.txt"
        for method in ("greedy", "hlg", "kaldi"):  # greedy BPE-CTC is read back as words
            if method == "greedy" and m == "phone":
                continue
            for split in ("dev", "test"):
                assert 0 <= recipe_wer(decode, method, split) <= 200
        if STOP >= 8:
            rescore = exp / f"ctc_{m}" / "rescore" / "results.txt"
            for method in ("lat1best", "4gram", "nnlm", "oracle"):
                recipe_wer(rescore, method, "test")
            assert recipe_wer(rescore, "oracle", "dev") <= recipe_wer(rescore, "lat1best", "dev")
    assert (data / "lm" / "nnlm" / "lm.pt").is_file()  # one LSTM LM: one vocabulary
    assert (data / "lang_phone" / "words.txt").read_bytes() == \
        (data / "lang_bpe_500" / "words.txt").read_bytes()
    table = (data / "lang_bpe_500" / "lm_eval.txt").read_text().splitlines()
    assert table[0].split("\t")[-1] == "ppl" and len(table) == 5  # 2 LMs x dev, test
    if STOP >= 10:  # text teachers, soft labels, attention models (words from the pieces)
        import torch

        for t in TEACHERS:
            assert (data / "lm" / "text_lm" / t / "textlm.pt").is_file()
            soft = torch.load(data / "fbank" / f"ljspeech_cuts_train.soft_{t}.pt",
                              weights_only=True)
            assert soft["k"] == 8 and len(soft["utts"]) > 200
            assert soft["context_tokens"] == (32 if t == "mlm_ctx" else 0)
        assert "pseudo-perplexity" in out
        # quick: one distilled model (the MLM with context), beam search only
        for name in ("attention_bpe", "attention_bpe_distill_mlm_ctx"):
            res = exp / name / "decode" / "results.txt"
            lms = ("fusion", "rescore_lm", "rescore_mlm") if name == "attention_bpe" else ()
            for method in ("beam", *lms):
                assert 0 <= recipe_wer(res, method, "test") <= 1000
        cfg = (exp / "attention_bpe_distill_mlm_ctx" / "config.json").read_text()
        assert "soft_mlm_ctx.pt" in cfg and '"distill_weight": 0.3' in cfg
    if STOP >= 11:  # DBD: the CTC model in the DBD graph, fine-tuned with G fixed / trained
        import torch

        # quick: G trained only, no decode of the CTC model in the DBD graph (CI time)
        for method in ("dbd", "dbd_4", "hlg"):
            for split in ("dev", "test"):
                assert 0 <= recipe_wer(exp / "dbd_phone" / "decode" / "results.txt", method,
                                       split) <= 200
        trained = torch.load(exp / "dbd_phone" / "averaged.pt", weights_only=False)
        assert "graph.lm.weight" in trained["criterion"]  # G's log-weights, trained
        assert not (exp / "dbd_phone_fixed").exists()


def test_every_lm_word_is_spelled_or_listed(quick_run) -> None:
    """The phone lexicon covers every word of the LM text but those listed as OOVs the G2P
    could not spell (its alphabet), which are counted; the BPE lexicon spells the same words."""
    root, _, _ = quick_run
    data = root / "data"
    lm_words = {w for ln in (data / "manifests" / "lm_text").read_text().splitlines()
                for w in ln.split()}
    def lex(path: Path) -> set[str]:
        return {ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()}
    phone, bpe = lex(data / "lang_phone" / "lexicon.txt"), lex(data / "lang_bpe_500" / "lexicon.txt")
    assert bpe == phone
    missing = lm_words - phone
    assert missing and all(not w.isascii() for w in missing), sorted(missing)[:10]
    oovs = set((data / "local" / "oovs.txt").read_text().split())
    assert missing <= oovs


def test_rerun_skips_finished_stages(quick_run) -> None:
    _, args, _ = quick_run
    assert _run(args).count("already done") == STOP + 1
