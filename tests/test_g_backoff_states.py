"""G without its back-off-only states (:func:`wfst_asr.graphs.lm.remove_backoff_only_states`).

kaldilm keeps a G state for every lower-order n-gram, also one left without successors by
pruning (its only arc is the back-off arc). Removing those states must not change G's weighted
language. Checked three ways on pruned LMs, for random word sequences (seen and unseen word
combinations) against the G that kaldilm wrote:

* the ARPA reading (``#0`` taken only when no word arc matches) gives the same score in both G,
  equal to the model's own back-off score (``NgramModel.sentence_log10_prob``);
* the log-semiring sum over every path of ``linear(words) o G`` (``#0`` as epsilon), computed
  here, is the same in both (paths correspond one to one);
* OpenFst's (kaldifst) tropical shortest path of that composition is the same in both
  (``g_path_cost`` of ``tests/test_lm.py``).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from wfst_asr.fsa import Fsa, load, read_fst
from wfst_asr.graphs.lm import arpa_to_fst, remove_backoff_only_states
from wfst_asr.graphs.ngram import NgramModel, estimate_ngram, read_arpa
from wfst_asr.graphs.ngram_prune import prune_ngram

try:
    from tests.test_lm import g_path_cost
except ImportError:  # pragma: no cover - run from inside tests/
    from test_lm import g_path_cost

WORDS = [f"w{i:02d}" for i in range(14)]
LN10 = math.log(10.0)


def corpus(seed: int, num: int = 400) -> list[list[str]]:
    """Sentences with some structure (a word often follows its predecessor in WORDS)."""
    rng = random.Random(seed)
    out = []
    for _ in range(num):
        w = rng.randrange(len(WORDS))
        sent = []
        for _ in range(rng.randint(1, 9)):
            sent.append(WORDS[w])
            w = (w + 1) % len(WORDS) if rng.random() < 0.6 else rng.randrange(len(WORDS))
        out.append(sent)
    return out


def write_words_txt(path: Path) -> dict[str, int]:
    """words.txt as lang.py writes it: <eps> 0, words, #0, <s>, </s>."""
    syms = ["<eps>"] + WORDS + ["#0", "<s>", "</s>"]
    path.write_text("".join(f"{s} {i}\n" for i, s in enumerate(syms)))
    return {s: i for i, s in enumerate(syms)}


def backoff_only(g: Fsa, backoff: int) -> torch.Tensor:
    """Mask of the non-start states whose only arc is a back-off arc."""
    src = g.arcs[:, 0].long()
    n_out = torch.bincount(src, minlength=g.num_states)
    n_bo = torch.bincount(src[g.labels == backoff], minlength=g.num_states)
    mask = (n_out == 1) & (n_bo == 1)
    mask[0] = False
    return mask


def arcs_by_state(g: Fsa) -> list[dict[int, tuple[int, float]]]:
    """``out[q][label] = (dst, score)`` (G is deterministic on its input labels)."""
    out: list[dict[int, tuple[int, float]]] = [{} for _ in range(g.num_states)]
    for (s, d, lab), sc in zip(g.arcs.tolist(), g.scores.tolist()):
        assert lab not in out[s], "G is not deterministic"
        out[s][lab] = (d, sc)
    return out


def phi_score(arcs: list[dict[int, tuple[int, float]]], ids: list[int], backoff: int) -> float:
    """Score of ``ids`` + ``</s>`` (the -1 arc) reading ``#0`` as a failure arc."""
    q, total = 0, 0.0
    for w in ids + [-1]:
        while w not in arcs[q]:
            q, sc = arcs[q][backoff]
            total += sc
        q, sc = arcs[q][w]
        total += sc
    return total


