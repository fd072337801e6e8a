"""HmmLoss (forward / Viterbi / CE), viterbi_align and pdf_topo against references written here.

References (plain Python, no engine):

* ``graph_paths``: every complete path of a tiny training graph through exactly T frames,
  enumerated by depth-first search; the forward total is their log-sum, the Viterbi total and
  alignment those of the best one;
* ``kaldi_hmm_paths``: the HMM state sequences of a transcript straight from the Kaldi
  topology's definition (durations of each HMM state, transition probabilities as written in
  the topology text, monophone pdf numbering ``(phone - 1) * classes + class``), which checks
  the frame-synchronous H built by ``pdf_topo`` from kaldi-hmm-gmm's TransitionModel.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests.reference import graph_paths
from wfst_asr.graphs import HmmTrainingGraphCompiler, hmm_topo, make_topology, pdf_topo
from wfst_asr.losses import (
    HmmLoss,
    alignments_from_transition_ids,
    frame_ce_loss,
    min_frames,
    viterbi_align,
)

f64 = torch.float64


# ---------------------------------------------------------------------------- references


def scored(paths, lp: torch.Tensor) -> list[tuple[tuple[int, ...], float]]:
    return [(labs, w + sum(float(lp[t, o]) for t, o in enumerate(labs))) for labs, w in paths]


def logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def compositions(total: int, parts: int):
    """Every way of writing ``total`` as ``parts`` positive integers (in order)."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        b = (0,) + cuts + (total,)
        yield [b[i + 1] - b[i] for i in range(parts)]


