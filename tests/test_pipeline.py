"""Lattice pipelines over data sets (wfst_asr.decode.pipeline), against path enumeration of tiny
lattices (tests/lattice_reference.py): sweeps, whole-lattice rescoring, n-best lists, oracle,
and lattice directories with skipped utterances."""

from __future__ import annotations

import math

import pytest
import torch

from tests import lattice_reference as lref
from tests.test_lattice import BIG, make_case
from wfst_asr.decode.pipeline import (
    best_word_seqs,
    load_lattice_dir,
    nbest_lists,
    oracle_errors,
    rescore_lattices,
    sweep_lattices,
    write_lattice_dir,
)
from wfst_asr.fsa import SymbolTable


def _lattice_set(seed: int):
    c = make_case(seed)
    lat = c["lat"]
    return c, {f"u{b}": lat[b] for b in range(lat.num_fsas)}


def _brute_best(one, s: float, wp: float) -> list[int]:
    paths = lref.lattice_paths(one)
    return max(paths, key=lambda p: lref.total(p, s, wp))["words"]


def _errors(refs, hyps) -> float:
    n = sum(len(r) for r in refs)
    return 100.0 * sum(lref.edit_distance(r, h) for r, h in zip(refs, hyps)) / max(n, 1)


@pytest.mark.parametrize("seed", [1, 2])
def test_best_word_seqs_and_sweep_against_enumeration(seed):
    c, lats = _lattice_set(seed)
    gen = torch.Generator().manual_seed(seed)
    refs = {u: torch.randint(1, c["V"] + 1, (3,), generator=gen).tolist() for u in lats}
    refs["missing"] = [1, 2]  # no lattice: an empty hypothesis
    scales, pens = [0.0, 0.5, 2.0], [-1.0, 0.0, 1.5]
    want = []
    for s in scales:
        for wp in pens:
            hyps = {u: _brute_best(lats[u], s, wp) for u in lats}
            assert best_word_seqs(lats, s, wp) == hyps
            want.append(_errors(list(refs.values()), [hyps.get(u, []) for u in refs]))
    res = sweep_lattices(lats, refs, scales, pens, error_fn=_errors)
    assert [row[:2] for row in res.table] == [(s, wp) for s in scales for wp in pens]
    assert [row[2] for row in res.table] == pytest.approx(want)
    # grid_search's rule: the lowest error, then the smallest lm_scale, |penalty|, penalty
    k = min(range(len(want)), key=lambda i: (round(want[i], 9), scales[i // 3],
                                             abs(pens[i % 3]), pens[i % 3]))
    assert res.best == {"lm_scale": scales[k // 3], "word_penalty": pens[k % 3]}
    assert res.error == pytest.approx(want[k]) and "<- best" in res.format_table()
    # each lattice's own scales by default
    assert best_word_seqs(lats) == {u: _brute_best(lats[u], c["lm_scale"], c["wp"])
                                    for u in lats}


def test_rescore_lattices_and_skips():
    c, lats = _lattice_set(3)
    rows = c["rows"]
    res, bad = rescore_lattices(lats, c["G"], on_skip=None)
    assert not bad and set(res) == set(lats)
    for u, one in lats.items():  # best path under G's scores = the exhaustive best
        paths = [p for p in lref.lattice_paths(one)
                 if lref.g_score(rows, p["words"]) > -math.inf]
        best = max(paths, key=lambda p: p["am"] + c["lm_scale"] * lref.g_score(rows, p["words"])
                   - c["wp"] * p["nwords"])
        assert best_word_seqs({u: res[u]})[u] == best["words"]
    # a G that accepts only the empty sentence: no lattice path with words survives
    from wfst_asr.fsa import Fsa

    g_empty = Fsa(torch.tensor([[0, 1, -1]], dtype=torch.int32), torch.zeros(1), num_states=2)
    notes = []
    res, bad = rescore_lattices(lats, g_empty, on_skip=notes.append)
    has_empty = {u for u, one in lats.items()
                 if any(p["nwords"] == 0 for p in lref.lattice_paths(one))}
    assert set(res) == has_empty and bad["no-path-in-G"] == len(lats) - len(has_empty)
    assert all("no-path-in-G" in m for m in notes) and len(notes) == bad["no-path-in-G"]


def test_nbest_lists_at_given_scales():
    _, lats = _lattice_set(4)
    s, wp = 1.3, -0.5
    nbs, bad = nbest_lists(lats, 5, lm_scale=s, word_penalty=wp, on_skip=None)
    assert not bad
    for u, one in lats.items():
        want = lref.best_per_word_sequence(lref.lattice_paths(one), s, wp)[:5]
        nb = nbs[u]
        assert len(nb) == len(want)
        assert nb.word_seqs[0] == list(want[0][0])
        tot = nb.total_scores().tolist()
        assert tot == pytest.approx([lref.total(p, s, wp) for _, p in want], abs=1e-4)


def test_oracle_errors():
    _, lats = _lattice_set(5)
    refs = {"u0": [1, 2, 3, 1], "u1": [], "zz": [2, 2]}
    out = oracle_errors(lats, refs)
    for u in ("u0", "u1"):
        seqs = {tuple(p["words"]) for p in lref.lattice_paths(lats[u])}
        assert out[u][0] == min(lref.edit_distance(refs[u], list(q)) for q in seqs)
    assert out["zz"] == (2, [])


def test_lattice_dir_round_trip_and_empty(tmp_path):
    c = make_case(6, T=4)
    words = SymbolTable.from_str("<eps> 0\na 1\nb 2\nc 3\n")
    lp = c["lp"][:, :4]
    # a graph that needs more frames than utterance 1 has: its lattice is empty
    from wfst_asr.fsa import linear_fsa, ops
    from wfst_asr.graphs import ctc_topo

    long = ops.connect(ops.compose(ctc_topo(c["V"]), linear_fsa([1, 2, 3, 1])))
    batches = [(["x", "y"], lp, torch.tensor([4, 2]))]
    st = write_lattice_dir(long, batches, tmp_path / "lats", words=words, search_beam=BIG,
                           output_beam=BIG, lm_scale=0.5, meta={"frame_shift": 0.03})
    assert st["utterances"] == 2 and st["empty"] == 1 and st["frames"] == 4
    notes = []
    lats, bad = load_lattice_dir(tmp_path / "lats", on_skip=notes.append)
    assert list(lats) == ["x"] and bad == {"empty": 1} and "y" in notes[0]
    assert lats["x"].lm_scale == 0.5
    paths = lref.lattice_paths(lats["x"])
    assert {tuple(p["words"]) for p in paths} == {(1, 2, 3, 1)}
    # a second write refuses a complete directory unless overwrite
    with pytest.raises(FileExistsError):
        write_lattice_dir(long, batches, tmp_path / "lats", words=words)
