"""Knowledge distillation into the attention decoder: soft labels from a text teacher
(train.distill, ``wfst-asr soft-labels``), the KL term of losses.attention and the attention
criterion's teachers (train.criteria), against explicit forwards, torch's kl_div /
cross_entropy / ctc_loss and hand-written expectations."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from lhotse import CutSet, MonoCut, SupervisionSegment

from wfst_asr.bin import cli
from wfst_asr.losses.attention import AttentionLoss
from wfst_asr.models import build_model
from wfst_asr.models.textlm import MaskedLm, TransformerLm
from wfst_asr.train import distill
from wfst_asr.train.criteria import AttentionCriterion, build_loss
from wfst_asr.train.distill import FORMAT, SoftLabels, cut_token_seqs, make_soft_labels
from wfst_asr.train.trainer import TokenSeqs, batch_targets

V = 6
SMALL = {"d_model": 16, "nhead": 2, "num_layers": 1, "dim_feedforward": 32, "dropout": 0.0,
         "max_len": 16}


def _teacher(tmp_path, kind: str = "mlm", seed: int = 0, vocab: int = V, name="teacher.pt"):
    """An untrained teacher and a file of its weights (the soft labels hash the file)."""
    torch.manual_seed(seed)
    lm = (MaskedLm if kind == "mlm" else TransformerLm)(vocab, **SMALL).eval()
    path = tmp_path / name
    torch.save(lm.state_dict(), path)
    return lm, path


def _load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@torch.no_grad()
def _mlm_row(lm: MaskedLm, utt, i, left=(), right=()) -> torch.Tensor:
    """The teacher's log-probs at position ``i`` masked: the input built by hand."""
    ids = list(utt)
    ids[i] = lm.mask_id
    segs, off = [1] * len(utt), 0
    if left or right:
        ids = [*left, lm.sep_id, *ids, lm.sep_id, *right]
        segs = [0] * len(left) + [1] * (len(utt) + 2) + [0] * len(right)
        off = len(left) + 1
    return lm(torch.tensor([ids]), torch.tensor([len(ids)]), torch.tensor([segs]))[0, off + i]


@torch.no_grad()
def _causal_row(lm: TransformerLm, utt, i) -> torch.Tensor:
    ids = torch.tensor([[0, *utt[:i]]])
    return lm(ids, torch.tensor([ids.shape[1]]))[0, -1]


def _check_entry(entry: dict, utt, k: int, rows) -> None:
    """``entry`` holds the top-k of the reference rows, softmax-renormalised over the k."""
    U = len(utt)
    assert entry["tokens"].dtype == torch.int32 and entry["tokens"].tolist() == list(utt)
    assert entry["ids"].shape == (U, k) and entry["ids"].dtype == torch.int32
    assert entry["probs"].shape == (U, k) and entry["probs"].dtype == torch.float32
    assert torch.allclose(entry["probs"].sum(1), torch.ones(U), atol=1e-5)
    for i in range(U):
        top = rows(i).topk(k)
        assert entry["ids"][i].tolist() == top.indices.tolist()
        assert torch.allclose(entry["probs"][i], top.values.softmax(0), atol=1e-5)


# ------------------------------------------------------------------------ soft labels
def test_soft_labels_of_an_mlm_teacher(tmp_path):
    lm, tpath = _teacher(tmp_path)
    utts = ["u1", "u2", "u3", "u4", "u5"]
    seqs = [[1, 2, 3], [], [4, 5, 1, 2], [3] * 20, [2]]  # u2 empty, u4 > max_len 16
    out = tmp_path / "soft.pt"
    summary = make_soft_labels(lm, tpath, utts, seqs, out, k=3, chunk=2, batch_size=4,
                               progress=False)
    assert summary == {"utts": 3, "tokens": 8, "skipped_empty": 1, "skipped_long": 1,
                       "reused_parts": 0}
    state = _load(out)
    assert state["format"] == FORMAT and state["k"] == 3 and state["vocab_size"] == V
    assert state["teacher_kind"] == "mlm" and state["teacher"] == str(tpath)
    assert state["teacher_sha256"] == hashlib.sha256(tpath.read_bytes()).hexdigest()
    assert state["context_tokens"] == 0 and state["chapter_regex"] is None
    assert set(state["utts"]) == {"u1", "u3", "u5"}
    for u in ("u1", "u3", "u5"):
        s = seqs[utts.index(u)]
        _check_entry(state["utts"][u], s, 3, lambda i, s=s: _mlm_row(lm, s, i))
        assert int(state["utts"][u]["ids"].min()) >= 1  # the MLM never predicts class 0
    # written atomically: nothing else is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["soft.pt", "teacher.pt"]


