"""wfst_asr.decode.grid.grid_search against explicit loops written here: sweep order, the one
tie-break rule (errors drawn from a few values, so that ties are everywhere), extra axes, the
table text and the errors."""

from __future__ import annotations

import math
import random

import pytest

from wfst_asr.decode.grid import GridResult, grid_search, parse_grid


def _better(a: tuple, b: tuple) -> bool:
    """Whether row ``a`` = (lm_scale, word_penalty, *extras, error) beats ``b``, spelled out:
    the lower error; then the smaller lm_scale; the smaller |penalty|; the smaller penalty;
    the smaller extras, first to last. Equal rows: no (the first one stays)."""
    if a[-1] != b[-1]:
        return a[-1] < b[-1]
    if a[0] != b[0]:
        return a[0] < b[0]
    if abs(a[1]) != abs(b[1]):
        return abs(a[1]) < abs(b[1])
    if a[1] != b[1]:
        return a[1] < b[1]
    for x, y in zip(a[2:-1], b[2:-1]):
        if x != y:
            return x < y
    return False


def _brute(errors: dict, scales, pens, extra: dict) -> tuple[list[tuple], int]:
    """The table (explicit nested loops, lm_scale outermost, the last extra axis innermost)
    and the index of its best row (a linear scan with :func:`_better`)."""
    names = list(extra)
    table = []
    for s in scales:
        for wp in pens:
            if not names:
                table.append((s, wp, errors[s, wp]))
            elif len(names) == 1:
                for x in extra[names[0]]:
                    table.append((s, wp, x, errors[s, wp, x]))
            else:
                for x in extra[names[0]]:
                    for y in extra[names[1]]:
                        table.append((s, wp, x, y, errors[s, wp, x, y]))
    best = 0
    for i in range(1, len(table)):
        if _better(table[i], table[best]):
            best = i
    return table, best


def _random_grid(rng: random.Random, n_extra: int):
    scales = rng.sample([0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5], rng.randint(1, 4))
    pens = rng.sample([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], rng.randint(1, 5))
    extra = {f"x{k}_scale": rng.sample([0.0, 0.25, 0.5, 1.0], rng.randint(1, 3))
             for k in range(n_extra)}
    return scales, pens, extra


@pytest.mark.parametrize("n_extra", [0, 1, 2])
@pytest.mark.parametrize("seed", range(12))
def test_grid_search_matches_brute_force(seed, n_extra):
    rng = random.Random(1000 * n_extra + seed)
    scales, pens, extra = _random_grid(rng, n_extra)
    levels = [10.0, 12.5, 15.0][:rng.randint(1, 3)]  # few values: many ties
    errors: dict = {}
    calls = []

    def evaluate(**kw):
        key = (kw.pop("lm_scale"), kw.pop("word_penalty"), *(kw.pop(n) for n in extra))
        assert not kw and all(isinstance(v, float) for v in key)
        calls.append(key)
        return errors.setdefault(key, rng.choice(levels))

    res = grid_search(evaluate, scales, pens, extra or None)
    table, best = _brute(errors, scales, pens, extra)
    assert calls == [row[:-1] for row in table]  # each setting once, in sweep order
    assert list(res.table) == table
    assert res.names == ("lm_scale", "word_penalty", *extra)
    assert res.best_index == best
    assert res.best == dict(zip(res.names, table[best][:-1]))
    assert res.error == table[best][-1] == min(errors.values())
    assert (res.lm_scale, res.word_penalty) == table[best][:2]
    assert res.as_dict() == {**res.best, "error": res.error}


