"""wfst_asr.scoring: error counts, whole-set scoring, reports and phone folding."""

from __future__ import annotations

import math
import os
import random

import pytest

from wfst_asr.scoring import (
    ErrorCounts,
    PhoneMap,
    align,
    align_and_count,
    counts_from_alignment,
    read_phone_map,
    score,
    write_phone_map,
)

# ---- ErrorCounts and align_and_count ----------------------------------------------------


@pytest.mark.parametrize(
    "ref, hyp, expected",  # expected: (ref_len, ins, del, sub)
    [
        ("a b c", "a b c", (3, 0, 0, 0)),
        ("a b c", "a x b c", (3, 1, 0, 0)),  # one insertion
        ("a b c", "x a b c y", (3, 2, 0, 0)),
        ("a b c d", "a d", (4, 0, 2, 0)),  # two deletions
        ("a b c", "a x c", (3, 0, 0, 1)),  # one substitution
        ("a b c", "x y z", (3, 0, 0, 3)),
        ("a b c", "", (3, 0, 3, 0)),  # empty hyp: all deletions
        ("", "a b", (0, 2, 0, 0)),  # empty ref: all insertions
        ("", "", (0, 0, 0, 0)),
        ("a b c d e", "b c x e f", (5, 1, 1, 1)),  # del a, sub d->x, ins f
    ],
)
def test_counts_hand_computed(ref, hyp, expected):
    c = align_and_count(ref.split(), hyp.split())
    assert (c.ref_len, c.ins, c.dels, c.subs) == expected
    assert c.errors == sum(expected[1:])
    # the alignment the report prints gives the same counts
    assert counts_from_alignment(align(ref.split(), hyp.split())) == c


def test_error_counts_rate_add_and_str():
    a = ErrorCounts(789, 1, 2, 3, metric="PER")
    assert a.errors == 6
    assert a.rate == pytest.approx(100 * 6 / 789)
    assert str(a) == "%PER 0.76 [ 6 / 789, 1 ins, 2 del, 3 sub ]"
    assert a.format("WER") == "%WER 0.76 [ 6 / 789, 1 ins, 2 del, 3 sub ]"
    b = ErrorCounts(11, 55, 0, 0)
    s = a + b
    assert (s.ref_len, s.ins, s.dels, s.subs) == (800, 56, 2, 3)
    assert str(s) == "%PER 7.62 [ 61 / 800, 56 ins, 2 del, 3 sub ]"
    assert sum([a, b]) == s
    assert ErrorCounts().rate == 0.0
    assert math.isinf(ErrorCounts(0, 2, 0, 0).rate)
    with pytest.raises(ValueError):
        ErrorCounts(1, 0, 1, 1)


def test_align_marks_gaps_with_none():
    assert align(["a", "b", "c"], ["a", "c", "d"]) == [
        ("a", "a"),
        ("b", None),
        ("c", "c"),
        (None, "d"),
    ]
    assert align([], ["x"]) == [(None, "x")]
    assert align(["x"], []) == [("x", None)]