def test_soft_labels_with_chapter_context(tmp_path):
    lm, tpath = _teacher(tmp_path, seed=1)
    lm.meta = {"context_tokens": 2, "chapter_regex": r"^(ch\d)-"}  # the teacher's own
    utts = ["ch1-02", "ch1-01", "ch1-03", "zz"]
    seqs = [[1, 2], [3, 4, 5], [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2], [5]]
    out = tmp_path / "soft.pt"
    summary = make_soft_labels(lm, tpath, utts, seqs, out, k=2, progress=False)
    # ch1-03: 13 tokens + 2 of context + 2 [SEP] > 16
    assert summary["skipped_long"] == 1 and summary["utts"] == 3
    state = _load(out)
    assert state["context_tokens"] == 2 and state["chapter_regex"] == r"^(ch\d)-"
    ctx = {"ch1-02": ([4, 5], [2, 2]), "ch1-01": ([], [1, 2]), "zz": ((), ())}
    for u, (left, right) in ctx.items():
        s = seqs[utts.index(u)]
        _check_entry(state["utts"][u], s, 2,
                     lambda i, s=s, le=left, r=right: _mlm_row(lm, s, i, le, r))
    # an explicit override: no context
    out2 = tmp_path / "soft0.pt"
    assert make_soft_labels(lm, tpath, utts, seqs, out2, k=2, context_tokens=0,
                            progress=False)["skipped_long"] == 0
    s = seqs[0]
    _check_entry(_load(out2)["utts"]["ch1-02"], s, 2, lambda i: _mlm_row(lm, s, i))


def test_soft_labels_of_a_causal_teacher(tmp_path):
    lm, tpath = _teacher(tmp_path, "causal", seed=2)
    utts = ["a", "b", "c", "d"]
    seqs = [[1, 2, 3], [5], [4] * 16, []]  # c: <sos> + 16 > max_len 16
    out = tmp_path / "soft.pt"
    summary = make_soft_labels(lm, tpath, utts, seqs, out, k=4, context_tokens=3,
                               chapter_regex="(.)", progress=False)
    assert summary["skipped_long"] == 1 and summary["skipped_empty"] == 1
    state = _load(out)
    assert state["teacher_kind"] == "causal"
    assert state["context_tokens"] == 0 and state["chapter_regex"] is None  # no context
    assert set(state["utts"]) == {"a", "b"}
    for u in ("a", "b"):
        s = seqs[utts.index(u)]
        _check_entry(state["utts"][u], s, 4, lambda i, s=s: _causal_row(lm, s, i))
    # k above the classes: the file keeps (and says) V columns
    out2 = tmp_path / "soft_all.pt"
    make_soft_labels(lm, tpath, ["a"], [[1, 2, 3]], out2, k=50, progress=False)
    st = _load(out2)
    assert st["k"] == V and st["utts"]["a"]["ids"].shape == (3, V)
    assert SoftLabels(out2).lookup("a", [1, 2, 3])[0].shape == (3, V)
    with pytest.raises(ValueError, match="k must be"):
        make_soft_labels(lm, tpath, ["a"], [[1]], out2, k=0, progress=False)
    with pytest.raises(ValueError, match="id 6"):
        make_soft_labels(lm, tpath, ["a"], [[6]], out2, progress=False)


def _flaky(monkeypatch, fail_at: int) -> list:
    """Make the teacher fail at its ``fail_at``-th chunk; returns the list of calls."""
    real = distill.position_log_probs
    calls: list = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) >= fail_at:
            raise RuntimeError("teacher crashed")
        return real(*args, **kwargs)

    monkeypatch.setattr(distill, "position_log_probs", wrapper)
    return calls


