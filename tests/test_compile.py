"""Tests of wfst_asr.graphs.topo and wfst_asr.graphs.compile (LG, HLG, HCLG, compile_graph).

References: kaldifst's own composition of the hand-written L_disambig and G (no
determinization, disambiguation symbols skipped while enumerating), brute-force enumeration of
all paths with a bounded number of tokens, and hand computations.
"""

from __future__ import annotations

import math
import os
import time

import pytest
import torch

from wfst_asr import _kaldi
from wfst_asr.fsa import (
    DenseFsaVec,
    Fsa,
    from_kaldifst,
    from_openfst,
    intersect_dense_pruned,
    shortest_path,
    to_kaldifst,
    write_fst,
)
from wfst_asr.graphs.compile import (
    compile_graph,
    compile_hclg,
    compile_hlg,
    compile_lg,
    remove_input_epsilons,
)
from wfst_asr.graphs.topo import TOPOLOGIES, make_topology, pdf_to_tid_log_probs

TOKENS = "<blk> 0\na 1\nb 2\nc 3\n#0 4\n#1 5\n#2 6\n"
WORDS = "<eps> 0\nA 1\nAB 2\nC 3\nC2 4\n#0 5\n<s> 6\n</s> 7\n"
FTD, FWD = 4, 5  # ids of #0 in tokens.txt / words.txt
# A = a #1 (prefix of AB), AB = a b (cost 0.5), C = c #1, C2 = c #2 (homophones, cost 0.2)
L_TXT = """0 1 1 1 0
1 0 5 0 0
0 2 1 2 0.5
2 0 2 0 0
0 3 3 3 0
3 0 5 0 0
0 4 3 4 0.2
4 0 6 0 0
0 0 4 5 0
0
"""
# bigram-ish G over words with #0 (id 5) back-off arcs into the unigram state 1
G_TXT = """0 2 1 1.0
0 1 5 0.3
1 2 1 1.5
1 3 2 2.0
1 4 3 1.8
1 5 4 2.2
2 3 2 0.7
2 1 5 0.4
3 1 5 0.2
4 1 5 0.6
4 4 3 0.9
5 1 5 0.6
1 2.5
2 1.1
3 0.9
4 0.5
5 0.5
"""
MAX_TOKENS = 4


def _L() -> Fsa:
    return from_openfst(L_TXT, acceptor=False)


def _G() -> Fsa:
    return from_openfst(G_TXT, acceptor=True)


def _enumerate(fsa: Fsa, skip_in: int | None = None, skip_out: int | None = None,
               max_tokens: int = MAX_TOKENS) -> dict[tuple, float]:
    """(tokens, words) -> best total score over all paths with <= max_tokens tokens.

    Input labels 0 and >= ``skip_in`` are epsilons, output labels 0 and >= ``skip_out`` too.
    """
    arcs = fsa.arcs.tolist()
    aux = fsa.aux_labels.tolist() if fsa.has_attr("aux_labels") else [a[2] for a in arcs]
    sc = fsa.scores.tolist()
    out: dict[int, list[int]] = {}
    for i, (s, _d, _l) in enumerate(arcs):
        out.setdefault(s, []).append(i)
    best: dict[tuple, float] = {}

    def dfs(q: int, toks: tuple, words: tuple, score: float, depth: int) -> None:
        if depth > 40:
            return
        for i in out.get(q, []):
            _s, d, lab = arcs[i]
            if lab == -1:
                key = (toks, words)
                best[key] = max(best.get(key, -math.inf), score + sc[i])
                continue
            t2 = toks if lab == 0 or (skip_in is not None and lab >= skip_in) else toks + (lab,)
            w = aux[i]
            w2 = words if w == 0 or (skip_out is not None and w >= skip_out) else words + (w,)
            if len(t2) <= max_tokens:
                dfs(d, t2, w2, score + sc[i], depth + 1)

    dfs(0, (), (), 0.0, 0)
    return best


def _reference() -> dict[tuple, float]:
    """kaldifst's own L_disambig o G (not determinized), enumerated."""
    kf = _kaldi.kaldifst()
    fl, fg = to_kaldifst(_L()), to_kaldifst(_G())
    kf.arcsort(fl, sort_type="olabel")
    return _enumerate(from_kaldifst(kf.compose(fl, fg), acceptor=False), FTD, FWD)


def _assert_same(got: dict, want: dict, tol: float = 1e-2) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert abs(got[k] - v) < tol, (k, got[k], v)


