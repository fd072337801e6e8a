"""Attention encoder-decoder (models.attention, losses.attention, decode.attention): decoder
masks, the joint loss against torch's cross-entropy and ctc_loss written out here, searches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wfst_asr.decode.attention import attention_beam_search, attention_greedy
from wfst_asr.losses.attention import AttentionLoss
from wfst_asr.models import build_model
from wfst_asr.models.attention import decoder_io


def _model(seed=0, V=6):
    torch.manual_seed(seed)
    m = build_model("blstm_attention", 5, V, hidden=8, num_layers=1, d_model=16, nhead=2,
                    decoder_layers=2, dim_feedforward=32, decoder_dropout=0.0, dropout=0.0)
    return m.eval()


def test_decoder_io():
    ys_in, ys_out = decoder_io([[3, 1], [], [2]])
    assert ys_in.tolist() == [[0, 3, 1], [0, 0, 0], [0, 2, 0]]
    assert ys_out.tolist() == [[3, 1, 0], [0, -1, -1], [2, 0, -1]]


def test_decoder_is_causal_and_ignores_padded_frames():
    m = _model()
    mem = torch.randn(2, 7, 16)
    lens = torch.tensor([7, 4])
    ys = torch.tensor([[0, 3, 1, 2], [0, 2, 2, 5]])
    out = m.decoder(mem, lens, ys)
    ys2 = ys.clone()
    ys2[:, 3] = 4  # a later token changes nothing before it
    assert torch.allclose(m.decoder(mem, lens, ys2)[:, :3], out[:, :3], atol=1e-6)
    mem2 = mem.clone()
    mem2[1, 4:] = 100.0  # frames past an utterance's end change nothing
    assert torch.allclose(m.decoder(mem2, lens, ys)[1], out[1], atol=1e-5)


def test_incremental_decode_equals_teacher_forcing():
    """AttentionDecoder.step (cached keys / values, one position per step) gives the logits of
    the full teacher-forced forward at every position; padded frames stay masked; selecting
    hypotheses (with repeats) keeps each one's state."""
    m = _model(3)
    mem = torch.randn(3, 9, 16)
    lens = torch.tensor([9, 5, 7])
    ys = torch.randint(1, 6, (3, 6))
    ys[:, 0] = 0
    with torch.no_grad():
        full = m.decoder(mem, lens, ys)
        state = m.decoder.init_state(mem, lens)
        steps = []
        for t in range(ys.shape[1]):
            logits, state = m.decoder.step(state, ys[:, t])
            steps.append(logits)
        assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)
        mem2 = mem.clone()
        mem2[1, 5:] = 50.0
        st2 = m.decoder.init_state(mem2, lens)
        assert torch.allclose(m.decoder.step(st2, ys[:, 0])[0], steps[0], atol=1e-5)
        # reorder after two steps: rows 2, 0, 0 go on as the prefixes they hold
        state = m.decoder.init_state(mem, lens)
        for t in range(2):
            _, state = m.decoder.step(state, ys[:, t])
        idx = torch.tensor([2, 0, 0])
        state = state.select(idx)
        nxt, _ = m.decoder.step(state, ys[idx, 2])
        assert torch.allclose(nxt, full[idx, 2], atol=1e-5)


def test_sequence_log_probs_and_ctc_collapse():
    """The rescoring scores: log P(y <eos>) of each sequence given one utterance, equal to the
    sum of the incremental decoder's log-softmax along y then <eos>; a CTC label path's tokens
    (repeats merged, blanks and the final -1 dropped)."""
    from wfst_asr.train.rescoring import ctc_collapse

    m = _model(4)
    mem = torch.randn(1, 8, 16)
    seqs = [[3, 1, 1], [], [5], [2, 4, 2, 4]]
    got = m.decoder.sequence_log_probs(mem[0], 6, seqs, batch_size=3)
    for s, g in zip(seqs, got.tolist()):
        with torch.no_grad():
            state = m.decoder.init_state(mem[:, :6], torch.tensor([6]))
            total, prev = 0.0, 0
            for y in [*s, 0]:
                logits, state = m.decoder.step(state, torch.tensor([prev]))
                total += float(logits.double().log_softmax(-1)[0, y])
                prev = y
        assert g == pytest.approx(total, abs=1e-4)
    assert ctc_collapse([0, 3, 3, 0, 3, 1, 1, 0, 0, 2, -1]) == [3, 3, 1, 2]
    assert ctc_collapse([0, 0, -1]) == [] and ctc_collapse([4, 4, 4]) == [4]