def _same_file(a, b) -> None:
    x, y = _load(a), _load(b)
    assert {k: v for k, v in x.items() if k != "utts"} == {
        k: v for k, v in y.items() if k != "utts"}
    assert set(x["utts"]) == set(y["utts"])
    for u, e in x["utts"].items():
        assert all(torch.equal(e[f], y["utts"][u][f]) for f in ("tokens", "ids", "probs"))


def test_soft_labels_resume_after_a_crash(tmp_path, monkeypatch):
    lm, tpath = _teacher(tmp_path)
    utts = ["a", "b", "c", "d", "e"]
    seqs = [[1, 2], [3], [4, 5, 1], [2, 2], [5]]
    clean = tmp_path / "clean.pt"
    make_soft_labels(lm, tpath, utts, seqs, clean, k=3, chunk=2, progress=False)

    out = tmp_path / "soft.pt"
    parts = tmp_path / "soft.pt.parts"
    _flaky(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="teacher crashed"):
        make_soft_labels(lm, tpath, utts, seqs, out, k=3, chunk=2, progress=False)
    assert not out.exists()
    assert (parts / "part-00000.pt").is_file() and not (parts / "part-00001.pt").exists()
    monkeypatch.undo()
    calls = _flaky(monkeypatch, 99)  # counts only
    summary = make_soft_labels(lm, tpath, utts, seqs, out, k=3, chunk=2, progress=False)
    assert summary["reused_parts"] == 1 and len(calls) == 2  # chunks 1 and 2 only
    assert not parts.exists()
    _same_file(out, clean)


def test_soft_labels_discard_parts_of_another_job(tmp_path, monkeypatch):
    lm, tpath = _teacher(tmp_path)
    utts = ["a", "b", "c", "d", "e"]
    seqs = [[1, 2], [3], [4, 5, 1], [2, 2], [5]]
    out, parts = tmp_path / "soft.pt", tmp_path / "soft.pt.parts"
    _flaky(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        make_soft_labels(lm, tpath, utts, seqs, out, k=3, chunk=2, progress=False)
    assert (parts / "part-00000.pt").is_file()
    monkeypatch.undo()
    calls = _flaky(monkeypatch, 99)
    summary = make_soft_labels(lm, tpath, utts, seqs, out, k=2, chunk=2, progress=False)
    assert summary["reused_parts"] == 0 and len(calls) == 3  # another k: all recomputed
    assert _load(out)["k"] == 2 and _load(out)["utts"]["a"]["ids"].shape == (2, 2)
    clean = tmp_path / "clean.pt"
    make_soft_labels(lm, tpath, utts, seqs, clean, k=2, chunk=2, progress=False)
    _same_file(out, clean)
    # another teacher file (other weights, same name): its parts are not reused either
    monkeypatch.undo()
    _flaky(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        make_soft_labels(lm, tpath, utts, seqs, out, k=2, chunk=2, progress=False)
    monkeypatch.undo()
    lm2, _ = _teacher(tmp_path, seed=5)  # overwrites teacher.pt
    calls = _flaky(monkeypatch, 99)
    assert make_soft_labels(lm2, tpath, utts, seqs, out, k=2, chunk=2,
                            progress=False)["reused_parts"] == 0
    assert len(calls) == 3
    s = seqs[2]
    _check_entry(_load(out)["utts"]["c"], s, 2, lambda i: _mlm_row(lm2, s, i))


# ------------------------------------------------------------------------ SoftLabels
def test_soft_labels_lookup(tmp_path):
    lm, tpath = _teacher(tmp_path)
    out = tmp_path / "soft.pt"
    make_soft_labels(lm, tpath, ["cut-A", "cut-B"], [[1, 2, 3], [4]], out, k=3,
                     progress=False)
    stored = _load(out)["utts"]["cut-A"]
    sl = SoftLabels(out)
    assert sl.k == 3 and sl.vocab_size == V and sl.teacher_kind == "mlm"
    ids, probs = sl.lookup("cut-A", [1, 2, 3])
    assert ids.dtype == torch.int64 and torch.equal(ids, stored["ids"].long())
    assert torch.allclose(probs, stored["probs"], atol=1e-6)
    ids, probs = sl.lookup("cut-A", [1, 2, 3], 2)
    assert torch.equal(ids, stored["ids"][:, :2].long())
    # a speed-perturbed copy (lhotse's id) has its source's labels; other suffixes do not
    assert torch.equal(sl.lookup("cut-A_sp0.9", [1, 2, 3], 2)[0], ids)
    assert sl.lookup("cut-A_rvb", [1, 2, 3]) is None
    p = stored["probs"][:, :2]
    assert torch.allclose(probs, p / p.sum(1, keepdim=True), atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(3), atol=1e-6)
    ids, probs = sl.lookup("cut-A", [1, 2, 3], 1)
    assert torch.equal(probs, torch.ones(3, 1))
    assert sl.lookup("cut-C", [1]) is None
    with pytest.raises(ValueError, match="cut-B") as e:
        sl.lookup("cut-B", [4, 4])
    assert "another transcript" in str(e.value)
    with pytest.raises(ValueError, match="distill_k 4"):
        sl.lookup("cut-A", [1, 2, 3], 4)
    sl.check_vocab(V)
    with pytest.raises(ValueError) as e:
        sl.check_vocab(9)
    assert f"over {V} classes" in str(e.value) and "has 9" in str(e.value)
    with pytest.raises(ValueError, match="not a soft-label file"):
        SoftLabels(tpath)
    with pytest.raises(ValueError, match="does not exist"):
        SoftLabels(tmp_path / "missing.pt")


# ------------------------------------------------------------------------ the KL term
def _teacher_topk(B, L, k, seed, vocab=V):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(vocab, generator=g)[:k] for _ in range(B * L)])
    probs = torch.randn(B * L, k, generator=g, dtype=torch.float64).softmax(-1)
    return ids.reshape(B, L, k), probs.reshape(B, L, k)


