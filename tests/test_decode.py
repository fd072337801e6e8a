"""Tests of wfst_asr.decode: greedy CTC, the engine's 1-best, and the kaldi-decoder backend.

References: an explicit Python loop for greedy CTC; the word sequences that fake network
outputs spell; ctc_topo (whose best path is the greedy one); and each backend for the other.
"""

from __future__ import annotations

import random

import pytest
import torch

from wfst_asr.decode import greedy_ctc, kaldi_ctc_graph, kaldi_one_best, one_best
from wfst_asr.fsa import Fsa, SymbolTable
from wfst_asr.graphs import ctc_topo
from wfst_asr.graphs.compile import compile_graph

# prefix-free pronunciations, so a token sequence has one segmentation into words
LEXICON = "AB a b\nBA b a\nC c\nDE d e\nECC e c c\n"
WORDS = ["AB", "BA", "C", "DE", "ECC"]
SENTS = [["AB", "C"], ["BA", "DE", "C"], ["C", "ECC", "AB"], ["DE", "BA"], ["ECC"],
         ["AB", "BA", "C", "DE"], ["C", "C", "ECC"]]


@pytest.fixture(name="one_thread", autouse=True)
def one_thread_fixture():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(name="lang", scope="module")
def lang_fixture(tmp_path_factory):
    """(HLG, tokens, words, lexicon dict, V = number of network outputs) of a tiny lang dir."""
    from wfst_asr.graphs import lang, lm
    from wfst_asr.graphs.ngram import estimate_ngram

    d = tmp_path_factory.mktemp("lang")
    (d / "lexicon.txt").write_text(LEXICON)
    lang.prepare_lang(d, d / "lexicon.txt", tokens=["a", "b", "c", "d", "e"])
    estimate_ngram(SENTS, 2).write_arpa(d / "lm.arpa")
    lm.arpa_to_fst(d / "lm.arpa", d / "words.txt", out_path=d / "G.fst")
    hlg, _ = compile_graph(d, kind="HLG", topo="ctc")
    tokens = SymbolTable.from_file(d / "tokens.txt")
    words = SymbolTable.from_file(d / "words.txt")
    lex = {ln.split()[0]: ln.split()[1:] for ln in LEXICON.splitlines()}
    return hlg, tokens, words, lex, int(tokens["#0"]), d


def _spell(token_ids: list[int], rng: random.Random) -> list[int]:
    """CTC frames: a blank, then each token for 1-3 frames followed by a blank."""
    frames = [0]
    for t in token_ids:
        frames += [t] * rng.randint(1, 3) + [0]
    return frames


