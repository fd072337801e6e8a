"""HMM / LF-MMI from a configuration: the phone LM acceptor P (``ngram_acceptor``), HCLG
relabelled to network columns (``pdf_output_graph``), the ``hmm`` / ``mmi`` loss builders of
``wfst_asr.train.build``, LF-MMI's invariance to per-frame output shifts (why log-softmax
outputs are fine) and HmmLoss's prior correction.

References written here: an ARPA reader with the back-off rule over plain dicts, and a Viterbi
recursion over the arcs of a graph.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from conftest import timit_conf

from wfst_asr.decode import kaldi_one_best, one_best
from wfst_asr.fsa import DenseFsaVec, get_tot_scores, intersect_dense
from wfst_asr.graphs import pdf_topo
from wfst_asr.graphs.compile import compile_graph
from wfst_asr.graphs.lang import prepare_lang, write_lexicon
from wfst_asr.graphs.lm import arpa_to_fst, ngram_acceptor
from wfst_asr.graphs.ngram import estimate_ngram
from wfst_asr.graphs.topo import make_topology, pdf_output_graph
from wfst_asr.graphs.training import MmiTrainingGraphCompiler
from wfst_asr.losses import HmmLoss, MmiLoss, frame_ce_loss, viterbi_align
from wfst_asr.train import apply_overrides, load_config
from wfst_asr.train.build import build_model_and_loss
from wfst_asr.train.criteria import loss_topology

PHONES = ["a", "b", "c"]


def _sentences(n: int, seed: int, vocab=PHONES, max_len: int = 6) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(vocab) for _ in range(rng.randint(1, max_len))] for _ in range(n)]


# ---------------------------------------------------------------------------- references
def _read_arpa_dicts(path) -> tuple[dict[tuple, float], dict[tuple, float], int]:
    """``(log10 probs, log10 back-offs, order)`` keyed by word tuples."""
    probs, bows, order, section = {}, {}, 0, 0
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.endswith("-grams:"):
            section = int(line[1:line.index("-")])
            order = max(order, section)
            continue
        if not line or line.startswith(("\\", "ngram")) or section == 0:
            continue
        f = line.split()
        words = tuple(f[1:1 + section])
        probs[words] = float(f[0])
        if len(f) > 1 + section:
            bows[words] = float(f[1 + section])
    return probs, bows, order


def _ref_log10(probs, bows, order, word: str, hist: tuple) -> float:
    hist = hist[max(0, len(hist) - order + 1):]
    if hist + (word,) in probs:
        return probs[hist + (word,)]
    return bows.get(hist, 0.0) + _ref_log10(probs, bows, order, word, hist[1:])


def _ref_sentence_ln(probs, bows, order, sent: list[str]) -> float:
    seq = ["<s>", *sent, "</s>"]
    return math.log(10) * sum(_ref_log10(probs, bows, order, seq[i], tuple(seq[:i]))
                              for i in range(1, len(seq)))


def _walk(P, labels: list[int]) -> float:
    """Score of the (unique) path of P reading ``labels`` then its final arc."""
    arcs, sc = P.arcs.tolist(), P.scores.tolist()
    out = {(s, lab): (d, w) for (s, d, lab), w in zip(arcs, sc)}
    state, total = 0, 0.0
    for lab in labels + [-1]:
        state, w = out[(state, lab)]
        total += w
    return total


def _viterbi(graph, col_of_label, x: torch.Tensor) -> float:
    """Best path score over ``x [T, V]`` of a graph whose arc label ``l >= 0`` reads column
    ``col_of_label(l)`` (one frame per arc), ending with a -1 arc after the last frame."""
    arcs, sc = graph.arcs.tolist(), graph.scores.tolist()
    best = {0: 0.0}
    for t in range(x.shape[0]):
        new: dict[int, float] = {}
        for (s, d, lab), w in zip(arcs, sc):
            if lab >= 0 and s in best:
                v = best[s] + w + float(x[t, col_of_label(lab)])
                if v > new.get(d, -math.inf):
                    new[d] = v
        best = new
    ends = [best[s] + w for (s, _d, lab), w in zip(arcs, sc) if lab == -1 and s in best]
    return max(ends, default=-math.inf)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(name="lang")
def lang_fixture(tmp_path):
    """A 3-phone lang dir (each phone its own word) with a bigram lm.arpa and G."""
    write_lexicon(tmp_path / "lexicon.txt", [(p, None, [p]) for p in PHONES])
    prepare_lang(tmp_path, tmp_path / "lexicon.txt", tokens=PHONES, sil_prob=0.0)
    estimate_ngram(_sentences(40, 1), 2, vocab=PHONES).write_arpa(tmp_path / "lm.arpa")
    arpa_to_fst(tmp_path / "lm.arpa", tmp_path / "words.txt", out_path=tmp_path / "G.fst")
    return tmp_path


def _cfg(name: str, lang, *overrides: str):
    return apply_overrides(load_config(name), [f"lang_dir={lang}", f"tokens={lang}/tokens.txt",
                                              "model.hidden=8", "model.num_layers=1",
                                              "train_cuts=", *overrides])


# ---------------------------------------------------------------------------- P
@pytest.mark.parametrize("order,method", [(1, "kneser_ney"), (2, "kneser_ney"),
                                          (3, "kneser_ney"), (3, "witten_bell")])
def test_ngram_acceptor_scores_are_the_backoff_probabilities(tmp_path, order, method):
    vocab = ["w", "x", "y", "z"]
    estimate_ngram(_sentences(30, order, vocab, 5), order, method,
                   vocab=vocab).write_arpa(tmp_path / "lm.arpa")
    table = {w: i + 1 for i, w in enumerate(vocab)}
    P = ngram_acceptor(tmp_path / "lm.arpa", table)
    probs, bows, n = _read_arpa_dicts(tmp_path / "lm.arpa")
    # deterministic, epsilon-free, a distribution out of every state (</s> included)
    assert not bool((P.labels == 0).any())
    keys = [(s, lab) for s, _d, lab in P.arcs.tolist()]
    assert len(set(keys)) == len(keys)
    src = P.arcs[:, 0].long()
    mass = torch.zeros(P.num_states, dtype=torch.float64).index_add_(
        0, src, P.scores.double().exp())
    assert torch.allclose(mass[:-1], torch.ones(P.num_states - 1, dtype=torch.float64),
                          atol=1e-5)
    for sent in _sentences(50, 99, vocab, 7) + [[]]:
        got = _walk(P, [table[w] for w in sent])
        assert got == pytest.approx(_ref_sentence_ln(probs, bows, n, sent), abs=1e-4)


def test_ngram_acceptor_from_tokens_file_and_errors(lang):
    P = ngram_acceptor(lang / "lm.arpa", lang / "tokens.txt")
    assert P.num_states == len(PHONES) + 2  # <s>, one per phone, final
    assert P.num_arcs == (len(PHONES) + 1) ** 2
    with pytest.raises(ValueError, match="not in the symbol table"):
        ngram_acceptor(lang / "lm.arpa", {"a": 1, "b": 2})


# ---------------------------------------------------------------------------- HCLG
@pytest.mark.parametrize("topo_name", ["hmm-1state", "hmm-3state", "chain"])
def test_pdf_output_graph_same_paths_as_hclg(lang, topo_name):
    hclg, _ = compile_graph(lang, kind="HCLG", topo=topo_name, out_dir=lang / topo_name)
    topo = make_topology(topo_name, len(PHONES))
    g = pdf_output_graph(hclg, topo.tid2pdf)
    assert int(g.labels.min()) == -1 and int(g.labels.max()) == topo.num_pdfs
    assert torch.equal(g.aux_labels, hclg.aux_labels) and torch.equal(hclg.labels.min(),
                                                                      torch.tensor(-1))
    gen = torch.Generator().manual_seed(0)
    T, V = 9, topo.num_pdfs + 1
    x = torch.randn(2, T, V, generator=gen).log_softmax(-1)
    segs = torch.tensor([[0, 0, T], [1, 0, T]], dtype=torch.int32)
    tot = get_tot_scores(intersect_dense(g, DenseFsaVec(x, segs)), log_semiring=False)
    tid2pdf = topo.tid2pdf.tolist()
    for b in range(2):
        want = _viterbi(hclg, lambda t: tid2pdf[t] + 1, x[b])
        assert float(tot[b]) == pytest.approx(want, abs=1e-3)
    # both decoders read graph label k from column k
    lens = torch.tensor([T, T - 2])
    assert one_best(g, x, lens) == kaldi_one_best(g, x, lens)
    bad = hclg.detach()
    bad.labels = torch.where(hclg.labels == 1, 0, hclg.labels)
    with pytest.raises(ValueError, match="epsilon"):
        pdf_output_graph(bad, topo.tid2pdf)


# ---------------------------------------------------------------------------- builders
def _batch(V_in: int = 80, B: int = 2, T: int = 60, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, T, V_in, generator=gen)
    return feats, torch.tensor([T, T - 9]), [[1, 2, 3, 1], [3, 3, 2]]


def test_hmm_builder_matches_hand_built_loss(lang):
    cfg = _cfg(timit_conf("hmm_fullsum_blstm"), lang)
    model, loss, table = build_model_and_loss(cfg)
    assert isinstance(loss, HmmLoss) and loss.mode == "forward" and loss.num_outputs == 4
    assert table == {"a": 1, "b": 2, "c": 3}
    feats, lens, texts = _batch()
    with torch.no_grad():
        lp, out_lens = model(feats, lens)
    got, info = loss(lp, out_lens, texts)
    assert loss.prior_scale == 0.3  # the config's prior correction, uniform prior at first
    ref, _ = HmmLoss(make_topology("hmm-1state", 3), prior_scale=0.3)(lp, out_lens, texts)
    assert info["num_excluded"] == 0 and float(got) == pytest.approx(float(ref), rel=1e-6)
    cfg = _cfg(timit_conf("hmm_fullsum_blstm"), lang, "loss.topology=hmm-3state", "loss.mode=viterbi",
               "subsampling=1")
    _, loss, _ = build_model_and_loss(cfg)  # num_classes 0: from the topology
    assert cfg.num_classes == 10 and loss.num_outputs == 10 and loss.mode == "viterbi"
    assert loss_topology(cfg.to_dict()).num_pdfs == 9


def test_builders_reject_bad_settings(lang):
    with pytest.raises(ValueError, match="num_classes=10"):
        build_model_and_loss(_cfg(timit_conf("hmm_fullsum_blstm"), lang, "loss.topology=hmm-3state",
                                  "num_classes=4"))
    with pytest.raises(ValueError, match="num_classes=7"):  # chain: 2 pdfs per phone
        build_model_and_loss(_cfg(timit_conf("mmi_blstm"), lang, "loss.topology=chain",
                                  "num_classes=4"))
    with pytest.raises(ValueError, match="topology must be one of"):
        build_model_and_loss(_cfg(timit_conf("hmm_fullsum_blstm"), lang, "loss.topology=ctc"))
    cfg = _cfg(timit_conf("mmi_blstm"), lang)
    cfg.loss_kwargs["leaky"] = 0.1
    with pytest.raises(ValueError, match="loss.leaky_hmm_coefficient"):
        build_model_and_loss(cfg)
    with pytest.raises(ValueError, match="unknown key loss.nope"):
        _cfg(timit_conf("mmi_blstm"), lang, "loss.nope=1")
    with pytest.raises(FileNotFoundError, match="nope.arpa"):
        build_model_and_loss(_cfg(timit_conf("mmi_blstm"), lang, "loss.phone_lm=nope.arpa"))


@pytest.mark.parametrize("topo_name", ["ctc", "chain"])
def test_mmi_builder_matches_hand_built_loss(lang, topo_name):
    topo = make_topology(topo_name, 3)
    V = 4 if topo.is_ctc else topo.num_pdfs + 1
    cfg = _cfg(timit_conf("mmi_blstm"), lang, f"loss.topology={topo_name}", f"num_classes={V}",
               "loss.ctc_weight=0.2", "loss.den_lm_scale=0.5")
    model, loss, _ = build_model_and_loss(cfg)
    assert isinstance(loss, MmiLoss) and loss.num_outputs == V
    P = ngram_acceptor(lang / "lm.arpa", lang / "tokens.txt")
    comp = MmiTrainingGraphCompiler(P, topo=topo.H if topo.is_ctc else pdf_topo(topo),
                                    lm_scale=0.5)
    ref_loss = MmiLoss(comp, leaky_hmm_coefficient=1e-5, ctc_weight=0.2)
    feats, lens, texts = _batch()
    with torch.no_grad():
        lp, out_lens = model(feats, lens)
    got, info = loss(lp, out_lens, texts)
    ref, ref_info = ref_loss(lp, out_lens, texts)
    assert info["num_excluded"] == 0
    assert float(got) == pytest.approx(float(ref), rel=1e-5)
    assert info["den"] == pytest.approx(ref_info["den"], rel=1e-5)


def test_mmi_invariant_to_per_frame_shifts(lang):
    """log_softmax adds a per-frame constant: LF-MMI's value and its gradient w.r.t. the raw
    outputs do not change (l2_regularize = 0)."""
    P = ngram_acceptor(lang / "lm.arpa", lang / "tokens.txt")
    loss_fn = MmiLoss(MmiTrainingGraphCompiler(P, topo="ctc"), leaky_hmm_coefficient=1e-3)
    gen = torch.Generator().manual_seed(3)
    x = (3 * torch.randn(2, 14, 4, generator=gen, dtype=torch.float64)).requires_grad_(True)
    lens, texts = torch.tensor([14, 11]), [[1, 2, 3], [2, 2]]
    shift = 5 * torch.randn(2, 14, 1, generator=gen, dtype=torch.float64)
    raw, _ = loss_fn(x, lens, texts)
    (g_raw,) = torch.autograd.grad(raw, x)
    for f in (lambda v: v.log_softmax(-1), lambda v: v + shift):
        val, _ = loss_fn(f(x), lens, texts)
        (g,) = torch.autograd.grad(val, x)
        assert float(val) == pytest.approx(float(raw), rel=1e-5)
        assert torch.allclose(g, g_raw, atol=1e-5)


# ---------------------------------------------------------------------------- prior correction
@pytest.mark.parametrize("mode", ["forward", "viterbi", "ce"])
def test_hmm_prior_correction(mode):
    topo = make_topology("hmm-1state", 3)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 10, 4, generator=gen, dtype=torch.float64).log_softmax(-1)
    lens, texts = torch.tensor([10, 7]), [[1, 2, 3], [3, 1]]
    loss_fn = HmmLoss(topo, mode=mode, prior_scale=0.7, prior_momentum=0.9)
    assert torch.allclose(loss_fn.log_prior[1:].exp(), torch.full((3,), 1 / 3,
                                                                  dtype=torch.float64))
    prior = torch.tensor([0.0, 0.6, 0.3, 0.1], dtype=torch.float64)
    loss_fn.log_prior.copy_(prior.clamp(min=1e-20).log())
    plain = HmmLoss(topo, mode=mode)
    # no update without gradients or in eval mode; the graph sees x - 0.7 log prior
    with torch.no_grad():
        got, _ = loss_fn(x, lens, texts)
    loss_fn.eval()
    got2, _ = loss_fn(x.clone().requires_grad_(True), lens, texts)
    loss_fn.train()
    assert torch.allclose(loss_fn.log_prior.exp(), prior)
    corrected = x - 0.7 * prior.clamp(min=1e-20).log()
    if mode == "ce":  # corrected scores align, the cross-entropy is on x
        ali = viterbi_align(plain.graphs(texts), corrected, lens)
        want = frame_ce_loss(x, ali, lens)
    else:
        want, _ = plain(corrected, lens, texts)
    assert float(got) == pytest.approx(float(want), rel=1e-9)
    assert float(got2) == pytest.approx(float(want), rel=1e-9)
    # a training step moves the prior towards the batch's mean posterior
    xg = x.clone().requires_grad_(True)
    loss_fn(xg, lens, texts)
    mask = torch.arange(10) < lens[:, None]
    mean = (x.exp() * mask[..., None]).sum((0, 1)) / mask.sum()
    assert torch.allclose(loss_fn.log_prior.exp(), 0.9 * prior + 0.1 * mean, atol=1e-12)
    assert float(mean.sum()) == pytest.approx(1.0)