def test_kl_zero_when_the_student_is_the_teacher():
    ids, probs = _teacher_topk(2, 4, 3, 0)
    logits = torch.full((2, 4, V), -1e4, dtype=torch.float64)
    logits.scatter_(2, ids, probs.log())
    tgt = torch.tensor([[1, 2, 0, -1], [3, 0, -1, -1]])
    kl = AttentionLoss.kl(logits, tgt, ids, probs)
    assert abs(float(kl)) < 1e-5
    # another student: positive
    assert float(AttentionLoss.kl(torch.zeros(2, 4, V), tgt, ids, probs)) > 0.1


def test_kl_against_torch_kl_div():
    B, L, k = 3, 5, 3
    ids, probs = _teacher_topk(B, L, k, 1)
    probs[0, 1, 2] = 0.0  # a zero teacher probability: 0 log 0 = 0
    probs[0, 1] /= probs[0, 1].sum()
    probs[2, 0] = 0.0  # no teacher at this position: no KL
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64)
    tgt = torch.tensor([[1, 2, 3, 4, 0], [5, 0, -1, -1, -1], [2, 2, 0, -1, -1]])
    full = torch.zeros(B, L, V, dtype=torch.float64).scatter(2, ids, probs)
    per_pos = F.kl_div(logits.log_softmax(-1), full, reduction="none").sum(-1)
    ref = float(per_pos[tgt >= 0].sum())
    got = AttentionLoss.kl(logits, tgt, ids, probs)  # computed in float32
    assert float(got) == pytest.approx(ref, rel=1e-6)
    # the gradient too (torch's on the full distribution)
    x = logits.clone().requires_grad_()
    AttentionLoss.kl(x, tgt, ids, probs).backward()
    y = logits.clone().requires_grad_()
    F.kl_div(y.log_softmax(-1), full, reduction="none").sum(-1)[tgt >= 0].sum().backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-6)


