"""Transformer text LMs (models.textlm, train.textlm), LM fusion in the attention beam search
(decode.attention) and ``wfst-asr train-mlm``, against explicit loops written out here,
torch's ctc_loss and hand-written expectations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wfst_asr.bin import cli
from wfst_asr.decode.attention import attention_greedy, attention_nbest
from wfst_asr.models import build_model
from wfst_asr.models.attention import decoder_io
from wfst_asr.models.textlm import MaskedLm, TransformerLm, mlm_input
from wfst_asr.train.textlm import (
    TEXT_LM_FILE,
    context_windows,
    load_text_lm,
    read_unit_text,
    text_lm_metrics,
    train_text_lm,
)

V = 7
SMALL = {"d_model": 16, "nhead": 2, "num_layers": 2, "dim_feedforward": 32, "dropout": 0.0,
         "max_len": 32}


def _causal(seed: int = 0, vocab: int = V) -> TransformerLm:
    torch.manual_seed(seed)
    return TransformerLm(vocab, **SMALL).eval()


def _mlm(seed: int = 0, vocab: int = V) -> MaskedLm:
    torch.manual_seed(seed)
    return MaskedLm(vocab, **SMALL).eval()


@torch.no_grad()
def _next_lp(lm: TransformerLm, prefix: list[int]) -> torch.Tensor:
    """``log p(. | <sos> prefix)`` by one unbatched forward, read at the last position."""
    ids = torch.tensor([[0, *prefix]])
    return lm(ids, torch.tensor([ids.shape[1]]))[0, -1]


@torch.no_grad()
def _masked_lp(lm: MaskedLm, utt: list[int], i: int, left=(), right=()) -> torch.Tensor:
    """``log p(. | utt with position i masked, context)``: the input built by hand
    (``left [SEP] utt [SEP] right``, segments 0 / 1), one unbatched forward."""
    ids = list(utt)
    ids[i] = lm.mask_id
    segs = [1] * len(utt)
    off = 0
    if left or right:
        ids = [*left, lm.sep_id, *ids, lm.sep_id, *right]
        segs = [0] * len(left) + [1] * (len(utt) + 2) + [0] * len(right)
        off = len(left) + 1
    out = lm(torch.tensor([ids]), torch.tensor([len(ids)]), torch.tensor([segs]))
    return out[0, off + i]


# ------------------------------------------------------------------------ causal LM
def test_causal_score_equals_stepwise_next_log_probs():
    lm = _causal()
    seqs = [[3, 1, 4], [], [5], [2, 2, 6, 1, 1]]
    got = lm.score(seqs, batch_size=3)  # two chunks, padded within the first
    assert got.dtype == torch.float64 and got.shape == (4,)
    for n, s in enumerate(seqs):
        ref = 0.0
        for i, y in enumerate([*s, 0]):  # the tokens, then <eos> = 0
            ref += float(_next_lp(lm, s[:i])[y])
        assert float(got[n]) == pytest.approx(ref, abs=1e-5)
        # next_log_probs of the prefix (a [1, L] batch) is the same distribution
        assert torch.allclose(lm.next_log_probs(torch.tensor([[0, *s]]))[0],
                              _next_lp(lm, s), atol=1e-6)
    assert not lm.training
    with pytest.raises(ValueError, match="id 7"):
        lm.score([[1, 7]])
    with pytest.raises(ValueError, match="id 0"):
        lm.score([[0]])


@torch.no_grad()
def test_causal_lm_incremental_step_equals_forward():
    """TransformerLm.step (cached keys / values) gives forward's log-probs at every position;
    select reorders prefixes."""
    lm = _causal(7)
    ys = torch.tensor([[0, 3, 1, 4, 2], [0, 2, 2, 1, 3]])
    with torch.no_grad():
        full = lm(ys, torch.tensor([5, 5]))
        state = lm.init_state(2)
        for t in range(5):
            lp, state = lm.step(state, ys[:, t])
            assert torch.allclose(lp, full[:, t], atol=1e-5)
        state = lm.init_state(2)
        for t in range(3):
            _, state = lm.step(state, ys[:, t])
        lp, _ = lm.step(state.select(torch.tensor([1, 1])), ys[[1, 1], 3])
        assert torch.allclose(lp, full[[1, 1], 3], atol=1e-5)


def test_causal_lm_is_causal_and_ignores_padding():
    lm = _causal(1)
    ids = torch.tensor([[0, 3, 1, 4, 2, 5]])
    lens = torch.tensor([6])
    out = lm(ids, lens)
    ids2 = ids.clone()
    ids2[0, 3] = 6
    out2 = lm(ids2, lens)
    assert torch.allclose(out2[:, :3], out[:, :3], atol=1e-6)  # earlier positions unchanged
    assert not torch.allclose(out2[:, 3:], out[:, 3:], atol=1e-4)  # it does see the token
    # a shorter sequence padded in a batch: its valid positions as alone
    pad = torch.tensor([[0, 2, 2, 0, 0, 0], [0, 3, 1, 4, 2, 5]])
    both = lm(pad, torch.tensor([3, 6]))
    assert torch.allclose(both[0, :3], lm(pad[:1, :3], torch.tensor([3]))[0], atol=1e-5)
    assert torch.allclose(both[1], out[0], atol=1e-5)
    assert torch.allclose(out.exp().sum(-1), torch.ones(1, 6), atol=1e-5)


# ------------------------------------------------------------------------ masked LM
def test_pseudo_log_likelihood_equals_one_masked_forward_per_position():
    lm = _mlm()
    seqs = [[3, 1, 4], [5], [2, 2, 6, 1, 1], []]
    got = lm.pseudo_log_likelihood(seqs, batch_size=3)  # chunks split sequences
    assert got.dtype == torch.float64
    for n, s in enumerate(seqs):
        ref = sum(float(_masked_lp(lm, s, i)[y]) for i, y in enumerate(s))
        assert float(got[n]) == pytest.approx(ref, abs=1e-5)
    assert float(got[3]) == 0.0
    # masked_log_probs (one padded batch) = the hand-masked unbatched forwards
    inputs = [(s, [1] * len(s), i) for s in seqs[:3] for i in range(len(s))]
    with torch.no_grad():
        lp = lm.masked_log_probs(inputs)
    assert lp.shape == (len(inputs), V)
    for row, (s, _, i) in zip(lp, inputs):
        assert torch.allclose(row, _masked_lp(lm, list(s), i), atol=1e-5)
    # class 0 (blank / <eos>) is never predicted; the rest is a distribution
    assert torch.all(lp[:, 0] == float("-inf"))
    assert torch.allclose(lp.exp().sum(1), torch.ones(len(inputs)), atol=1e-5)
    with pytest.raises(ValueError, match="sequence 1: id 9"):
        lm.pseudo_log_likelihood([[1], [9]])


def test_mlm_input_and_context_is_seen():
    lm = _mlm(2)
    utt, left, right = [3, 1, 4], [2, 6], [5]
    assert mlm_input(utt) == ([3, 1, 4], [1, 1, 1], 0)
    ids, segs, off = mlm_input(utt, left, right, lm.sep_id)
    assert ids == [2, 6, lm.sep_id, 3, 1, 4, lm.sep_id, 5]
    assert segs == [0, 0, 1, 1, 1, 1, 1, 0]
    assert off == 3 and ids[off:off + 3] == utt
    assert mlm_input(utt, [], [6], lm.sep_id) == ([lm.sep_id, 3, 1, 4, lm.sep_id, 6],
                                                   [1, 1, 1, 1, 1, 0], 1)
    with pytest.raises(ValueError, match="sep"):
        mlm_input(utt, left, right)
    with torch.no_grad():
        for i in range(3):
            a = lm.masked_log_probs([(ids, segs, off + i)])[0]
            assert torch.allclose(a, _masked_lp(lm, utt, i, left, right), atol=1e-5)
            ids_b, segs_b, off_b = mlm_input(utt, [4, 4], right, lm.sep_id)
            b = lm.masked_log_probs([(ids_b, segs_b, off_b + i)])[0]
            assert not torch.allclose(a, b, atol=1e-4)  # other context, other distribution
            alone = lm.masked_log_probs([(utt, [1] * 3, i)])[0]
            assert not torch.allclose(a, alone, atol=1e-4)


# ------------------------------------------------------------------------ context
def test_context_windows_by_chapter():
    utts = ["ch2-003", "ch1-002", "ch1-001", "ch2-001", "misc", "ch1-003"]
    seqs = [[1, 2], [3, 4, 5], [6], [5, 6, 1], [2], [4, 4]]
    rx = r"^(ch\d+)-"
    got = context_windows(utts, seqs, rx, 2)
    assert got == [
        ([6, 1], [1, 2], []),          # ch2-003: after ch2-001
        ([6], [3, 4, 5], [4, 4]),      # ch1-002
        ([], [6], [3, 4]),             # ch1-001: first; the nearest 2 of the next
        ([], [5, 6, 1], [1, 2]),       # ch2-001
        ([], [2], []),                 # no chapter: no context
        ([4, 5], [4, 4], []),          # ch1-003: the nearest 2 of ch1-001 + ch1-002
    ]
    got = context_windows(utts, seqs, rx, 3)
    assert got[5] == ([3, 4, 5], [4, 4], []) and got[2] == ([], [6], [3, 4, 5])
    got = context_windows(utts, seqs, rx, 10)
    assert got[5] == ([6, 3, 4, 5], [4, 4], []) and got[2] == ([], [6], [3, 4, 5, 4, 4])
    assert got[1] == ([6], [3, 4, 5], [4, 4])
    none = [([], s, []) for s in seqs]
    assert context_windows(utts, seqs, None, 5) == none
    assert context_windows(utts, seqs, rx, 0) == none
    assert context_windows(utts, seqs, r"^zz(\d)", 5) == none


# ------------------------------------------------------------------------ text
def test_read_unit_text(tmp_path):
    table = {"a": 1, "b": 2, "c": 3}
    p = tmp_path / "text"
    p.write_text("u1 a b\nu2\n\nu3 c a  \nu4\n")
    assert read_unit_text(p, table) == (["u1", "u3"], [[1, 2], [3, 1]], 2)
    p.write_text("u1 a b\n\nu2 c\nu3 a zz b\n")
    with pytest.raises(ValueError) as e:
        read_unit_text(p, table, "tokens.txt")
    msg = str(e.value)
    assert f"{p}:4" in msg and "'zz'" in msg and "tokens.txt" in msg


def _corpus(n: int, seed: int) -> list[tuple[list[int], list[int], list[int]]]:
    """Cyclic token runs ``a, a+1, ...`` (mod 6, ids 1..6) of 2..6 tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        a = int(torch.randint(0, 6, (1,), generator=g))
        k = int(torch.randint(2, 7, (1,), generator=g))
        out.append(([], [(a + j) % 6 + 1 for j in range(k)], []))
    return out