def test_lg_paths_and_weights() -> None:
    LG = compile_lg(_L(), _G(), FTD, FWD)
    ref = _reference()
    _assert_same(_enumerate(LG), ref)
    # explicit check of one path: "a a b" = A AB: G 1.0 + 0.7 + final 0.9, L 0.5
    assert abs(ref[((1, 1, 2), (1, 2))] + (1.0 + 0.7 + 0.9 + 0.5)) < 1e-5
    assert int((LG.labels >= FTD).sum()) == 0
    assert int((LG.aux_labels >= FWD).sum()) == 0


def test_lg_deterministic_with_disambig() -> None:
    LG = compile_lg(_L(), _G(), FTD, FWD, keep_disambig=True)
    seen = set()
    for s, _d, lab in LG.arcs.tolist():
        if lab > 0:
            assert (s, lab) not in seen
            seen.add((s, lab))
    assert int((LG.labels == 0).sum()) == 0  # determinize_star removed epsilons
    assert int((LG.labels >= FTD).sum()) > 0  # #n still present
    # with disambiguation symbols skipped, the same language as the reference
    _assert_same(_enumerate(LG, FTD, FWD), _reference())


def test_remove_input_epsilons_small() -> None:
    # 0 -a-> 1 -eps:W-> 2 -b-> 3(final); 1 -c-> 2 ; eps:V at the start needs the forward rule
    fsa = from_openfst("0 1 0 9 0.5\n1 2 1 0 1\n2 3 0 7 0.25\n3 4 2 0 2\n2 4 3 0 1\n"
                       "4 5 1 0 0\n5\n", acceptor=False)
    out = remove_input_epsilons(fsa)
    assert int((out.labels == 0).sum()) == 0
    _assert_same(_enumerate(out), _enumerate(fsa), tol=1e-6)



def test_remove_input_epsilons_chain_and_rounds() -> None:
    # two epsilon arcs in a row (0 -a-> 1 -eps:W-> 2 -eps:V-> 3 -b-> 4), 2 also entered by c,
    # and a homophone-like fan-out 4 -eps:X-> 5, 4 -eps:Y-> 6 entered by a word-less arc
    fsa = from_openfst("0 1 1 0 0.5\n1 2 0 9 1\n0 2 3 0 0.25\n2 3 0 8 0.5\n3 4 2 0 2\n"
                       "4 5 0 7 0.1\n4 6 0 6 0.2\n5 7 1 0 0\n6 7 2 0 0.3\n7 0.5\n",
                       acceptor=False)
    out = remove_input_epsilons(fsa)
    assert int((out.labels == 0).sum()) == 0
    _assert_same(_enumerate(out, max_tokens=5), _enumerate(fsa, max_tokens=5), tol=1e-6)
    with pytest.raises(ValueError, match="cannot move the word"):
        # the only arc after the epsilon arc is final, the only one before already has a word
        remove_input_epsilons(from_openfst("0 1 1 5 0\n1 2 0 9 0\n2\n", acceptor=False))

def test_hlg_structure_and_paths() -> None:
    LG = compile_lg(_L(), _G(), FTD, FWD)
    HLG = compile_hlg(make_topology("ctc", FTD - 1), LG)
    final = HLG.num_states - 1
    assert bool(((HLG.labels == -1) == (HLG.arcs[:, 1] == final)).all())
    assert int(HLG.labels.max()) < FTD and int(HLG.aux_labels.max()) < FWD
    # every path of HLG whose frame labels are a CTC spelling has LG's score
    ref = _enumerate(LG)
    for toks in sorted({t for t, _w in ref if len(t) in (1, 3)}):
        got = _decode(HLG, toks)
        best_w = max((s, w) for (t, w), s in ref.items() if t == toks)
        assert abs(got[0] - best_w[0]) < 1e-3, toks
        assert got[1] == best_w[1]


def _ctc_frames(toks: tuple) -> list[int]:
    frames = []
    for i, t in enumerate(toks):
        if i and toks[i - 1] == t:
            frames.append(0)
        frames.append(t)
    return frames + [0]


def _decode(graph: Fsa, toks: tuple, V: int = FTD) -> tuple[float, tuple]:
    """Best (score, words) of graph on log-probs that spell ``toks`` (0 for the right label,
    -1000 otherwise)."""
    frames = _ctc_frames(toks)
    lp = torch.full((1, len(frames), V), -1000.0)
    for t, lab in enumerate(frames):
        lp[0, t, lab] = 0.0
    dense = DenseFsaVec(lp, torch.tensor([[0, 0, len(frames)]], dtype=torch.int32))
    lat = intersect_dense_pruned(graph, dense, 20.0, 8.0, 30, 10000)
    best = shortest_path(lat)
    words = tuple(w for w in best.aux_labels.tolist() if w > 0)
    return float(best.scores.sum()), words