def _loss_inputs(seed=3):
    g = torch.Generator().manual_seed(seed)
    B, T = 3, 9
    seqs = [[1, 2, 3], [4], [5, 5]]
    ys_out = torch.tensor([[1, 2, 3, 0], [4, 0, -1, -1], [5, 5, 0, -1]])
    logits = torch.randn(B, 4, V, generator=g, dtype=torch.float64)
    ctc_lp = torch.randn(B, T, V, generator=g, dtype=torch.float64).log_softmax(-1)
    lens = torch.tensor([9, 8, 6])
    ctc = float(F.ctc_loss(ctc_lp.transpose(0, 1), torch.tensor([1, 2, 3, 4, 5, 5]), lens,
                           torch.tensor([3, 1, 2]), reduction="sum"))
    return seqs, ys_out, logits, ctc_lp, lens, ctc


def test_distill_loss_against_torch():
    seqs, ys_out, logits, ctc_lp, lens, ctc = _loss_inputs()
    ids, probs = _teacher_topk(3, 4, 2, 4)
    cw, ls, lam = 0.3, 0.1, 0.4
    base, base_info = AttentionLoss(cw, ls)(logits, ys_out, ctc_lp, lens, seqs)
    zero, _ = AttentionLoss(cw, ls, distill_weight=0.0)(logits, ys_out, ctc_lp, lens, seqs,
                                                        ids, probs)
    assert torch.equal(zero, base)
    loss, info = AttentionLoss(cw, ls, distill_weight=lam)(logits, ys_out, ctc_lp, lens, seqs,
                                                           ids, probs)
    ce = float(F.cross_entropy(logits.reshape(-1, V), ys_out.reshape(-1), ignore_index=-1,
                               label_smoothing=ls, reduction="sum"))
    lp = logits.log_softmax(-1)
    kl = 0.0
    for b in range(3):
        for i in range(int((ys_out[b] >= 0).sum())):
            for j in range(2):
                p = float(probs[b, i, j])
                kl += p * (torch.tensor(p).log().item() - float(lp[b, i, ids[b, i, j]]))
    assert info["ce_loss"] == pytest.approx(ce, rel=1e-6)
    assert info["kl_loss"] == pytest.approx(kl, rel=1e-6)
    att = (1 - lam) * ce + lam * kl
    assert info["att_loss"] == pytest.approx(att, rel=1e-6)
    assert float(loss) == pytest.approx((1 - cw) * att + cw * ctc, rel=1e-6)
    assert info["ctc_loss"] == pytest.approx(ctc, rel=1e-6)
    assert base_info["att_loss"] == pytest.approx(ce, rel=1e-6)
    # one-hot teachers, lambda 1, no smoothing: the cross-entropy
    one_ids = ys_out.clamp(min=0)[..., None]
    one_p = (ys_out >= 0).double()[..., None]
    loss1, _ = AttentionLoss(0.0, 0.0, distill_weight=1.0)(logits, ys_out, ctc_lp, lens, seqs,
                                                           one_ids, one_p)
    ref = F.cross_entropy(logits.reshape(-1, V), ys_out.reshape(-1), ignore_index=-1,
                          reduction="sum")
    assert float(loss1) == pytest.approx(float(ref), rel=1e-6)
    with pytest.raises(ValueError, match="soft labels"):
        AttentionLoss(distill_weight=0.5)(logits, ys_out, ctc_lp, lens, seqs)
    with pytest.raises(ValueError, match="distill_weight"):
        AttentionLoss(distill_weight=1.5)


def test_distill_loss_skips_ctc_excluded_utterances():
    seqs, ys_out, logits, ctc_lp, lens, _ = _loss_inputs(5)
    lens = torch.tensor([9, 8, 1])  # 1 frame cannot emit "5 5": the utterance is excluded
    ids, probs = _teacher_topk(3, 4, 2, 6)
    loss_fn = AttentionLoss(0.0, 0.0, distill_weight=0.5)
    _, info = loss_fn(logits, ys_out, ctc_lp, lens, seqs, ids, probs)
    assert info["excluded"] == [2]
    kept = ys_out.clone()
    kept[2] = -1
    full = torch.zeros(3, 4, V, dtype=torch.float64).scatter(2, ids, probs)
    ref = F.kl_div(logits.log_softmax(-1), full, reduction="none").sum(-1)[kept >= 0].sum()
    assert info["kl_loss"] == pytest.approx(float(ref), rel=1e-6)
    assert info["tokens"] == 6