def _batch(sentences: list[list[str]], lang, seed: int = 0, noise: float = 0.0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs [B, T, V] spelling the sentences (0 for the intended output, -8 for the others,
    plus Gaussian noise of std ``noise``, log_softmax) and their lengths."""
    _hlg, tokens, _words, lex, V, _d = lang
    rng = random.Random(seed)
    frames = [_spell([int(tokens[p]) for w in s for p in lex[w]], rng) for s in sentences]
    T = max(len(f) for f in frames)
    x = torch.full((len(frames), T, V), -8.0)
    gen = torch.Generator().manual_seed(seed)
    for b, f in enumerate(frames):
        x[b, torch.arange(len(f)), torch.tensor(f)] = 0.0
    x = x + noise * torch.randn(x.shape, generator=gen)
    return x.log_softmax(-1), torch.tensor([len(f) for f in frames])


def _greedy_loop(log_probs: torch.Tensor, lens: torch.Tensor) -> list[list[int]]:
    out = []
    for b in range(log_probs.shape[0]):
        seq, prev = [], None
        for t in range(int(lens[b])):
            k = int(log_probs[b, t].argmax())
            if k != prev and k != 0:
                seq.append(k)
            prev = k
        out.append(seq)
    return out


def test_greedy_ctc_equals_loop() -> None:
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(6, 30, 5, generator=g).log_softmax(-1)
    lens = torch.tensor([30, 1, 0, 17, 29, 8])
    assert greedy_ctc(lp, lens) == _greedy_loop(lp, lens)
    # repeats merge unless separated by a blank; frames past the length are ignored
    lp = torch.full((1, 7, 3), -5.0)
    for t, k in enumerate([1, 1, 0, 1, 2, 2, 1]):
        lp[0, t, k] = 0.0
    assert greedy_ctc(lp, [7]) == [[1, 1, 2, 1]]
    assert greedy_ctc(lp, [5]) == [[1, 1, 2]]
    with pytest.raises(ValueError):
        greedy_ctc(lp, [8])


@pytest.mark.parametrize("modified", [False, True])
def test_one_best_ctc_topo_is_greedy(modified: bool) -> None:
    g = torch.Generator().manual_seed(2)
    lp = torch.randn(8, 40, 6, generator=g).log_softmax(-1)
    lens = torch.tensor([40, 33, 12, 40, 5, 27, 1, 38])
    want = greedy_ctc(lp, lens)
    topo = ctc_topo(5, modified=modified)
    if not modified:  # the modified topology merges repeats that greedy CTC keeps apart
        assert one_best(topo, lp, lens) == want
        assert kaldi_one_best(topo, lp, lens) == want
    else:
        assert one_best(topo, lp, lens) == kaldi_one_best(topo, lp, lens)


def test_hlg_decodes_spelled_words(lang) -> None:
    hlg, _tokens, words, _lex, _V, d = lang
    lp, lens = _batch(SENTS, lang, seed=3)
    want = [[int(words[w]) for w in s] for s in SENTS]
    assert one_best(hlg, lp, lens) == want
    assert kaldi_one_best(hlg, lp, lens) == want
    # from the HLG.fst file, and a graph converted once
    assert kaldi_one_best(d / "HLG.fst", lp, lens) == want
    assert kaldi_one_best(kaldi_ctc_graph(hlg), lp, lens) == want
    # a batch of one, padded frames ignored
    assert one_best(hlg, lp[1:2], lens[1:2]) == want[1:2]


def test_backends_agree_on_noisy_outputs(lang) -> None:
    hlg, _tokens, words, _lex, _V, _d = lang
    rng = random.Random(4)
    sents = [[rng.choice(WORDS) for _ in range(rng.randint(1, 6))] for _ in range(20)]
    lp, lens = _batch(sents, lang, seed=5, noise=4.0)
    for lm_scale in (1.0, 0.5):
        a = one_best(hlg, lp, lens, lm_scale=lm_scale)
        b = kaldi_one_best(hlg, lp, lens, lm_scale=lm_scale)
        agree = sum(x == y for x, y in zip(a, b)) / len(a)
        print(f"lm_scale={lm_scale}: backends agree on {agree:.0%} of {len(a)} utterances")
        assert agree >= 0.95
    # the noise is strong enough that some outputs are not the reference
    ref = [[int(words[w]) for w in s] for s in sents]
    assert any(x != r for x, r in zip(a, ref))


def test_lm_scale_matters(lang) -> None:
    hlg, *_ = lang
    g = torch.Generator().manual_seed(6)
    lp = (0.5 * torch.randn(10, 30, lang[4], generator=g)).log_softmax(-1)
    lens = torch.full((10,), 30)
    lo = one_best(hlg, lp, lens, lm_scale=0.01)
    hi = one_best(hlg, lp, lens, lm_scale=20.0)
    assert lo != hi
    assert kaldi_one_best(hlg, lp, lens, lm_scale=20.0) == hi


def _brute_force_penalised_ctc(lp: torch.Tensor, n: int, penalty: float) -> list[int]:
    """Best collapsed sequence over all V**n frame labellings, each scored as the sum of its
    frame log-probs minus ``penalty`` per token of its collapsed sequence (explicit search)."""
    import itertools

    V = lp.shape[-1]
    best, best_seq = -float("inf"), []
    for frames in itertools.product(range(V), repeat=n):
        seq = [s for i, s in enumerate(frames) if s != 0 and (i == 0 or frames[i - 1] != s)]
        total = sum(float(lp[t, s]) for t, s in enumerate(frames)) - penalty * len(seq)
        if total > best:
            best, best_seq = total, seq
    return best_seq


@pytest.mark.parametrize("penalty", [-3.0, -0.5, 0.0, 0.7, 2.5])
def test_word_penalty_against_brute_force(penalty: float) -> None:
    g = torch.Generator().manual_seed(11)
    lp = (1.5 * torch.randn(4, 6, 3, generator=g)).log_softmax(-1)
    lens = torch.tensor([6, 5, 6, 3])
    want = [_brute_force_penalised_ctc(lp[b], int(n), penalty) for b, n in enumerate(lens)]
    topo = ctc_topo(2)
    for output_beam in (50.0, 0.0):  # a real lattice, and Viterbi back-pointers only
        assert one_best(topo, lp, lens, word_penalty=penalty, search_beam=50.0,
                        output_beam=output_beam) == want
    assert kaldi_one_best(topo, lp, lens, word_penalty=penalty, beam=50.0) == want


def test_word_penalty_moves_word_count(lang) -> None:
    hlg, *_ = lang
    g = torch.Generator().manual_seed(6)
    lp = (0.5 * torch.randn(10, 30, lang[4], generator=g)).log_softmax(-1)
    lens = torch.full((10,), 30)
    counts = []
    for wp in (-4.0, 0.0, 4.0):
        a = one_best(hlg, lp, lens, word_penalty=wp)
        assert a == kaldi_one_best(hlg, lp, lens, word_penalty=wp)
        counts.append(sum(map(len, a)))
    assert counts[0] > counts[1] > counts[2]
    with pytest.raises(ValueError, match="aux_labels"):
        one_best(Fsa(hlg.arcs, hlg.scores, num_states=hlg.num_states), lp, lens,
                 word_penalty=1.0)