def test_hlg_decodes_word_sequence() -> None:
    LG = compile_lg(_L(), _G(), FTD, FWD)
    for name in ("ctc", "ctc-modified"):
        HLG = compile_hlg(make_topology(name, FTD - 1), LG)
        # a | a b | c : C beats its homophone C2 (G 1.8+0.5 vs 2.2+0.5, L 0 vs 0.2)
        assert _decode(HLG, (1, 1, 2, 3))[1] == (1, 2, 3)
        assert _decode(HLG, (1, 2, 1))[1] == (2, 1)
        assert _decode(HLG, (3, 3))[1] == (3, 3)


def test_unknown_topology() -> None:
    with pytest.raises(ValueError, match="known topologies: ctc"):
        make_topology("hmm-5state", 3)
    with pytest.raises(ValueError, match="unknown topology"):
        compile_graph("/nonexistent", kind="HLG", topo="foo")
    with pytest.raises(ValueError, match="needs a CTC topology"):
        compile_graph("/nonexistent", kind="HLG", topo="chain")
    assert TOPOLOGIES == ("ctc", "ctc-modified", "hmm-1state", "hmm-3state", "chain")


def test_hmm_1state_by_hand() -> None:
    topo = make_topology("hmm-1state", 2)
    H = topo.H
    # Kaldi transition-ids: phone 1 -> tids 1 (self-loop), 2 (exit); phone 2 -> 3, 4
    assert topo.tid2pdf.tolist() == [-1, 0, 0, 1, 1] and topo.num_pdfs == 2
    half = math.log(0.5)
    want = {(0, 1, 2, 1, half), (0, 2, 4, 2, half), (1, 1, 1, 0, half), (2, 2, 3, 0, half),
            (1, 0, 0, 0, 0.0), (2, 0, 0, 0, 0.0), (0, 3, -1, -1, 0.0)}
    got = {(s, d, lab, a, round(x, 6)) for (s, d, lab), a, x in
           zip(H.arcs.tolist(), H.aux_labels.tolist(), H.scores.tolist())}
    assert got == {(s, d, lab, a, round(x, 6)) for s, d, lab, a, x in want}
    assert H.num_states == 4
    # scales as Kaldi's mkgraph: loop * self_loop_scale, exit = log(1-p_loop) * self_loop_scale
    t2 = make_topology("hmm-1state", 2, self_loop_scale=0.1, transition_scale=1.0)
    assert sorted(round(x, 6) for x in t2.H.scores.tolist() if x != 0) == [round(0.1 * half,
                                                                                   6)] * 4


def test_hmm_3state_and_chain_sizes() -> None:
    t3 = make_topology("hmm-3state", 2)
    assert t3.num_pdfs == 6 and t3.tid2pdf.numel() == 13
    # 3 forward arcs + 3 self-loops + 1 exit epsilon per phone, plus the final arc
    assert t3.H.num_arcs == 2 * 7 + 1
    ch = make_topology("chain", 2)
    assert ch.num_pdfs == 4
    # the first frame of a phone is the forward pdf (class 0), later ones the self-loop pdf
    first = [lab for (s, _d, lab) in ch.H.arcs.tolist() if s == 0 and lab > 0]
    loops = [lab for (s, d, lab) in ch.H.arcs.tolist() if s == d and lab > 0]
    assert [int(ch.tid2pdf[t]) for t in first] == [0, 2]
    assert [int(ch.tid2pdf[t]) for t in loops] == [1, 3]


def test_hclg_decodes() -> None:
    LG = compile_lg(_L(), _G(), FTD, FWD)
    topo = make_topology("hmm-1state", FTD - 1)
    HCLG = compile_hclg(topo, LG)
    assert int((HCLG.labels == 0).sum()) == 0
    # one frame per phone: pdf = phone - 1; a | a b | c
    phones = [1, 1, 2, 3]
    lp_pdf = torch.full((1, len(phones), topo.num_pdfs), -1000.0)
    for t, p in enumerate(phones):
        lp_pdf[0, t, p - 1] = 0.0
    lp = pdf_to_tid_log_probs(lp_pdf, topo.tid2pdf)
    dense = DenseFsaVec(lp, torch.tensor([[0, 0, len(phones)]], dtype=torch.int32))
    best = shortest_path(intersect_dense_pruned(HCLG, dense, 20.0, 8.0, 30, 10000))
    assert tuple(w for w in best.aux_labels.tolist() if w > 0) == (1, 2, 3)
    lg_score = _enumerate(LG)[((1, 1, 2, 3), (1, 2, 3))]
    assert abs(float(best.scores.sum()) - (lg_score + 4 * math.log(0.5))) < 1e-3


