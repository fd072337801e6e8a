"""Tests of wfst_asr.fsa.ops against path enumeration and kaldifst called directly."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wfst_asr._kaldi import kaldifst as _kfst
from wfst_asr.fsa import (
    Fsa,
    SymbolTable,
    create_fsa_vec,
    from_kaldifst,
    from_str,
    ops,
    to_kaldifst,
    to_openfst_str,
)

kaldifst = _kfst()
SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
QUARTERS = st.integers(-8, 8).map(lambda x: x / 4)  # exact float32 sums


@st.composite
def dags(draw, transducer: bool = False, max_states: int = 7, max_label: int = 3,
         cyclic: bool = False) -> Fsa:
    """A random FSA (acyclic unless ``cyclic``); state 0 always has an arc."""
    ns = draw(st.integers(2, max_states))
    final = ns - 1
    arcs, aux = [], []
    for s in range(final):
        lo = 0 if cyclic else s + 1
        if lo <= final - 1:
            for _ in range(draw(st.integers(0, 3))):
                arcs.append([s, draw(st.integers(lo, final - 1)),
                             draw(st.integers(0, max_label))])
                aux.append(draw(st.integers(0, max_label)))
        if s == final - 1 or (s == 0 and not arcs) or draw(st.booleans()):
            arcs.append([s, final, -1])
            aux.append(-1)
    scores = torch.tensor([draw(QUARTERS) for _ in arcs], dtype=torch.float32)
    attrs = {"aux_labels": torch.tensor(aux, dtype=torch.int32)} if transducer else {}
    return Fsa(torch.tensor(arcs, dtype=torch.int32), scores, num_states=ns, **attrs)


def paths(fsa: Fsa) -> dict[tuple, float]:
    """{(input labels, output labels) without epsilons: best total score} of an acyclic FSA."""
    if fsa.num_states == 0:
        return {}
    out = defaultdict(list)
    labels = fsa.labels.tolist()
    olabels = fsa.aux_labels.tolist() if fsa.has_attr("aux_labels") else labels
    for (s, d, lab), o, w in zip(fsa.arcs.tolist(), olabels, fsa.scores.tolist()):
        out[s].append((d, lab, o, w))
    final = fsa.num_states - 1
    res: dict[tuple, float] = {}

    def walk(q: int, ins: tuple, outs: tuple, score: float) -> None:
        if q == final:
            res[(ins, outs)] = max(res.get((ins, outs), -math.inf), score)
            return
        for d, lab, o, w in out[q]:
            walk(d, ins + ((lab,) if lab > 0 else ()), outs + ((o,) if o > 0 else ()),
                 score + w)

    walk(0, (), (), 0.0)
    return res


def assert_same_paths(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert v == pytest.approx(b[k], abs=1e-5), k


def assert_deterministic(fsa: Fsa) -> None:
    seen = set()
    for s, _, lab in fsa.arcs.tolist():
        assert (s, lab) not in seen, f"state {s} has two arcs with label {lab}"
        seen.add((s, lab))


def kfst_of(fsa: Fsa, acceptor: bool = True):
    """The FST as OpenFst itself compiles our text (an independent conversion)."""
    return kaldifst.compile(to_openfst_str(fsa), acceptor=acceptor, keep_state_numbering=True)


def count_arcs(fst) -> int:
    """Arcs plus final weights of an OpenFst FST (= arcs of the converted Fsa)."""
    n = 0
    for s in kaldifst.StateIterator(fst):
        n += fst.num_arcs(s) + (fst.final(s).value != math.inf)
    return n


def best_cost(fst) -> float:
    ok, _, _, w = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(fst))
    assert ok
    return w.value


# ---------------------------------------------------------------------- determinize & co
@SETTINGS
@given(dags())
def test_determinize(fsa):
    d = ops.determinize(fsa)
    assert_deterministic(d)
    assert_same_paths(paths(d), paths(fsa))
    ref = kaldifst.determinize(kfst_of(fsa))
    assert d.num_states == (ref.num_states + 1 if ref.num_states else 0)
    assert d.num_arcs == count_arcs(ref)


@SETTINGS
@given(dags())
def test_remove_epsilon(fsa):
    r = ops.remove_epsilon(fsa)
    assert not (r.labels == 0).any()
    assert_same_paths(paths(r), paths(fsa))


@SETTINGS
@given(dags())
def test_determinize_star(fsa):
    d = ops.determinize_star(fsa)
    assert not (d.labels == 0).any()
    assert_deterministic(d)
    assert_same_paths(paths(d), paths(fsa))


@SETTINGS
@given(dags())
def test_minimize(fsa):
    d = ops.determinize(fsa)
    m = ops.minimize(d)
    assert m.num_states <= d.num_states
    assert_same_paths(paths(m), paths(fsa))
    ref = kaldifst.determinize(kfst_of(fsa))
    kaldifst.minimize(ref)
    assert m.num_states == (ref.num_states + 1 if ref.num_states else 0)
    assert m.num_arcs == count_arcs(ref)


@SETTINGS
@given(dags())
def test_connect(fsa):
    c = ops.connect(fsa)
    p = paths(fsa)
    assert_same_paths(paths(c), p)
    if not p:
        assert c.num_states == 0
        return
    # every state is on a successful path
    src, dst = c.arcs[:, 0].tolist(), c.arcs[:, 1].tolist()
    fwd, bwd = {0}, {c.num_states - 1}
    for _ in range(c.num_states):
        fwd |= {d for s, d in zip(src, dst) if s in fwd}
        bwd |= {s for s, d in zip(src, dst) if d in bwd}
    assert fwd == bwd == set(range(c.num_states))


@SETTINGS
@given(dags(transducer=True, cyclic=True), st.sampled_from(["ilabel", "olabel"]))
def test_arc_sort(fsa, sort_type):
    s = ops.arc_sort(fsa, sort_type)
    key = s.labels if sort_type == "ilabel" else s.aux_labels
    per_state = defaultdict(list)
    for i, (src, _, lab) in enumerate(s.arcs.tolist()):
        per_state[src].append((lab == -1, int(key[i])))
    for keys in per_state.values():
        assert keys == sorted(keys)  # sorted, -1 arcs last

    def arc_set(f: Fsa) -> list:
        return sorted(zip(map(tuple, f.arcs.tolist()), f.aux_labels.tolist(),
                          f.scores.tolist()))
    assert arc_set(s) == arc_set(fsa)


# ---------------------------------------------------------------------- compose
@SETTINGS
@given(dags(transducer=True), dags(transducer=True))
def test_compose(a, b):
    c = ops.compose(a, b)
    assert c.has_attr("aux_labels")
    expected: dict[tuple, float] = {}
    pb = paths(b)
    for (x, y), wa in paths(a).items():
        for (y2, z), wb in pb.items():
            if y == y2:
                expected[(x, z)] = max(expected.get((x, z), -math.inf), wa + wb)
    assert_same_paths(paths(c), expected)
    if expected:  # best path: kaldifst's own composition of the same FSTs
        fa, fb = kfst_of(a, acceptor=False), kfst_of(b, acceptor=False)
        kaldifst.arcsort(fa, sort_type="olabel")
        kaldifst.arcsort(fb, sort_type="ilabel")
        ref = best_cost(kaldifst.compose(fa, fb))
        assert best_cost(to_kaldifst(c)) == pytest.approx(ref, abs=1e-5)
        assert -ref == pytest.approx(max(expected.values()), abs=1e-5)


def test_compose_acceptors_and_symbols():
    words = SymbolTable.from_str("<eps> 0\nhi 1\nyo 2\n")
    chars = SymbolTable.from_str("<eps> 0\nh 1\ni 2\ny 3\no 4\n")
    lex = from_str("0 1 1 1 0\n1 3 2 0 0\n0 2 3 2 -1\n2 3 4 0 0\n3 4 -1 -1 0\n4\n")
    lex.labels_sym, lex.aux_labels_sym = chars, words
    word = from_str("0 1 2 0.5\n1 2 -1 0\n2\n")
    word.labels_sym = words
    c = ops.compose(lex, word)
    assert paths(c) == {((3, 4), (2,)): -0.5}
    assert c.labels_sym is chars and c.aux_labels_sym is words
    acc = ops.compose(ops.project(lex), from_str("0 1 3 0\n1 2 4 0\n2 3 -1 1\n3\n"))
    assert not acc.has_attr("aux_labels") and paths(acc) == {((3, 4), (3, 4)): 0.0}
    with pytest.raises(ValueError):
        ops.compose(create_fsa_vec([lex]), word)


# ---------------------------------------------------------------------- label ops
@SETTINGS
@given(dags(transducer=True))
def test_invert(fsa):
    fsa.labels_sym = SymbolTable.from_str("<eps> 0\na 1\n")
    fsa.aux_labels_sym = SymbolTable.from_str("<eps> 0\nA 1\n")
    inv = ops.invert(fsa)
    assert inv.labels.tolist() == fsa.aux_labels.tolist()
    assert inv.aux_labels.tolist() == fsa.labels.tolist()
    assert inv.arcs[:, :2].tolist() == fsa.arcs[:, :2].tolist()
    assert inv.labels_sym is fsa.aux_labels_sym and inv.aux_labels_sym is fsa.labels_sym
    assert_same_paths(paths(inv), {(o, i): w for (i, o), w in paths(fsa).items()})


def test_project_keeps_grad_and_attrs():
    fsa = from_str("0 1 1 5 0.5\n0 1 2 0 1\n1 2 -1 -1 0\n2\n")
    fsa.frame_idx = torch.tensor([3, 4, 5])
    fsa.aux_labels_sym = SymbolTable.from_str("<eps> 0\nfive 5\n")
    fsa.scores.requires_grad_(True)
    inp, outp = ops.project(fsa), ops.project(fsa, project_output=True)
    assert inp.labels.tolist() == [1, 2, -1] and not inp.has_attr("aux_labels")
    assert outp.labels.tolist() == [5, 0, -1] and not outp.has_attr("aux_labels")
    assert outp.labels_sym is fsa.aux_labels_sym and not inp.has_attr("aux_labels_sym")
    assert outp.frame_idx.tolist() == [3, 4, 5]
    outp.scores.sum().backward()
    assert fsa.scores.grad.tolist() == [1.0, 1.0, 1.0]
    vec = ops.project(create_fsa_vec([fsa.detach(), fsa.detach()]), project_output=True)
    assert vec.is_vec and vec.labels.tolist() == [5, 0, -1] * 2
    assert ops.project(inp).labels.tolist() == [1, 2, -1]


@settings(SETTINGS, max_examples=50)
@given(dags(), st.randoms(use_true_random=False))
def test_top_sort(fsa, rnd):
    ns = fsa.num_states
    perm = list(range(1, ns - 1))
    rnd.shuffle(perm)
    new = [0, *perm, ns - 1]  # new number of each old state; 0 and the final stay
    arcs = fsa.arcs.clone()
    arcs[:, 0] = torch.tensor([new[s] for s in fsa.arcs[:, 0].tolist()])
    arcs[:, 1] = torch.tensor([new[s] for s in fsa.arcs[:, 1].tolist()])
    shuffled = Fsa(arcs, fsa.scores, num_states=ns, frame_idx=torch.arange(fsa.num_arcs))
    t = ops.top_sort(shuffled)
    assert t.is_top_sorted()
    assert_same_paths(paths(t), paths(fsa))
    assert sorted(t.frame_idx.tolist()) == list(range(fsa.num_arcs))


def test_top_sort_cyclic_raises():
    with pytest.raises(ValueError, match="acyclic"):
        ops.top_sort(from_str("0 1 1 0\n1 0 2 0\n1 2 -1 0\n2\n"))


def test_add_self_loops_matches_kaldifst():
    fsa = from_str("0 1 1 4 0.5\n0 2 2 0 0\n1 3 -1 -1 0\n2 3 -1 -1 1\n3\n")
    out = ops.add_self_loops(fsa, [7], [8])
    ref = kfst_of(fsa, acceptor=False)
    kaldifst.add_self_loops(ref, [7], [8])
    assert out.arcs.tolist() == from_kaldifst(ref, acceptor=False).arcs.tolist()
    loops = [(s, lab) for s, d, lab in out.arcs.tolist() if s == d]
    assert loops == [(0, 7), (1, 7), (2, 7)]  # 0: non-eps output; 1, 2: final


# ---------------------------------------------------------------------- FsaVec, symbols
def test_ops_on_fsa_vec_and_symbols():
    a = from_str("0 1 1 0.5\n0 2 1 0.25\n1 3 -1 0\n2 3 -1 0\n3\n")
    b = from_str("0 1 2 0\n1 2 -1 1\n2\n")
    a.labels_sym = SymbolTable.from_str("<eps> 0\nx 1\ny 2\n")
    vec = create_fsa_vec([a, b])
    d = ops.determinize(vec)
    assert d.is_vec and d.num_fsas == 2
    for i, f in enumerate((a, b)):
        assert d[i].arcs.tolist() == ops.determinize(f).arcs.tolist()
    assert d.labels_sym is a.labels_sym
    assert ops.determinize(a).labels_sym is a.labels_sym


def test_determinize_star_max_states():
    fsa = from_str("0 1 1 0\n0 2 1 0\n1 3 2 0\n2 3 3 0\n3 4 -1 0\n4\n")
    with pytest.raises(RuntimeError, match="max_states"):
        ops.determinize_star(fsa, max_states=1)