def test_train_causal_lm_and_its_metrics(tmp_path):
    train, dev = _corpus(16, 0), _corpus(5, 1)
    kw = dict(SMALL, num_layers=1)
    lm, rec = train_text_lm(train, dev, V, tmp_path, kind="causal", epochs=3, batch_size=4,
                            lr=1e-2, model_kwargs=kw, meta={"tokens_checksum": "x"})
    assert isinstance(lm, TransformerLm) and not lm.training
    assert (tmp_path / TEXT_LM_FILE).is_file()
    assert len(rec["history"]) == 3 and 1 <= rec["best_epoch"] <= 3
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["dev_loss"])
               for r in rec["history"])
    # perplexity per token, <eos> included; next-token accuracy over the tokens
    seqs = [e[1] for e in dev]
    total, right = 0.0, 0
    for s in seqs:
        for i, y in enumerate([*s, 0]):
            lp = _next_lp(lm, s[:i])
            total += float(lp[y])
            right += int(i < len(s) and int(lp.argmax()) == y)
    n_tok = sum(len(s) for s in seqs)
    assert rec["tokens"] == n_tok + len(seqs)
    assert rec["ppl"] == pytest.approx(math.exp(-total / (n_tok + len(seqs))), rel=1e-5)
    assert rec["ppl"] == pytest.approx(
        math.exp(-float(lm.score(seqs).sum()) / (n_tok + len(seqs))), rel=1e-9)
    assert right > 0 and rec["accuracy"] == pytest.approx(100.0 * right / n_tok)
    # the saved model is the returned one
    lm2 = load_text_lm(tmp_path / TEXT_LM_FILE)
    assert isinstance(lm2, TransformerLm) and not lm2.training
    assert lm2.meta == {"tokens_checksum": "x"} and lm2.record["ppl"] == rec["ppl"]
    ids = torch.tensor([[0, 3, 4, 5, 6], [0, 1, 2, 0, 0]])
    lens = torch.tensor([5, 3])
    with torch.no_grad():
        assert torch.equal(lm2(ids, lens), lm(ids, lens))