def _write_lang(d) -> None:
    (d / "tokens.txt").write_text(TOKENS)
    (d / "words.txt").write_text(WORDS)
    write_fst(_L(), d / "L_disambig.fst")
    write_fst(_G(), d / "G.fst")


def test_compile_graph_cache(tmp_path) -> None:
    _write_lang(tmp_path)
    g1, st1 = compile_graph(tmp_path, kind="HLG", topo="ctc")
    assert not st1["cached"] and (tmp_path / "HLG.fst").is_file()
    assert 0 < st1["kaldifst_s"] <= st1["total_s"]
    g2, st2 = compile_graph(tmp_path, kind="HLG", topo="ctc")
    assert st2["cached"] and torch.equal(g1.arcs, g2.arcs)
    assert not compile_graph(tmp_path, kind="HLG", topo="ctc-modified")[1]["cached"]
    assert not compile_graph(tmp_path, kind="HLG", topo="ctc", force=True)[1]["cached"]
    later = time.time_ns() + 10**9
    os.utime(tmp_path / "G.fst", ns=(later, later))
    assert not compile_graph(tmp_path, kind="HLG", topo="ctc")[1]["cached"]
    out = tmp_path / "out"
    _, st = compile_graph(tmp_path, kind="HCLG", topo="hmm-3state", out_dir=out)
    assert (out / "HCLG.fst").is_file() and (out / "HCLG.tid2pdf.txt").is_file()
    assert st["num_pdfs"] == 9


def test_compile_graph_rejects_mismatched_symbols(tmp_path) -> None:
    """A G (or L) built with another words.txt: a clear error naming the files, no output."""
    _write_lang(tmp_path)
    n_words = len(WORDS.split("\n")) - 1
    short = "".join(line + "\n" for line in WORDS.splitlines()[: n_words // 2])
    (tmp_path / "words.txt").write_text(short + "#0 " + str(n_words + 5) + "\n")
    with pytest.raises(ValueError, match=r"G\.fst: input label ids .* not in .*words\.txt"):
        compile_graph(tmp_path, kind="HLG", topo="ctc")
    assert not (tmp_path / "HLG.fst").exists() and not (tmp_path / "HLG.pt").exists()


def test_cli(tmp_path, capsys) -> None:
    from wfst_asr.bin.cli import main

    _write_lang(tmp_path)
    assert main(["compile-graph", "--lang-dir", str(tmp_path), "--kind", "LG"]) == 0
    assert (tmp_path / "LG.fst").is_file() and (tmp_path / "LG.pt").is_file()
    assert "LG" in capsys.readouterr().out


def test_integration_prepare_lang_and_arpa(tmp_path) -> None:
    """lang.prepare_lang (optional silence) + lm.arpa_to_fst + compile_graph + decoding."""
    lang = pytest.importorskip("wfst_asr.graphs.lang")
    lm = pytest.importorskip("wfst_asr.graphs.lm")
    from wfst_asr.fsa import SymbolTable
    from wfst_asr.graphs.ngram import estimate_ngram

    (tmp_path / "lexicon.txt").write_text("A a\nAB a b\nC c\nC2 c\n")
    lang.prepare_lang(tmp_path, tmp_path / "lexicon.txt", tokens=["a", "b", "c", "sil"],
                      sil_token="sil", sil_prob=0.3)
    sents = [["A", "AB", "C"], ["AB", "C"], ["C", "A"], ["C2"], ["A", "AB", "C", "C"]]
    estimate_ngram(sents, 2).write_arpa(tmp_path / "lm.arpa")
    lm.arpa_to_fst(tmp_path / "lm.arpa", tmp_path / "words.txt", out_path=tmp_path / "G.fst")
    tokens = SymbolTable.from_file(tmp_path / "tokens.txt")
    words = SymbolTable.from_file(tmp_path / "words.txt")
    ftd, fwd = tokens["#0"], words["#0"]
    LG, _ = compile_graph(tmp_path, kind="LG")
    kf = _kaldi.kaldifst()
    from wfst_asr.fsa import read_fst
    fl, fg = to_kaldifst(read_fst(tmp_path / "L_disambig.fst", acceptor=False)), \
        to_kaldifst(read_fst(tmp_path / "G.fst", acceptor=False))
    kf.arcsort(fl, sort_type="olabel")
    ref = _enumerate(from_kaldifst(kf.compose(fl, fg), acceptor=False), ftd, fwd, max_tokens=3)
    _assert_same(_enumerate(LG, max_tokens=3), ref)
    HLG, _ = compile_graph(tmp_path, kind="HLG", topo="ctc")
    a, b, c = tokens["a"], tokens["b"], tokens["c"]
    got = _decode(HLG, (a, a, b, c), V=ftd)[1]
    assert [words[w] for w in got] == ["A", "AB", "C"]
