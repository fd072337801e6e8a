"""Forced alignment (``wfst-asr align``, wfst_asr.train.aligner) and boundary accuracy
(wfst_asr.scoring.boundaries): hand-computed examples, and the CLI's CTC alignments against a
CTC Viterbi written here."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from lhotse import CutSet
from test_decode_cmd import _outputs, _run, task  # noqa: F401  (the trained CTC task)

from wfst_asr.data.frame_labels import alignment_segments
from wfst_asr.scoring.boundaries import alignment_boundaries, boundary_accuracy
from wfst_asr.train.aligner import ctc_token_spans


def test_boundary_accuracy_hand_example():
    ref = {"u": [(0.0, 0.10, "a"), (0.10, 0.25, "b"), (0.25, 0.40, "c"), (0.40, 0.5, "d")]}
    # boundaries 0.10, 0.25, 0.40 against 0.115 (15 ms off), 0.25 (0), 0.43 (30 ms)
    hyp = {"u": [(0.0, 0.115, "a"), (0.115, 0.25, "b"), (0.25, 0.43, "c"), (0.43, 0.5, "d")]}
    rep = boundary_accuracy(ref, hyp, (0.01, 0.02, 0.03, 0.04))
    assert rep.total == 3 and rep.hits == [1, 2, 3, 3]
    assert rep.percent() == pytest.approx([100 / 3, 200 / 3, 100.0, 100.0])
    assert boundary_accuracy(ref, ref).percent() == [100.0] * 4
    # another number of segments: each reference boundary against the nearest one
    hyp2 = {"u": [(0.0, 0.26, "a"), (0.26, 0.5, "c")]}
    rep2 = boundary_accuracy(ref, hyp2, (0.01, 0.2))
    assert rep2.unpaired == 1 and rep2.hits == [1, 3]
    # no hypothesis: every boundary missed
    rep3 = boundary_accuracy({**ref, "v": [(0, 1, "a"), (1, 2, "b")]}, hyp, (0.04,))
    assert rep3.total == 4 and rep3.hits == [3] and rep3.missing == ["v"]
    assert alignment_boundaries(ref["u"]) == [0.10, 0.25, 0.40]


def test_ctc_token_spans_and_alignment_segments():
    # frames: blank a a blank b blank blank a c c
    assert ctc_token_spans([0, 1, 1, 0, 2, 0, 0, 1, 3, 3]) == [(0, 4, 1), (4, 7, 2), (7, 8, 1),
                                                              (8, 10, 3)]
    assert ctc_token_spans([0, 0]) == []
    items = [SimpleNamespace(symbol=s, start=a, duration=d) for s, a, d in
             [("h#", 0.0, 0.1), ("q", 0.1, 0.05), ("aa", 0.15, 0.1), ("b", 0.25, 0.05)]]
    segs, dropped = alignment_segments(items, {"h#": "sil", "aa": "aa", "b": "b"})
    assert dropped == 1
    assert segs == [(0.0, 0.15, "sil"), (0.15, 0.25, "aa"), (0.25, 0.3, "b")]


def _ctc_viterbi(lp: np.ndarray, seq: list[int]) -> list[int]:
    """Best CTC path (frame labels) of ``seq`` through ``lp`` [T, V]: the textbook DP over
    the blank-extended sequence."""
    ext = [0]
    for s in seq:
        ext += [s, 0]
    T, S = lp.shape[0], len(ext)
    score = np.full((T, S), -math.inf)
    back = np.zeros((T, S), dtype=int)
    score[0, 0] = lp[0, ext[0]]
    if S > 1:
        score[0, 1] = lp[0, ext[1]]
    for t in range(1, T):
        for s in range(S):
            cands = [(score[t - 1, s], s)]
            if s >= 1:
                cands.append((score[t - 1, s - 1], s - 1))
            if s >= 2 and ext[s] != 0 and ext[s] != ext[s - 2]:
                cands.append((score[t - 1, s - 2], s - 2))
            best, arg = max(cands)
            score[t, s] = best + lp[t, ext[s]]
            back[t, s] = arg
    s = S - 1 if score[T - 1, S - 1] >= score[T - 1, S - 2] else S - 2
    path = []
    for t in range(T - 1, -1, -1):
        path.append(ext[s])
        s = back[t, s]
    return path[::-1]


def test_align_cli_ctc_against_viterbi(task, tmp_path, capsys):  # noqa: F811
    # reference segmentations for the test cuts: the frames' true phones (the synthetic
    # features are a phone's mean + noise: the argmax of the first 4 dimensions)
    cuts = []
    refs = {}
    for c in CutSet.from_file(task["test"]):
        x = c.load_features()
        lab = x[:, :4].argmax(1)
        segs, start = [], 0
        for t in range(1, len(lab) + 1):
            if t == len(lab) or lab[t] != lab[start]:
                segs.append((start * 0.01, t * 0.01, str(lab[start])))
                start = t
        refs[c.id] = segs
        c.supervisions[0].alignment = {"phone": [
            __import__("lhotse").supervision.AlignmentItem(symbol=s, start=a, duration=b - a)
            for a, b, s in segs]}
        cuts.append(c)
    path = tmp_path / "cuts_test.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(path)
    out = tmp_path / "ali"
    rc, stdout, err = _run(capsys, "align", "--exp-dir", str(task["exp"]), "--cuts",
                           f"test={path}", "--ref-alignment", "phone", "--out-dir", str(out),
                           "--plot", str(tmp_path / "plots"), "--max-plots", "1")
    assert rc == 0, err
    ctm: dict[str, list] = {}
    for line in (out / "test.ctm").read_text().splitlines():
        u, _ch, s, d, lab = line.split()
        ctm.setdefault(u, []).append((float(s), float(s) + float(d), lab))
    ids, _, trans, (lp, lens) = _outputs(task, sets=("test",))["test"]
    from wfst_asr.graphs.lang import read_token_list

    tokens = read_token_list(task["lang"] / "tokens.txt")
    hyps = {}
    for b, u in enumerate(ids):
        seq = [tokens.index(p) + 1 for p in trans[u]]
        frames = _ctc_viterbi(lp[b, :int(lens[b])].double().numpy(), seq)
        want = [(s * 0.01, e * 0.01, tokens[y - 1]) for s, e, y in ctc_token_spans(frames)]
        assert [x[2] for x in ctm[u]] == trans[u]
        assert [(round(s, 3), round(e, 3)) for s, e, _ in ctm[u]] == \
            [(round(s, 3), round(e, 3)) for s, e, _ in want], u
        hyps[u] = want
    rep = boundary_accuracy(refs, hyps)
    assert f"boundary accuracy: {rep.summary()}" in stdout
    assert (out / "boundaries.txt").is_file()
    assert len(list((tmp_path / "plots" / "test").glob("*.png"))) == 1


def test_align_cli_errors_are_one_line(task, tmp_path, capsys):  # noqa: F811
    rc, _out, err = _run(capsys, "align", "--exp-dir", str(task["exp"]), "--cuts",
                         f"test={tmp_path / 'missing.jsonl.gz'}", "--out-dir", str(tmp_path))
    assert rc == 2 and "no such cuts file (test)" in err and len(err.strip().splitlines()) == 1
    cuts = list(CutSet.from_file(task["test"]))
    cuts[0].supervisions[0].custom["phones"] = "a zz b"
    bad = tmp_path / "bad.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(bad)
    rc, _out, err = _run(capsys, "align", "--exp-dir", str(task["exp"]), "--cuts",
                         f"test={bad}", "--out-dir", str(tmp_path / "o"))
    assert rc == 2 and f"utterance {cuts[0].supervisions[0].id}" in err and "'zz'" in err
    rc, _out, err = _run(capsys, "align", "--exp-dir", str(tmp_path / "nope"), "--cuts",
                         f"test={task['test']}", "--out-dir", str(tmp_path / "o"))
    assert rc == 2 and "nope" in err