def log_sum_all_paths(arcs: list[dict[int, tuple[int, float]]], ids: list[int], backoff: int
                      ) -> float:
    """log of the sum of exp(score) over every path of G labelled ``ids`` then -1, with
    ``#0`` as epsilon (its closure is acyclic: back-off goes to shorter histories)."""
    def add(table: dict[int, float], q: int, v: float) -> None:
        table[q] = float(np.logaddexp(table.get(q, -math.inf), v))

    def closure(front: dict[int, float]) -> dict[int, float]:
        total = dict(front)
        while front:
            nxt: dict[int, float] = {}
            for q, v in front.items():
                if backoff in arcs[q]:
                    d, sc = arcs[q][backoff]
                    add(nxt, d, v + sc)
            for q, v in nxt.items():
                add(total, q, v)
            front = nxt
        return total

    cur = closure({0: 0.0})
    for w in ids + [-1]:
        step: dict[int, float] = {}
        for q, v in cur.items():
            if w in arcs[q]:
                d, sc = arcs[q][w]
                add(step, d, v + sc)
        cur = closure(step) if w != -1 else step
    assert cur, "no path"
    return float(np.logaddexp.reduce(list(cur.values())))


def sentences(model: NgramModel, seed: int, num: int) -> list[list[str]]:
    """Random sequences: some drawn from the training text's style, some uniform."""
    rng = random.Random(seed)
    out = [[], [WORDS[0]], [WORDS[3], WORDS[4], WORDS[5], WORDS[6]]]
    out += corpus(seed + 100, num // 2)
    out += [[rng.choice(WORDS) for _ in range(rng.randint(1, 10))] for _ in range(num // 2)]
    return out


def with_odd_backoffs(model: NgramModel, seed: int) -> NgramModel:
    """The model with a back-off weight (-0.05 .. -0.6) on every lower-order n-gram that has
    none (no successor): not normalised any more, but a valid ARPA model whose back-off-only
    G states have back-off arcs of non-zero weight (the pruned LMs give them weight 0)."""
    rng = np.random.default_rng(seed)
    bows = [b.copy() for b in model.backoffs]
    for b in bows[:-1]:
        none = np.isnan(b)
        b[none] = -rng.uniform(0.05, 0.6, int(none.sum()))
    return NgramModel(vocab=list(model.vocab), ngrams=model.ngrams,
                      log10_probs=model.log10_probs, backoffs=bows)


@pytest.mark.parametrize(("order", "threshold", "method", "odd"),
                         [(3, 2e-3, "kn", False), (4, 1e-3, "kn", False),
                          (3, 5e-3, "wb", False), (3, 2e-3, "kn", True),
                          (4, 1e-3, "wb", True)])
def test_removal_keeps_every_score(tmp_path: Path, order: int, threshold: float,
                                   method: str, odd: bool) -> None:
    full = estimate_ngram(corpus(order), order, method, vocab=WORDS)
    arpa = tmp_path / "lm.arpa"
    pruned = prune_ngram(full, threshold)
    (with_odd_backoffs(pruned, order) if odd else pruned).write_arpa(arpa)
    model = read_arpa(arpa)
    ids = write_words_txt(tmp_path / "words.txt")
    bo = ids["#0"]
    old = arpa_to_fst(arpa, tmp_path / "words.txt", tmp_path / "G_old.fst",
                      remove_backoff_only=False)
    new = arpa_to_fst(arpa, tmp_path / "words.txt", tmp_path / "G.fst")
    removed = backoff_only(old, bo)
    n_removed = int(removed.sum())
    assert n_removed > 0, "the pruned LM should leave back-off-only states"
    bo_scores = old.scores[(old.labels == bo) & removed[old.arcs[:, 0].long()]]
    if odd:  # removing these states moves a non-zero back-off weight onto the arcs into them
        assert int((bo_scores != 0).sum()) >= 3
    assert new.num_states == old.num_states - n_removed
    assert not backoff_only(new, bo).any()
    assert new.num_arcs == old.num_arcs - n_removed  # one back-off arc per removed state
    # the files hold the new G (G.fst without symbol tables, as kaldilm writes it)
    g_file = read_fst(tmp_path / "G.fst", acceptor=False)
    assert torch.equal(g_file.arcs, new.arcs) and torch.equal(g_file.scores, new.scores)
    assert torch.equal(g_file.aux_labels, new.aux_labels)
    assert not g_file.has_attr("labels_sym") and "w00" in new.aux_labels_sym
    g_pt = load(tmp_path / "G.pt")
    assert torch.equal(g_pt.arcs, new.arcs) and torch.equal(g_pt.scores, new.scores)

    a_old, a_new = arcs_by_state(old), arcs_by_state(new)
    for k, s in enumerate(sentences(model, order, 60)):
        w = [ids[x] for x in s]
        expected = LN10 * model.sentence_log10_prob(s)
        assert math.isclose(phi_score(a_old, w, bo), expected, rel_tol=1e-5, abs_tol=1e-4), s
        assert math.isclose(phi_score(a_new, w, bo), expected, rel_tol=1e-5, abs_tol=1e-4), s
        assert math.isclose(log_sum_all_paths(a_new, w, bo), log_sum_all_paths(a_old, w, bo),
                            rel_tol=1e-5, abs_tol=1e-4), s
        if k % 4 == 0:  # OpenFst is slower: every fourth sequence
            c_old = g_path_cost(tmp_path / "G_old.fst", w, bo)
            c_new = g_path_cost(tmp_path / "G.fst", w, bo)
            assert math.isclose(c_new, c_old, rel_tol=1e-5, abs_tol=1e-4), s
            assert -c_new >= expected - 1e-4, s  # the tropical best is at least the ARPA score


def test_unpruned_lm_is_unchanged(tmp_path: Path) -> None:
    arpa = tmp_path / "lm.arpa"
    estimate_ngram(corpus(7), 3, vocab=WORDS).write_arpa(arpa)
    write_words_txt(tmp_path / "words.txt")
    old = arpa_to_fst(arpa, tmp_path / "words.txt", remove_backoff_only=False)
    new = arpa_to_fst(arpa, tmp_path / "words.txt")
    assert new.num_states == old.num_states - int(backoff_only(old, len(WORDS) + 1).sum())


def test_chains_start_final_and_loops() -> None:
    """Hand-made G (label 9 = #0): 0 -a-> 1 (bo-only) -#0-> 2 (bo-only) -#0-> 3 (unigram);
    4 is bo-only but final (kept); 5 -#0-> 6 -#0-> 5 is a back-off loop (kept); the start
    state 0 is kept even with only a back-off arc."""
    arcs = torch.tensor([
        [0, 1, 1], [0, 4, 2], [0, 5, 3],
        [1, 2, 9],
        [2, 3, 9],
        [3, 3, 1], [3, 7, -1],
        [4, 3, 9], [4, 7, -1],
        [5, 6, 9],
        [6, 5, 9],
    ], dtype=torch.int32)
    scores = torch.tensor([-1.0, -2.0, -3.0, -0.5, -0.25, -4.0, -0.125, -0.75, -5.0, 0.0, 0.0])
    aux = torch.where(arcs[:, 2] == 9, 0, arcs[:, 2])
    g = Fsa(arcs, scores, num_states=8, aux_labels=aux)
    g.labels_sym = "kept"
    out = remove_backoff_only_states(g, 9)
    # states 1 and 2 go; 0,3,4,5,6,7 -> 0,1,2,3,4,5
    assert out.num_states == 6 and out.labels_sym == "kept"
    got = sorted(zip(out.arcs.tolist(), out.scores.tolist(), out.aux_labels.tolist()))
    assert got == sorted([
        ([0, 1, 1], -1.75, 1), ([0, 2, 2], -2.0, 2), ([0, 3, 3], -3.0, 3),
        ([1, 1, 1], -4.0, 1), ([1, 5, -1], -0.125, -1),
        ([2, 1, 9], -0.75, 0), ([2, 5, -1], -5.0, -1),
        ([3, 4, 9], 0.0, 0), ([4, 3, 9], 0.0, 0),
    ])
    # nothing to remove: the same object back; an acceptor works too
    assert remove_backoff_only_states(out, 9) is out
    acc = Fsa(torch.tensor([[0, 1, 9], [1, 2, 5], [2, 3, -1]], dtype=torch.int32),
              torch.tensor([-1.0, -2.0, 0.0]), num_states=4)
    acc_out = remove_backoff_only_states(Fsa(torch.tensor(
        [[0, 1, 5], [1, 2, 9], [2, 3, 5], [3, 4, -1]], dtype=torch.int32),
        torch.tensor([-1.0, -2.0, -3.0, 0.0]), num_states=5), 9)
    assert acc_out.arcs.tolist() == [[0, 1, 5], [1, 2, 5], [2, 3, -1]]
    assert acc_out.scores.tolist() == [-3.0, -3.0, 0.0]
    assert remove_backoff_only_states(acc, 9) is acc  # the start state stays