# ------------------------------------------------------------------------ criterion
def _asr(vocab=V):
    torch.manual_seed(0)
    m = build_model("blstm_attention", 5, vocab, hidden=8, num_layers=1, d_model=16, nhead=2,
                    decoder_layers=1, dim_feedforward=32, decoder_dropout=0.0, dropout=0.0)
    return m.eval()


def _cfg(path, **kw):
    num_classes = kw.pop("num_classes", V)
    opts = {"ctc_weight": 0.3, "label_smoothing": 0.1, "distill_weight": 0.5,
            "soft_labels": str(path) if path else None, **kw}
    return {"loss": "attention", "num_classes": num_classes, "loss_kwargs": opts}


def test_criterion_with_soft_labels(tmp_path):
    lm, tpath = _teacher(tmp_path)
    soft = tmp_path / "soft.pt"
    make_soft_labels(lm, tpath, ["c1", "c2"], [[1, 2, 3], [4, 5]], soft, k=3, progress=False)
    model = _asr()
    crit = build_loss(_cfg(soft, distill_k=2), model)
    assert isinstance(crit, AttentionCriterion) and crit.distill_k == 2
    # the trainer's targets: supervision order differs from the sequences'
    batch = {"features": torch.zeros(2, 1, 5),
             "supervisions": {"sequence_idx": torch.tensor([1, 0]), "tokens": [[2, 2], [1, 2, 3]],
                              "cut_id": ["zz", "c1"]}}
    seqs = batch_targets(batch)
    assert isinstance(seqs, TokenSeqs) and seqs == [[1, 2, 3], [2, 2]]
    assert seqs.cut_ids == ["c1", "zz"]
    x = torch.randn(2, 20, 5)
    with torch.no_grad():
        mem, lens = model(x, torch.tensor([20, 15]))
        loss, info = crit(mem, lens, seqs)
        assert info["no_teacher"] == 1  # zz is not in the file
        # the reference, written out
        ys_in = torch.tensor([[0, 1, 2, 3], [0, 2, 2, 0]])
        lp = model.decoder(mem, lens, ys_in).double().log_softmax(-1)
        ctc_lp = model.ctc_log_probs(mem).double()
    targets = [[1, 2, 3, 0], [2, 2, 0]]
    stored = _load(soft)["utts"]["c1"]
    ce = kl = 0.0
    for b, tg in enumerate(targets):
        for i, y in enumerate(tg):
            ce += -0.9 * float(lp[b, i, y]) - 0.1 / V * float(lp[b, i].sum())
            if b == 0 and i < 3:  # the file's top-2, renormalised
                p = stored["probs"][i, :2].double()
                p = p / p.sum()
                kl += float((p * (p.log() - lp[b, i, stored["ids"][i, :2].long()])).sum())
            else:  # <eos> and a cut without soft labels: one-hot
                kl += -float(lp[b, i, y])
    ctc = float(F.ctc_loss(ctc_lp.transpose(0, 1), torch.tensor([1, 2, 3, 2, 2]), lens,
                           torch.tensor([3, 2]), reduction="sum"))
    assert info["ce_loss"] == pytest.approx(ce, rel=1e-5)
    assert info["kl_loss"] == pytest.approx(kl, rel=1e-5)
    assert float(loss) == pytest.approx(0.7 * (0.5 * ce + 0.5 * kl) + 0.3 * ctc, rel=1e-5)
    # a plain list (no cut ids): every sequence gets the one-hot teacher
    with torch.no_grad():
        _, info2 = crit(mem, lens, [[1, 2, 3], [2, 2]])
    assert info2["no_teacher"] == 2
    onehot = -sum(float(lp[b, i, y]) for b, tg in enumerate(targets) for i, y in enumerate(tg))
    assert info2["kl_loss"] == pytest.approx(onehot, rel=1e-5)
    # a stale file: the cut's transcript changed
    stale = TokenSeqs([[1, 2, 4], [2, 2]])
    stale.cut_ids = ["c1", None]
    with pytest.raises(ValueError, match="c1"):
        crit(mem, lens, stale)