def test_train_mlm_with_context_and_its_metrics(tmp_path):
    train = _corpus(16, 2)
    dev = [([6], [1, 2, 3], [4, 5]), ([], [3, 4], [5]), ([2, 3], [4, 5, 6, 1], []),
           ([], [2, 3], [])]
    lm, rec = train_text_lm(train, dev, V, tmp_path, kind="mlm", epochs=3, batch_size=4,
                            lr=1e-2, model_kwargs=dict(SMALL, num_layers=1))
    assert isinstance(lm, MaskedLm) and (tmp_path / TEXT_LM_FILE).is_file()
    assert all(math.isfinite(r["dev_loss"]) for r in rec["history"])
    total, right, count = 0.0, 0, 0
    for left, utt, right_ctx in dev:
        for i, y in enumerate(utt):
            lp = _masked_lp(lm, utt, i, left, right_ctx)
            total += float(lp[y])
            right += int(int(lp.argmax()) == y)
            count += 1
    assert rec["tokens"] == count == 11 and right > 0
    assert rec["ppl"] == pytest.approx(math.exp(-total / count), rel=1e-5)
    assert rec["accuracy"] == pytest.approx(100.0 * right / count)
    assert text_lm_metrics(lm, dev, batch_size=3) == pytest.approx(
        {k: rec[k] for k in ("ppl", "accuracy", "tokens")}, rel=1e-6)
    lm2 = load_text_lm(tmp_path / TEXT_LM_FILE)
    assert isinstance(lm2, MaskedLm)
    ids = torch.tensor([[6, lm.sep_id, 1, lm.mask_id, 3, lm.sep_id, 4]])
    segs = torch.tensor([[0, 1, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        assert torch.equal(lm2(ids, torch.tensor([7]), segs), lm(ids, torch.tensor([7]), segs))


def test_train_text_lm_rejects_bad_input(tmp_path):
    kw = dict(SMALL, num_layers=1, max_len=4)
    ok = [([], [1, 2], [])]
    with pytest.raises(ValueError, match="max_len 4"):
        train_text_lm(ok + [([], [1, 2, 3, 4, 5], [])], ok, V, tmp_path, kind="mlm",
                      epochs=1, model_kwargs=kw)
    with pytest.raises(ValueError, match="max_len 4"):  # with the context
        train_text_lm(ok, [([1, 2], [3], [4])], V, tmp_path, kind="mlm", epochs=1,
                      model_kwargs=kw)
    with pytest.raises(ValueError, match="max_len 4"):  # <sos> + 4 tokens
        train_text_lm(ok, [([], [1, 2, 3, 4], [])], V, tmp_path, kind="causal", epochs=1,
                      model_kwargs=kw)
    with pytest.raises(ValueError, match="id 7"):
        train_text_lm([([], [1, 7], [])], ok, V, tmp_path, epochs=1, model_kwargs=kw)
    with pytest.raises(ValueError, match="kind"):
        train_text_lm(ok, ok, V, tmp_path, kind="bert", epochs=1, model_kwargs=kw)
    with pytest.raises(ValueError, match="empty"):
        train_text_lm([], ok, V, tmp_path, epochs=1, model_kwargs=kw)
    assert not (tmp_path / TEXT_LM_FILE).exists()


# ------------------------------------------------------------------------ beam search
def _asr(seed: int = 0, vocab: int = V):
    torch.manual_seed(seed)
    m = build_model("blstm_attention", 5, vocab, hidden=8, num_layers=1, d_model=16, nhead=2,
                    decoder_layers=1, dim_feedforward=32, decoder_dropout=0.0, dropout=0.0)
    m.eval()
    x = torch.randn(2, 24, 5)
    with torch.no_grad():
        mem, lens = m(x, torch.tensor([24, 17]))
        ctc = m.ctc_log_probs(mem)
    return m, mem, lens, ctc


@torch.no_grad()
def _att_log_prob(m, mem, lens, b: int, tokens: list[int], eos: bool = True) -> float:
    ys_in, ys_out = decoder_io([tokens])
    lp = m.decoder(mem[b:b + 1], lens[b:b + 1], ys_in).log_softmax(-1)[0]
    tgt = ys_out[0, :len(tokens) + int(eos)]
    return float(lp[torch.arange(len(tgt)), tgt].sum())


def _ctc_ref(ctc, lens, b: int, tokens: list[int]) -> float:
    T = int(lens[b])
    loss = F.ctc_loss(ctc[b:b + 1, :T].transpose(0, 1).double(),
                      torch.tensor([tokens], dtype=torch.long).reshape(1, -1),
                      torch.tensor([T]), torch.tensor([len(tokens)]), reduction="none")
    return -float(loss[0])


def test_beam_search_with_ctc_and_lm_fusion_parts():
    m, mem, lens, ctc = _asr()
    lm = _causal(3)
    cw, lw, bonus = 0.3, 0.5, 0.2
    # max_len past the frames: CTC rules out longer prefixes, so every hypothesis ends at <eos>
    max_len = int(lens.max()) + 2
    out = attention_nbest(m.decoder, mem, lens, beam=3, max_len=max_len, ctc_log_probs=ctc,
                          ctc_weight=cw, lm=lm, lm_weight=lw, length_bonus=bonus)
    assert len(out) == 2
    for b, hyps in enumerate(out):
        assert 1 <= len(hyps) <= 3
        norm = [h.score / (len(h.tokens) + 1) for h in hyps]
        assert norm == sorted(norm, reverse=True)
        for h in hyps:
            assert all(0 < t < V for t in h.tokens) and len(h.tokens) <= int(lens[b])
            assert h.att == pytest.approx(_att_log_prob(m, mem, lens, b, h.tokens), abs=1e-4)
            assert h.ctc == pytest.approx(_ctc_ref(ctc, lens, b, h.tokens), abs=1e-4)
            assert h.lm == pytest.approx(float(lm.score([h.tokens])[0]), abs=1e-4)
            ref = (1 - cw) * h.att + cw * h.ctc + lw * h.lm + bonus * len(h.tokens)
            assert h.score == pytest.approx(ref, abs=1e-4)
    with pytest.raises(ValueError, match="CTC"):
        attention_nbest(m.decoder, mem, lens, ctc_weight=0.3)


def test_beam_search_cut_at_max_len_scores_full_ctc():
    """A hypothesis cut at max_len (no <eos>) carries the full CTC log-prob in its score."""
    m, mem, lens, ctc = _asr()
    cw = 0.5
    out = attention_nbest(m.decoder, mem, lens, beam=3, max_len=2, ctc_log_probs=ctc,
                          ctc_weight=cw)
    cut = 0
    for b, hyps in enumerate(out):
        for h in hyps:
            assert h.ctc == pytest.approx(_ctc_ref(ctc, lens, b, h.tokens), abs=1e-4)
            assert h.score == pytest.approx((1 - cw) * h.att + cw * h.ctc, abs=1e-4)
            cut += len(h.tokens) == 2
    assert cut > 0


def test_beam_search_lm_weight_zero_and_beam_one():
    m, mem, lens, ctc = _asr(1)
    lm = _causal(4)
    plain = attention_nbest(m.decoder, mem, lens, beam=3, max_len=6, ctc_log_probs=ctc,
                            ctc_weight=0.4)
    zero = attention_nbest(m.decoder, mem, lens, beam=3, max_len=6, ctc_log_probs=ctc,
                           ctc_weight=0.4, lm=lm, lm_weight=0.0)
    assert zero == plain  # dataclass equality: tokens, score, att, ctc, lm (0: no LM)
    assert all(h.lm == 0.0 for hyps in zero for h in hyps)
    # beam 1 without CTC or LM is greedy
    greedy = attention_greedy(m.decoder, mem, lens, max_len=6)
    one = attention_nbest(m.decoder, mem, lens, beam=1, length_norm=False, max_len=6)
    assert [h[0].tokens for h in one] == greedy
    # beam 1 with the LM: the argmax of att + lw * lm at every step, written out
    lw = 0.7
    fused = attention_nbest(m.decoder, mem, lens, beam=1, length_norm=False, max_len=6,
                            lm=lm, lm_weight=lw)
    for b in range(2):
        toks: list[int] = []
        while len(toks) < 6:
            ys_in, _ = decoder_io([toks])
            with torch.no_grad():
                att = m.decoder(mem[b:b + 1], lens[b:b + 1], ys_in)[0, -1].log_softmax(-1)
            nxt = int((att.double() + lw * _next_lp(lm, toks).double()).argmax())
            if nxt == 0:
                break
            toks.append(nxt)
        assert fused[b][0].tokens == toks


# ------------------------------------------------------------------------ CLI
def _tokens_txt(path) -> None:
    path.write_text("<blk> 0\na 1\nb 2\nc 3\nd 4\n#0 5\n#1 6\n")


SMALL_CLI = ["--epochs", "1", "--d-model", "16", "--nhead", "2", "--num-layers", "1",
             "--dim-feedforward", "32", "--dropout", "0", "--batch-size", "4"]


def test_cli_train_mlm(tmp_path, capsys):
    tokens, text = tmp_path / "tokens.txt", tmp_path / "text"
    _tokens_txt(tokens)
    units = "abcd"
    text.write_text("".join(f"ch1-{n:03d} " + " ".join(units[(n + j) % 4] for j in range(3))
                            + "\n" for n in range(12)) + "ch1-999\n")
    exp = tmp_path / "exp"
    assert cli.main(["train-mlm", str(text), str(tokens), str(exp), *SMALL_CLI,
                     "--context-tokens", "2", "--chapter-regex", r"^(ch\d+)-"]) == 0
    cap = capsys.readouterr()
    # a random tenth (1 of 12) held out: 3 tokens
    assert "dev (1 utterances, 3 tokens): pseudo-perplexity" in cap.out
    assert "masked-token accuracy" in cap.out and f"{exp}/textlm.pt" in cap.out
    assert "skipped 1 empty transcripts" in cap.err
    lm = load_text_lm(exp / TEXT_LM_FILE)
    assert isinstance(lm, MaskedLm) and lm.vocab_size == 5  # blank + a b c d (no #0, #1)
    assert lm.meta["context_tokens"] == 2 and lm.meta["chapter_regex"] == r"^(ch\d+)-"
    assert lm.kwargs["d_model"] == 16 and lm.kwargs["num_layers"] == 1
    # the causal objective ignores the context options
    exp2 = tmp_path / "exp2"
    assert cli.main(["train-mlm", str(text), str(tokens), str(exp2), *SMALL_CLI,
                     "--objective", "causal", "--dev-text", str(text),
                     "--context-tokens", "2", "--chapter-regex", r"^(ch\d+)-"]) == 0
    out = capsys.readouterr().out
    assert "dev (12 utterances, 48 tokens): perplexity" in out  # 36 tokens + 12 <eos>
    lm2 = load_text_lm(exp2 / TEXT_LM_FILE)
    assert isinstance(lm2, TransformerLm) and lm2.meta["context_tokens"] == 0


def test_cli_train_mlm_unknown_unit(tmp_path, capsys):
    tokens, text = tmp_path / "tokens.txt", tmp_path / "text"
    _tokens_txt(tokens)
    text.write_text("u1 a b\nu2 c q d\n")
    assert cli.main(["train-mlm", str(text), str(tokens), str(tmp_path / "exp"),
                     *SMALL_CLI]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wfst-asr train-mlm: error:")
    assert f"{text}:2" in err[0] and "'q'" in err[0]
    assert not (tmp_path / "exp" / TEXT_LM_FILE).exists()
    # --oov skip: the line is left out, counted and named; training goes on
    text.write_text("u1 a b\nu2 c q d\nu3 b c d\nu4 a d\n")
    assert cli.main(["train-mlm", str(text), str(tokens), str(tmp_path / "exp"),
                     *SMALL_CLI, "--oov", "skip"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 transcripts with a unit not in" in err and f"{text}:2 ('q')" in err
    assert (tmp_path / "exp" / TEXT_LM_FILE).is_file()
