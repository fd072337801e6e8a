"""The memory-lean paths of decoding-graph compilation give the same results as the plain ones.

* :func:`wfst_asr.fsa.io._assemble_sorted` (binary FSTs: int32, no sort) against
  :func:`wfst_asr.fsa.io._assemble_arrays` (any arc order, int64 and a stable sort), and
  ``from_kaldifst`` / ``read_fst`` / ``from_openfst`` of the same random FSTs (start state not 0,
  states without arcs, final states, ``-0`` costs);
* ``to_kaldifst`` of an Fsa whose arcs are not sorted by source state;
* ``remove_input_epsilons`` keeps every (tokens, words, score) path of random transducers;
* ``compile_graph`` writes ``HLG.fst`` / ``HCLG.fst`` straight from kaldifst: the same graph and
  symbol tables as ``write_fst`` of the returned graph.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from wfst_asr import _kaldi
from wfst_asr.fsa import Fsa, SymbolTable, from_kaldifst, from_openfst, load, read_fst, write_fst
from wfst_asr.fsa.io import _assemble_arrays, _assemble_sorted, to_kaldifst
from wfst_asr.graphs.compile import compile_graph, remove_input_epsilons

try:
    from tests.test_compile import TOKENS, WORDS, _write_lang
except ImportError:  # pragma: no cover - run from inside tests/
    from test_compile import TOKENS, WORDS, _write_lang


def same_fsa(a: Fsa, b: Fsa) -> None:
    """Identical arcs, scores (bitwise, sign of zero included) and aux_labels."""
    assert a.num_states == b.num_states
    assert torch.equal(a.arcs, b.arcs)
    assert torch.equal(a.scores.view(torch.int32), b.scores.view(torch.int32))
    assert a.has_attr("aux_labels") == b.has_attr("aux_labels")
    if a.has_attr("aux_labels"):
        assert torch.equal(a.aux_labels, b.aux_labels)


def random_openfst_text(rng: random.Random) -> str:
    """OpenFst text of a random transducer: the start state (first line) is any state, some
    states have no arcs, some are final, costs include -0 and 0."""
    ns = rng.randint(1, 9)
    start = rng.randrange(ns)
    lines = []
    for q in [start] + [q for q in range(ns) if q != start]:
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            lines.append(f"{q}\t{rng.randrange(ns)}\t{rng.randint(0, 5)}\t{rng.randint(0, 5)}\t"
                         f"{rng.choice(['0', '-0', '1.5', '-2.25', '0.1'])}")
        if rng.random() < 0.4:
            lines.append(f"{q}\t{rng.choice(['0', '-0', '0.5', '3.25'])}")
    if not lines or not lines[0].startswith(f"{start}\t"):
        lines.insert(0, f"{start}\t0")
    return "\n".join(lines) + "\n"


def test_assemble_sorted_matches_general() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        ns = int(rng.integers(1, 12))
        narcs = rng.integers(0, 4, ns)
        src = np.repeat(np.arange(ns), narcs)
        a = len(src)
        dst = rng.integers(0, ns, a)
        ilab, olab = rng.integers(0, 6, a), rng.integers(0, 6, a)
        cost = rng.choice(np.array([0.0, -0.0, 1.5, -2.25], np.float32), a).astype(np.float32)
        fin_q = np.flatnonzero(rng.random(ns) < 0.5)
        fin_w = rng.choice(np.array([0.0, -0.0, 0.75], np.float32), len(fin_q)).astype(np.float32)
        start = int(rng.integers(0, ns))
        for acceptor in (False, True):
            if acceptor:
                olab = ilab
            want = _assemble_arrays(*(torch.from_numpy(c) for c in (src, dst, ilab, olab)),
                                    torch.from_numpy(cost), torch.from_numpy(fin_q),
                                    torch.from_numpy(fin_w), start, ns, acceptor=acceptor)
            cols = [src.copy(), dst.copy(), ilab.copy(), olab.copy(), cost.copy(), fin_q.copy(),
                    fin_w.copy()]
            got = _assemble_sorted(cols, start, ns, acceptor=acceptor)
            assert cols == []  # consumed
            same_fsa(got, want)
            assert got.arcs.dtype == torch.int32 and got.scores.dtype == torch.float32


def test_binary_readers_match_text(tmp_path: Path) -> None:
    kf = _kaldi.kaldifst()
    rng = random.Random(1)
    for k in range(150):
        text = random_openfst_text(rng)
        fst = kf.compile(text, acceptor=False, keep_state_numbering=True)
        want = from_openfst(text, acceptor=False)
        same_fsa(from_kaldifst(fst, acceptor=False), want)
        path = tmp_path / f"{k}.fst"
        fst.write(str(path))
        same_fsa(read_fst(path, acceptor=False), want)
        back = from_kaldifst(to_kaldifst(want), acceptor=False)
        assert torch.equal(back.arcs, want.arcs) and torch.equal(back.scores, want.scores)
        auto = from_kaldifst(fst)  # acceptor=None: an acceptor iff every ilabel == olabel
        assert auto.has_attr("aux_labels") == bool((want.labels != want.aux_labels)[
            want.labels != -1].any())


def test_to_kaldifst_sorts_unsorted_arcs() -> None:
    arcs = torch.tensor([[1, 2, 3], [0, 1, 1], [1, 3, -1], [0, 2, 2], [2, 3, -1]],
                        dtype=torch.int32)
    scores = torch.tensor([-1.0, -2.0, -0.5, -3.0, 0.0])
    aux = torch.tensor([7, 8, -1, 9, -1], dtype=torch.int32)
    loose = Fsa(arcs, scores, num_states=4, aux_labels=aux, validate=False)
    sorted_fsa = Fsa(arcs, scores, num_states=4, aux_labels=aux)
    same_fsa(from_kaldifst(to_kaldifst(loose), acceptor=False),
             from_kaldifst(to_kaldifst(sorted_fsa), acceptor=False))


def all_paths(fsa: Fsa, max_len: int = 12) -> dict[tuple, list[float]]:
    """(tokens, words) -> sorted scores of every path (the graph is acyclic)."""
    arcs, aux, sc = fsa.arcs.tolist(), fsa.aux_labels.tolist(), fsa.scores.tolist()
    out: dict[int, list[int]] = defaultdict(list)
    for i, (s, _d, _l) in enumerate(arcs):
        out[s].append(i)
    paths: dict[tuple, list[float]] = defaultdict(list)

    def dfs(q: int, toks: tuple, words: tuple, score: float, depth: int) -> None:
        assert depth <= max_len
        for i in out[q]:
            _s, d, lab = arcs[i]
            if lab == -1:
                paths[(toks, words)].append(score + sc[i])
                continue
            dfs(d, toks + ((lab,) if lab else ()), words + ((aux[i],) if aux[i] else ()),
                score + sc[i], depth + 1)

    dfs(0, (), (), 0.0, 0)
    return {k: sorted(v) for k, v in paths.items()}


def random_lg_like(rng: random.Random) -> Fsa:
    """A random acyclic transducer (states in topological order) whose epsilon arcs ``0:w``
    carry a word, and whose other arcs carry a token and (sometimes) a word."""
    ns = rng.randint(3, 8)
    arcs, scores, aux = [], [], []
    for q in range(ns - 1):
        for _ in range(rng.randint(1, 3)):
            d = rng.randint(q + 1, ns - 1)
            if d == ns - 1:
                arcs.append([q, d, -1])
                aux.append(-1)
            elif rng.random() < 0.3:
                arcs.append([q, d, 0])
                aux.append(rng.randint(1, 3))
            else:
                arcs.append([q, d, rng.randint(1, 3)])
                aux.append(rng.choice([0, 0, 0, 4]))
            scores.append(rng.choice([-0.5, -1.25, -2.0, 0.0]))
    return Fsa(torch.tensor(arcs, dtype=torch.int32), torch.tensor(scores), num_states=ns,
               aux_labels=torch.tensor(aux, dtype=torch.int32))


def test_remove_input_epsilons_keeps_paths() -> None:
    rng = random.Random(2)
    done = 0
    for _ in range(400):
        fsa = random_lg_like(rng)
        try:
            out = remove_input_epsilons(fsa)
        except ValueError:
            continue  # no rule applies to some epsilon arc (two words on one arc)
        done += 1
        assert not bool((out.labels == 0).any())
        want, got = all_paths(fsa), all_paths(out)
        assert set(got) == set(want)
        for k, v in want.items():
            assert len(got[k]) == len(v) and all(math.isclose(x, y, abs_tol=1e-5)
                                                 for x, y in zip(got[k], v)), k
    assert done > 100


@pytest.mark.parametrize(("kind", "topo"), [("HLG", "ctc"), ("HCLG", "hmm-1state"),
                                            ("LG", "ctc")])
def test_compile_graph_files_match_write_fst(tmp_path: Path, kind: str, topo: str) -> None:
    _write_lang(tmp_path)
    graph, stats = compile_graph(tmp_path, kind=kind, topo=topo)
    assert not stats["cached"]
    from_file = read_fst(tmp_path / f"{kind}.fst", acceptor=False)
    same_fsa(from_file, graph)
    write_fst(graph, tmp_path / "again.fst")
    same_fsa(read_fst(tmp_path / "again.fst", acceptor=False), from_file)
    same_fsa(load(tmp_path / f"{kind}.pt"), graph)
    assert from_file.aux_labels_sym == graph.aux_labels_sym == SymbolTable.from_str(WORDS)
    if kind == "HCLG":  # labels are transition-ids: no table
        assert not from_file.has_attr("labels_sym") and not graph.has_attr("labels_sym")
    else:
        assert from_file.labels_sym == graph.labels_sym == SymbolTable.from_str(TOKENS)
    assert not list(tmp_path.glob(".tmp-*"))