def test_tie_break_rule_by_hand():
    # every setting ties: the smallest lm_scale, then |penalty|, then the negative penalty
    res = grid_search(lambda lm_scale, word_penalty: 5.0, [1.0, 0.5], [2.0, -1.0, 1.0])
    assert res.best == {"lm_scale": 0.5, "word_penalty": -1.0}
    # the lowest error first, whatever the scales
    errs = {(1.0, 0.0): 3.0, (0.5, 0.0): 4.0, (0.5, 1.0): 3.0}
    res = grid_search(lambda lm_scale, word_penalty: errs[lm_scale, word_penalty], [1.0, 0.5],
                      [0.0])
    assert res.best == {"lm_scale": 1.0, "word_penalty": 0.0} and res.error == 3.0
    res = grid_search(lambda lm_scale, word_penalty: errs[lm_scale, word_penalty], [0.5], [1, 0])
    assert res.best == {"lm_scale": 0.5, "word_penalty": 1.0}
    # an extra scale breaks the last ties: the smallest one
    res = grid_search(lambda lm_scale, word_penalty, nnlm_scale: 1.0, [0.3], [0],
                      {"nnlm_scale": [0.5, 0.0, 1.0]})
    assert res.best == {"lm_scale": 0.3, "word_penalty": 0.0, "nnlm_scale": 0.0}
    # a value listed twice: the same setting, its first row
    res = grid_search(lambda lm_scale, word_penalty: 1.0, [0.2, 0.2], [0])
    assert res.best_index == 0 and len(res.table) == 2


def test_decode_timit_rule():
    """The rule that chose the published TIMIT settings: min over (PER, lm_scale,
    |penalty|) of the rows in sweep order (grids without +p / -p pairs)."""
    rng = random.Random(7)
    for _ in range(50):
        scales = rng.sample([0.1, 0.2, 0.3, 0.5, 0.7, 1.0], rng.randint(1, 6))
        pens = rng.sample([-2.0, -1.0, 0.0, 3.0], rng.randint(1, 4))
        rate = {(s, wp): rng.choice([40.0, 41.5, 43.0]) for s in scales for wp in pens}
        tuning = [(s, wp, rate[s, wp]) for s in scales for wp in pens]
        want = min(tuning, key=lambda t: (t[2], t[0], abs(t[1])))
        res = grid_search(lambda lm_scale, word_penalty, rate=rate: rate[lm_scale, word_penalty],
                          scales, pens)
        assert (res.lm_scale, res.word_penalty, res.error) == want


def test_table_text_and_log():
    lines = []
    errs = iter([30.0, 20.0, 25.0, 20.0])
    res = grid_search(lambda **kw: next(errs), [0.5, 1], [0, 1], log=lines.append,
                      metric="PER")
    assert lines == ["lm_scale 0.5, word_penalty 0: %PER 30.00",
                     "lm_scale 0.5, word_penalty 1: %PER 20.00",
                     "lm_scale 1, word_penalty 0: %PER 25.00",
                     "lm_scale 1, word_penalty 1: %PER 20.00"]
    text = res.format_table().splitlines()
    assert text[0].split() == ["lm_scale", "word_penalty", "%PER"]
    rows = [t.split() for t in text[1:]]
    assert [[float(x) for x in r[:3]] for r in rows] == [list(r) for r in res.table]
    assert rows[1][3:] == ["<-", "best"] and sum(len(r) > 3 for r in rows) == 1
    assert res.describe() == "lm_scale 0.5, word_penalty 1"
    res = grid_search(lambda **kw: 1.0, [0.5], [0], {"nnlm_scale": [0, 1]})
    assert res.format_table().splitlines()[0].split() == ["lm_scale", "word_penalty",
                                                          "nnlm_scale", "%ER"]
    assert res.describe() == "lm_scale 0.5, word_penalty 0, nnlm_scale 0"
    assert isinstance(res, GridResult)


def test_errors():
    def ev(**kw):
        return 1.0

    for grid in (([], [0]), ([1], []), ([1], [0], {"nnlm_scale": []})):
        with pytest.raises(ValueError, match="empty grid"):
            grid_search(ev, *grid)
    for name in ("lm_scale", "word_penalty", "error"):
        with pytest.raises(ValueError, match="reserved"):
            grid_search(ev, [1], [0], {name: [1]})
    with pytest.raises(ValueError, match="NaN"):
        grid_search(lambda **kw: math.nan, [1], [0])


def test_parse_grid():
    assert parse_grid("0.1, 0.3,1,") == [0.1, 0.3, 1.0]
    assert parse_grid("-2,-1,0,1") == [-2.0, -1.0, 0.0, 1.0]
    assert parse_grid("") == []