def _levenshtein(ref, hyp) -> int:
    """Plain O(len(ref) * len(hyp)) DP with unit costs."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def test_agrees_with_brute_force_levenshtein():
    rng = random.Random(1234)
    for _ in range(500):
        ref = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        hyp = [rng.choice("abcde") for _ in range(rng.randint(0, 12))]
        c = align_and_count(ref, hyp)
        assert c.errors == _levenshtein(ref, hyp), (ref, hyp)
        assert c.ref_len == len(ref)
        # ins - del is fixed by the lengths whatever alignment is chosen
        assert c.ins - c.dels == len(hyp) - len(ref)
        alignment = align(ref, hyp)
        assert [r for r, _ in alignment if r is not None] == ref
        assert [h for _, h in alignment if h is not None] == hyp
        assert counts_from_alignment(alignment) == c


def test_symbols_that_look_like_gaps_are_fine():
    ref, hyp = ["***", "<eps>", "a"], ["<eps>", "a", "-"]
    assert align_and_count(ref, hyp).errors == _levenshtein(ref, hyp) == 2


# ---- score ------------------------------------------------------------------------------

REFS = {
    "spkA-u1": ["a", "b", "c", "d"],
    "spkA-u2": ["x", "y"],
    "spkB-u1": ["p", "q"],
    "spkB-u2": ["a", "a"],
}
HYPS = {
    "spkA-u1": ["a", "c", "d", "e"],  # 1 del, 1 ins
    "spkB-u1": ["pp", "q", "r"],  # 1 sub, 1 ins
    "spkB-u2": ["a", "a"],  # correct
}  # spkA-u2 missing: 2 deletions


def _speaker(utt: str) -> str:
    return utt.split("-")[0]


def test_score_totals_speakers_and_missing():
    rep = score(REFS, HYPS, _speaker, metric="PER")
    t = rep.total
    assert (t.ref_len, t.ins, t.dels, t.subs) == (10, 2, 3, 1)
    assert rep.missing == ["spkA-u2"]
    assert rep.utterances["spkA-u2"].missing
    assert list(rep.speakers) == ["spkA", "spkB"]
    assert rep.speaker_utts == {"spkA": 2, "spkB": 2}
    assert sum(rep.speakers.values()) == t
    assert list(rep.utterances) == sorted(REFS)
    assert sum(u.counts for u in rep.utterances.values()) == t
    assert rep.num_utts_with_errors == 3
    assert rep.summary() == "%PER 60.00 [ 6 / 10, 2 ins, 3 del, 1 sub ] 4 utts, 1 missing"
    # a dict works as speaker_of; None gives no breakdown
    by_dict = score(REFS, HYPS, {u: _speaker(u) for u in REFS})
    assert by_dict.speakers == rep.speakers
    assert score(REFS, HYPS).speakers == {}
    assert str(score(REFS, HYPS, metric="WER").total).startswith("%WER 60.00")


def test_score_totals_equal_sum_over_speakers_random():
    rng = random.Random(7)
    refs, hyps = {}, {}
    for i in range(60):
        utt = f"s{rng.randint(0, 5)}_{i:03d}"
        refs[utt] = [rng.choice("abcdef") for _ in range(rng.randint(0, 10))]
        if rng.random() < 0.9:
            hyps[utt] = [rng.choice("abcdefg") for _ in range(rng.randint(0, 10))]
    rep = score(refs, hyps, lambda u: u.split("_")[0])
    assert sum(rep.speakers.values()) == rep.total
    assert sum(rep.speaker_utts.values()) == len(refs)
    assert list(rep.speakers) == sorted(rep.speakers)
    assert rep.total.errors == sum(_levenshtein(refs[u], hyps.get(u, [])) for u in refs)


def test_score_rejects_hyps_without_refs():
    with pytest.raises(ValueError, match="spkC-u9"):
        score(REFS, {**HYPS, "spkC-u9": ["a"]}, _speaker)


def test_score_rejects_speaker_dict_without_an_utterance():
    with pytest.raises(ValueError, match="spkB-u2"):
        score(REFS, HYPS, {u: _speaker(u) for u in REFS if u != "spkB-u2"})


def test_report_file_content_and_atomic(tmp_path):
    rep = score(REFS, HYPS, _speaker, metric="PER")
    path = tmp_path / "per_test.txt"
    path.write_text("old report\n")
    rep.write(path)
    assert sorted(os.listdir(tmp_path)) == ["per_test.txt"]  # no temporary left behind
    text = path.read_text()
    assert text == rep.to_text()
    lines = text.splitlines()
    assert lines[0] == "%PER 60.00 [ 6 / 10, 2 ins, 3 del, 1 sub ]"
    assert lines[1] == "%SER 75.00 [ 3 / 4 ]"
    assert "Missing hypotheses: spkA-u2" in lines
    assert "Per speaker:" in lines and "Per utterance:" in lines
    header = lines[lines.index("Per speaker:") + 1].split()
    assert header == ["SPEAKER", "#UTT", "#REF", "%PER", "#ERR", "INS", "DEL", "SUB"]
    spk_rows = [ln.split() for ln in lines if ln.startswith(("spkA ", "spkB ", "TOTAL "))]
    assert spk_rows == [
        ["spkA", "2", "6", "66.67", "4", "1", "3", "0"],
        ["spkB", "2", "4", "50.00", "2", "1", "0", "1"],
        ["TOTAL", "4", "10", "60.00", "6", "2", "3", "1"],
    ]
    # per-utterance alignment with *** for gaps
    assert "spkA-u1 ref  a b   c d ***" in lines
    assert "spkA-u1 hyp  a *** c d e" in lines
    assert "spkA-u1 op   C D   C C I" in lines
    assert "spkA-u1 #csid 3 0 1 1" in lines
    assert "spkA-u2 hyp  *** ***" in lines
    assert "spkA-u2 #csid 0 0 0 2  (no hypothesis)" in lines
    assert "spkB-u1 ref  p  q ***" in lines
    assert "spkB-u1 hyp  pp q r" in lines


def test_report_write_failure_keeps_old_file(tmp_path, monkeypatch):
    rep = score(REFS, HYPS, _speaker)
    path = tmp_path / "wer.txt"
    path.write_text("old\n")

    def boom(self):
        raise RuntimeError("crash")

    monkeypatch.setattr(type(rep), "to_text", boom)
    with pytest.raises(RuntimeError):
        rep.write(path)
    assert path.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["wer.txt"]


# ---- phone folding ----------------------------------------------------------------------

TABLE = """\
# phone61 phone48 phone39