def kaldi_hmm_paths(name: str, phones: list[int], T: int) -> list[tuple[tuple[int, ...], float]]:
    """(output ids, log transition prob) of every state sequence of ``phones`` in T frames.

    hmm-1state: 1 state, loop 0.5 / forward 0.5; hmm-3state: 3 states, loop 0.75 / forward
    0.25; chain: first frame pdf class 0, later frames pdf class 1, 0.5 each. A state's frames
    are its forward transition (entering the next state) and its self-loops; pdf id of
    (phone, class) = (phone - 1) * classes + class; output id = pdf id + 1.
    """
    n_states, classes = {"hmm-1state": (1, 1), "hmm-3state": (3, 3), "chain": (1, 2)}[name]
    loop, fwd = {"hmm-1state": (0.5, 0.5), "hmm-3state": (0.75, 0.25), "chain": (0.5, 0.5)}[name]
    out = []
    for durs in compositions(T, len(phones) * n_states) if phones else []:
        labels, score = [], 0.0
        for i, k in enumerate(durs):
            p, j = phones[i // n_states], i % n_states
            base = (p - 1) * classes
            if name == "chain":
                labels += [base + 1] + [base + 2] * (k - 1)
            else:
                labels += [base + j + 1] * k
            score += math.log(fwd) + (k - 1) * math.log(loop)
        out.append((tuple(labels), score))
    return out


def rand_lp(T: int, V: int, seed: int, B: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, V, generator=g, dtype=f64).log_softmax(-1)


TEXTS = [[1, 2], [2, 2], [1]]


# ---------------------------------------------------------------------------- forward / viterbi
@pytest.mark.parametrize("n", [1, 3])
def test_forward_and_viterbi_equal_enumeration(n):
    H = hmm_topo(2, n, math.log(0.4))
    graphs = HmmTrainingGraphCompiler(H).compile(TEXTS)
    V = 2 * n + 1
    for T in (2 * n, 2 * n + 2):
        lp = rand_lp(T, V, seed=T + n, B=len(TEXTS))
        lens = torch.full((len(TEXTS),), T)
        fwd, _ = HmmLoss(H, reduction="none", use_double_scores=True)(lp, lens, TEXTS)
        vit, _ = HmmLoss(H, "viterbi", reduction="none", use_double_scores=True)(lp, lens, TEXTS)
        ali = viterbi_align(graphs, lp, lens)
        for i in range(len(TEXTS)):
            paths = scored(graph_paths(graphs[i], T), lp[i])
            assert paths, (n, T, i)
            assert float(fwd[i]) == pytest.approx(-logsumexp([s for _, s in paths]), abs=1e-9)
            best_labels, best = max(paths, key=lambda p: p[1])
            assert float(vit[i]) == pytest.approx(-best, abs=1e-9)
            assert ali[i].tolist() == list(best_labels)


@pytest.mark.parametrize("name", ["hmm-1state", "hmm-3state", "chain"])
def test_kaldi_topologies_match_hmm_definition(name):
    """pdf_topo of a Kaldi topology: totals and best paths equal those of the HMM definition,
    and the training graphs have exactly the HMM's label sequences and scores."""
    topo = make_topology(name, 3)
    H = pdf_topo(topo)
    assert H.labels.max() == topo.num_pdfs and not bool((H.labels == 0).any())
    texts = [[1, 3], [2, 2], [3]]
    graphs = HmmTrainingGraphCompiler(H).compile(texts)
    V = topo.num_pdfs + 1
    n = 3 if name == "hmm-3state" else 1
    for T in (2 * n, 2 * n + 2):
        lp = rand_lp(T, V, seed=T, B=len(texts))
        lens = torch.full((len(texts),), T)
        fwd, info = HmmLoss(topo, reduction="none", use_double_scores=True)(lp, lens, texts)
        assert info["num_excluded"] == 0
        ali = viterbi_align(graphs, lp, lens)
        for i, ph in enumerate(texts):
            ref = kaldi_hmm_paths(name, ph, T)
            got = sorted(graph_paths(graphs[i], T))
            assert [labs for labs, _ in got] == [labs for labs, _ in sorted(ref)]
            assert [w for _, w in got] == pytest.approx([w for _, w in sorted(ref)], abs=1e-6)
            paths = scored(ref, lp[i])  # H's scores are float32: 1e-6
            assert float(fwd[i]) == pytest.approx(-logsumexp([s for _, s in paths]), abs=1e-6)
            assert ali[i].tolist() == list(max(paths, key=lambda p: p[1])[0])


@pytest.mark.parametrize("mode", ["forward", "viterbi"])
def test_gradcheck(mode):
    H = hmm_topo(2, 2, math.log(0.3))
    loss = HmmLoss(H, mode=mode, use_double_scores=True)
    lp = rand_lp(6, 5, seed=7, B=2).requires_grad_(True)
    lens = torch.tensor([6, 5])
    assert torch.autograd.gradcheck(lambda x: loss(x, lens, [[1, 2], [2]])[0], (lp,))


def test_forward_gradient_is_state_posteriors():
    """d loss / d log_probs = -(state occupation posteriors): -1 per frame in total."""
    H = hmm_topo(3, 3, math.log(0.5))
    lp = rand_lp(12, 10, seed=3, B=2).requires_grad_(True)
    loss, _ = HmmLoss(H, use_double_scores=True)(lp, torch.tensor([12, 9]), [[1, 3], [2, 1]])
    loss.backward()
    s = lp.grad.sum(-1)
    torch.testing.assert_close(s[0], torch.full((12,), -1.0, dtype=f64))
    torch.testing.assert_close(s[1, :9], torch.full((9,), -1.0, dtype=f64))
    assert bool((lp.grad[1, 9:] == 0).all())


# ---------------------------------------------------------------------------- cross-entropy
def test_ce_with_self_alignment_and_given_alignments():
    H = hmm_topo(2, 2, math.log(0.4))
    texts = [[1, 2], [2]]
    lens = torch.tensor([7, 5])
    lp = rand_lp(7, 5, seed=11, B=2).requires_grad_(True)
    graphs = HmmTrainingGraphCompiler(H).compile(texts)
    loss, info = HmmLoss(H, mode="ce")(lp, lens, texts)
    want = 0.0
    for i in range(2):
        best = max(scored(graph_paths(graphs[i], int(lens[i])), lp[i].detach()),
                   key=lambda p: p[1])[0]
        want -= sum(float(lp[i, t, o].detach()) for t, o in enumerate(best))
    assert float(loss.detach()) == pytest.approx(want, abs=1e-9)
    assert info["aligned_frames"] == 12 and info["frames"] == 12
    loss.backward()
    assert float(lp.grad.sum()) == pytest.approx(-12.0)
    # given alignments (-1 = no target), frames past lens ignored
    ali = torch.tensor([[1, 1, 2, -1, 3, 4, 4], [3, 4, 4, 4, 4, 2, 2]])
    lp = lp.detach()
    got, info = HmmLoss(H, mode="ce", reduction="none")(lp, lens, None, ali)
    want = [-sum(float(lp[0, t, o]) for t, o in enumerate(ali[0].tolist()) if o >= 0),
            -sum(float(lp[1, t, o]) for t, o in enumerate(ali[1].tolist()[:5]))]
    torch.testing.assert_close(got, torch.tensor(want, dtype=f64))
    assert info["aligned_frames"] == 11
    torch.testing.assert_close(frame_ce_loss(lp, ali, lens, "mean"),
                               torch.tensor(sum(want) / 11, dtype=f64))


def test_alignments_from_transition_ids():
    topo = make_topology("hmm-3state", 2)
    tid2pdf = topo.tid2pdf.tolist()
    tids = [[2, 1, 4, 6, 5], [8, 7]]
    got = alignments_from_transition_ids(tids, topo)
    assert got.tolist() == [[tid2pdf[t] + 1 for t in tids[0]],
                            [tid2pdf[8] + 1, tid2pdf[7] + 1, -1, -1, -1]]
    assert alignments_from_transition_ids(tids, topo, subsampling=2).tolist()[0] == \
        [tid2pdf[t] + 1 for t in (2, 4, 5)]


# ---------------------------------------------------------------------------- infeasible
@pytest.mark.parametrize("mode", ["forward", "viterbi", "ce"])
def test_infeasible_utterances_excluded(mode):
    """Too few frames for the transcript (3 states per phone), or frames for an empty one:
    found before the loss (none gets as far as a non-finite total)."""
    H = hmm_topo(3, 3, math.log(0.5))
    texts = [[1, 2], [1, 2, 3], [3], [], [], [2]]
    lens = torch.tensor([8, 8, 2, 4, 0, 3])  # needs 6, 9, 3, exactly 0, exactly 0, 3
    graphs = HmmTrainingGraphCompiler(H).compile(texts)
    assert min_frames(graphs).tolist() == [6, 9, 3, 0, 0, 3]
    x = torch.randn(6, 8, 10, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss, info = HmmLoss(H, mode=mode, reduction="none")(x.log_softmax(-1), lens, texts)
    assert info["excluded"] == [1, 2, 3] and info["num_excluded"] == 3
    assert info["num_nonfinite"] == 0 and info["frames"] == 8 + 0 + 3
    assert bool((loss[1:4] == 0).all()) and bool(torch.isfinite(loss).all())
    d = loss.detach()
    assert float(d[0]) > 0 and float(d[5]) > 0 and float(d[4]) == 0
    loss.sum().backward()
    assert bool(torch.isfinite(x.grad).all())
    assert bool((x.grad[1:5] == 0).all()) and bool((x.grad[5, 3:] == 0).all())
    # nothing feasible: a zero loss that still backpropagates
    y = torch.randn(1, 2, 10, requires_grad=True)
    loss, info = HmmLoss(H, mode=mode)(y, torch.tensor([2]), [[1]])
    assert float(loss.detach()) == 0 and info["excluded"] == [0]
    loss.backward()
    assert bool((y.grad == 0).all())


@pytest.mark.parametrize("mode", ["forward", "viterbi", "ce"])
def test_nonfinite_total_dropped(mode):
    """Feasible by length, but every path has a -inf log-prob: dropped after the total, with
    a zero (finite) gradient; "mean" divides by the kept utterances' frames."""
    H = hmm_topo(2, 1)
    lp = rand_lp(5, 3, seed=1, B=2).requires_grad_(True)
    x = torch.cat([lp[:1], lp[1:].index_fill(-1, torch.tensor([2]), -math.inf)])
    loss, info = HmmLoss(H, mode=mode, reduction="mean")(x, torch.tensor([5, 4]), [[1], [2]])
    assert info["excluded"] == [1] and info["num_nonfinite"] == 1 and info["frames"] == 5
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    assert bool(torch.isfinite(lp.grad).all()) and bool((lp.grad[1] == 0).all())
    assert float(lp.grad[0].sum()) == pytest.approx(-1.0)  # -1 per frame, / 5 frames


def test_min_frames_kaldi_topologies():
    texts = [[1, 2, 2], [3]]
    for name, per_phone in (("hmm-1state", 1), ("hmm-3state", 3), ("chain", 1)):
        graphs = HmmTrainingGraphCompiler(pdf_topo(make_topology(name, 3))).compile(texts)
        assert min_frames(graphs).tolist() == [3 * per_phone, per_phone]


def test_errors():
    H = hmm_topo(2, 1)
    with pytest.raises(ValueError, match="outputs"):
        HmmLoss(H)(torch.zeros(1, 4, 5), torch.tensor([4]), [[1]])
    with pytest.raises(ValueError, match="mode"):
        HmmLoss(H, mode="mmi")
    with pytest.raises(ValueError, match="HMM topology"):
        pdf_topo(make_topology("ctc", 2))


def test_on_device(device):
    """Same losses and alignments on every available device (CUDA when present)."""
    H = hmm_topo(2, 2, math.log(0.4))
    lp = rand_lp(7, 5, seed=21, B=2)
    lens = torch.tensor([7, 5])
    texts = [[1, 2], [2]]
    graphs = HmmTrainingGraphCompiler(H).compile(texts)
    want_ali = viterbi_align(graphs, lp, lens)
    got_ali = viterbi_align(graphs, lp.to(device), lens)
    assert got_ali.device.type == torch.device(device).type
    assert got_ali.cpu().tolist() == want_ali.tolist()
    for mode in ("forward", "viterbi", "ce"):
        want, _ = HmmLoss(H, mode=mode, reduction="none")(lp, lens, texts)
        got, _ = HmmLoss(H, mode=mode, reduction="none")(lp.to(device), lens, texts)
        torch.testing.assert_close(got.cpu(), want)