def test_max_len_ratio_caps_the_searches():
    """Without <eos> (made improbable) every search stops at ceil(ratio * frames) tokens."""
    m = _model(5)
    with torch.no_grad():
        m.decoder.output.bias[0] = -1e4
    mem, lens = torch.randn(2, 9, 16), torch.tensor([9, 5])
    g = attention_greedy(m.decoder, mem, lens, max_len_ratio=0.5)
    assert [len(x) for x in g] == [5, 5]  # batched: the longest utterance's limit
    b = attention_beam_search(m.decoder, mem, lens, beam=2, max_len_ratio=0.5)
    assert [len(x) for x in b] == [5, 3]  # per utterance
    assert [len(x) for x in attention_greedy(m.decoder, mem, lens)] == [9, 9]


def test_joint_loss_against_torch():
    torch.manual_seed(0)
    B, T, V = 3, 9, 6
    logits = torch.randn(B, 4, V, dtype=torch.float64)
    ctc_lp = torch.randn(B, T, V, dtype=torch.float64).log_softmax(-1)
    lens = torch.tensor([9, 8, 6])
    seqs = [[1, 2, 3], [4], [5, 5]]
    _, ys_out = decoder_io(seqs)
    for w, ls in ((0.3, 0.1), (0.0, 0.0), (1.0, 0.2)):
        loss, info = AttentionLoss(ctc_weight=w, label_smoothing=ls)(
            logits, ys_out, ctc_lp, lens, seqs)
        lp = logits.log_softmax(-1)
        att = 0.0
        for b, s in enumerate(seqs):
            for i, y in enumerate([*s, 0]):
                att += -(1 - ls) * float(lp[b, i, y]) - ls / V * float(lp[b, i].sum())
        ctc = float(F.ctc_loss(ctc_lp.transpose(0, 1), torch.tensor([1, 2, 3, 4, 5, 5]),
                               lens, torch.tensor([3, 1, 2]), reduction="sum"))
        assert info["att_loss"] == pytest.approx(att, rel=1e-6)
        assert info["ctc_loss"] == pytest.approx(ctc, rel=1e-6)
        assert float(loss) == pytest.approx((1 - w) * att + w * ctc, rel=1e-6)
        assert info["tokens"] == 3 + 1 + 2 + 3


def test_greedy_equals_beam_one_and_beam_is_no_worse():
    m = _model(1)
    x = torch.randn(3, 12, 5)
    lens = torch.tensor([12, 9, 5])
    mem, out_lens = m(x, lens)
    greedy = attention_greedy(m.decoder, mem, out_lens, max_len=6)
    assert attention_beam_search(m.decoder, mem, out_lens, beam=1, length_norm=False,
                                 max_len=6) == greedy

    @torch.no_grad()
    def logprob(b, seq):
        ys_in, ys_out = decoder_io([seq])
        lp = m.decoder(mem[b:b + 1, :int(out_lens[b])], out_lens[b:b + 1], ys_in).log_softmax(-1)
        ended = len(seq) < 6  # a hypothesis cut at max_len has no <eos>
        tgt = ys_out[0, :len(seq) + int(ended)]
        return float(lp[0, torch.arange(len(tgt)), tgt].sum())

    beam = attention_beam_search(m.decoder, mem, out_lens, beam=4, length_norm=False,
                                 max_len=6)
    for b in range(3):
        assert logprob(b, beam[b]) >= logprob(b, greedy[b]) - 1e-5
        assert all(0 < t < 6 for t in beam[b])


def test_registered_config_trains_a_step():
    from wfst_asr.train.build import build_model_from_config
    from wfst_asr.train.config import load_config
    from wfst_asr.train.criteria import AttentionCriterion, build_loss

    cfg = load_config("attention_blstm")
    cfg.num_features, cfg.num_classes = 5, 6
    cfg.model_kwargs.update(hidden=8, num_layers=1, d_model=16, nhead=2, dim_feedforward=32)
    model = build_model_from_config(cfg)
    crit = build_loss(cfg, model)
    assert isinstance(crit, AttentionCriterion) and crit.loss.ctc_weight == 0.3
    x = torch.randn(2, 30, 5)
    mem, lens = model(x, torch.tensor([30, 21]))
    loss, info = crit(mem, lens, [[1, 2, 3], [4, 5]])
    loss.backward()
    assert math.isfinite(float(loss.detach())) and info["num_excluded"] == 0
    assert all(p.grad is not None for p in model.decoder.parameters() if p.requires_grad)