def test_build_attention_distill_options(tmp_path):
    lm, tpath = _teacher(tmp_path)
    soft = tmp_path / "soft.pt"
    make_soft_labels(lm, tpath, ["c1"], [[1, 2]], soft, k=3, progress=False)
    model7 = _asr(7)
    with pytest.raises(ValueError) as e:
        build_loss(_cfg(soft, num_classes=7), model7)
    assert f"over {V} classes" in str(e.value) and "has 7" in str(e.value)
    model = _asr()
    with pytest.raises(ValueError, match="soft_labels"):
        build_loss(_cfg(None), model)
    with pytest.raises(ValueError, match="distill_k must be in 1..3"):
        build_loss(_cfg(soft, distill_k=4), model)
    # no distillation: the file is not needed, the criterion is the plain one
    crit = build_loss(_cfg(None, distill_weight=0.0), model)
    assert crit.soft_labels is None and crit.loss.distill_weight == 0.0
    mem, lens = model(torch.randn(1, 12, 5), torch.tensor([12]))
    _, info = crit(mem, lens, [[1, 2]])
    assert "no_teacher" not in info and "kl_loss" not in info


# ------------------------------------------------------------------------ CLI
def test_cli_soft_labels(tmp_path, capsys):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("<blk> 0\na 1\nb 2\nc 3\nd 4\ne 5\n#0 6\n")
    table = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    # speed-perturbed copies: c1_sp0.9 (source present) is left out, c9_sp1.1 (none) kept
    pert = [("c1_sp0.9", "a b c"), ("c9_sp1.1", "a")]
    pcuts = tmp_path / "pcuts.jsonl.gz"
    CutSet.from_cuts([MonoCut(id=c, start=0, duration=1, channel=0, supervisions=[
        SupervisionSegment(id=c, recording_id=c, start=0, duration=1, text=t)])
        for c, t in [("c1", "a b c"), *pert]]).to_file(pcuts)
    assert cut_token_seqs(pcuts, "text", table) == (["c1", "c9_sp1.1"], [[1, 2, 3], [1]])
    sup = [("c1", "a b c"), ("c2", ""), ("c3", "e d")]
    cuts = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts([MonoCut(id=c, start=0, duration=1, channel=0, supervisions=[
        SupervisionSegment(id=c, recording_id=c, start=0, duration=1, text=t,
                           custom={"ph": t.split()})]) for c, t in sup]).to_file(cuts)
    assert cut_token_seqs(cuts, "ph", table) == (["c1", "c2", "c3"], [[1, 2, 3], [], [5, 4]])
    with pytest.raises(ValueError, match="no supervision field 'zz'"):
        cut_token_seqs(cuts, "zz", table)
    with pytest.raises(ValueError, match="cut c3: unit 'e'"):
        cut_token_seqs(cuts, "text", {"a": 1, "b": 2, "c": 3, "d": 4})
    # a teacher as train-mlm writes it
    from wfst_asr.train.textlm import train_text_lm

    exp = tmp_path / "exp"
    train_text_lm([([], [1, 2, 3], []), ([], [5, 4], [])], [([], [1, 2], [])], V, exp,
                  epochs=1, model_kwargs=SMALL)
    teacher = exp / "textlm.pt"
    out = tmp_path / "soft.pt"
    assert cli.main(["soft-labels", "--teacher", str(teacher), "--cuts", str(cuts),
                     "--tokens", str(tokens), "--field", "ph", "--k", "2", "--out", str(out),
                     "--no-progress"]) == 0
    assert f"of 2 utterances, 5 tokens -> {out}; 1 skipped (1 empty" in capsys.readouterr().out
    sl = SoftLabels(out)
    assert sl.k == 2 and set(sl.utts) == {"c1", "c3"}
    # a teacher over another vocabulary: one line, exit 2
    tokens.write_text("<blk> 0\na 1\nb 2\n")
    assert cli.main(["soft-labels", "--teacher", str(teacher), "--cuts", str(cuts),
                     "--tokens", str(tokens), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wfst-asr soft-labels: error:")
    assert "6 classes" in err[0] and "gives 3" in err[0]