aa   aa   aa
ao   ao   aa
ax-h ah   ah
ah   ah   ah
h#   sil  sil
pau  sil  sil
zh   zh   sh
sh   sh   sh
q
"""


@pytest.fixture
def table(tmp_path):
    p = tmp_path / "phones.map"
    p.write_text(TABLE)
    return p


def test_fold_61_to_48_and_39(table):
    pm = PhoneMap.from_file(table)
    assert len(pm) == 9 and "q" in pm
    seq = ["h#", "q", "aa", "ao", "ax-h", "zh", "q", "sh", "pau"]
    assert pm.fold(seq, to="39") == ["sil", "aa", "aa", "ah", "sh", "sh", "sil"]
    assert pm.fold(seq, to="48") == ["sil", "aa", "ao", "ah", "zh", "sh", "sil"]
    # 48 -> 39, as for a model trained on 48 phones
    assert pm.fold(["sil", "ao", "zh", "ah"], to="39", source="48") == ["sil", "aa", "sh", "ah"]
    assert pm.phones("39") == ["aa", "ah", "sh", "sil"]
    assert pm.mapping("39")["q"] is None
    assert pm.fold_all({"u": ["q", "ao"]}) == {"u": ["aa"]}
    with pytest.raises(ValueError, match="'xx'"):
        pm.fold(["aa", "xx"])
    with pytest.raises(ValueError, match="unknown phone set"):
        pm.fold(["aa"], to="40")
    # 39 -> 48 is not a mapping (aa goes to aa and ao)
    with pytest.raises(ValueError, match="not a mapping"):
        pm.fold(["aa"], to="48", source="39")


def test_folded_scoring(table):
    pm = PhoneMap.from_file(table)
    refs = {"u1": ["h#", "ao", "q", "sh", "h#"]}
    hyps = {"u1": ["h#", "aa", "zh", "pau"]}
    # 61 phones: ao/aa, sh/zh, h#/pau substituted, q deleted
    assert score(refs, hyps).total.errors == 4
    folded = score(pm.fold_all(refs), pm.fold_all(hyps))
    assert folded.total.errors == 0 and folded.total.ref_len == 4


@pytest.mark.parametrize(
    "bad_line",
    ["aa aa", "aa aa aa aa", "- aa aa", "ao ao aa"],  # last: ao appears twice
)
def test_malformed_table_names_file_and_line(tmp_path, bad_line):
    p = tmp_path / "bad.map"
    p.write_text(TABLE + "\n" + bad_line + "\n")
    lineno = TABLE.count("\n") + 2
    with pytest.raises(ValueError, match=f"bad.map:{lineno}:"):
        PhoneMap.from_file(p)


def test_write_read_round_trip(table, tmp_path):
    pm = read_phone_map(table)
    pm2 = PhoneMap({"a": ("a", None), "b": ("a", "b"), "c": (None, None)}, sets=("x", "y", "z"))
    for m in (pm, pm2):
        out = tmp_path / "out.map"
        write_phone_map(out, m)
        assert read_phone_map(out, m.sets) == m
    assert sorted(os.listdir(tmp_path)) == ["out.map", "phones.map"]
    assert "c\n" in (tmp_path / "out.map").read_text()
    assert PhoneMap.from_file(tmp_path / "out.map", ("x", "y", "z")).fold(
        ["a", "b", "c"], to="z"
    ) == ["b"]
