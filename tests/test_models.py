"""Encoders (wfst_asr.models): shapes, output lengths vs subsampled_lengths / supervision
segments, padding invariance, the registry and check_output_dim."""

from __future__ import annotations

import pytest
import torch

from wfst_asr.data import supervision_segments
from wfst_asr.models import Blstm, TdnnLstm, build_model, check_output_dim
from wfst_asr.models.subsampling import subsampled_lengths

F, V = 5, 7
LENS = [13, 9, 4, 1, 12]

CONFIGS = [
    ("blstm", {"hidden": 8, "num_layers": 2, "subsampling": s, "subsample_type": t,
               "subsample_after": a})
    for s in (1, 2, 3, 4) for t in ("concat", "stride") for a in (0, 1)
] + [
    ("tdnn_lstm", {"tdnn_dim": 8, "dilations": (1, 2), "lstm_hidden": 8, "lstm_layers": 1,
                   "subsampling": s, "bidirectional": bi})
    for s in (1, 2, 3, 4) for bi in (False, True)
]


def _ids(cfg):
    name, kw = cfg
    return name + "-" + "-".join(f"{k[:6]}{v}" for k, v in kw.items() if k.startswith("sub")
                                 or k == "bidirectional")


def _make(name, kw, seed=0):
    torch.manual_seed(seed)
    return build_model(name, F, V, **kw).eval()


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_shapes_and_lengths(cfg):
    name, kw = cfg
    model = _make(name, kw)
    T = max(LENS) + 2  # extra padding past the longest utterance
    x = torch.randn(len(LENS), T, F)
    lens = torch.tensor(LENS)
    with torch.no_grad():
        lp, out_lens = model(x, lens)
    s, mode = model.subsampling_factor, model.subsampling_mode
    assert s == kw["subsampling"]
    assert lp.shape == (len(LENS), int(subsampled_lengths(torch.tensor(T), s, mode)), V)
    assert out_lens.tolist() == subsampled_lengths(lens, s, mode).tolist()
    assert out_lens.tolist() == model.output_lengths(lens).tolist()
    # log_softmax outputs
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.shape[:2]))
    # supervision segments built with the model's rule fit its output
    batch = {"feature_lens": lens, "supervisions": {
        "sequence_idx": torch.arange(len(LENS)), "start_frame": torch.zeros(len(LENS)),
        "num_frames": lens}}
    segs = supervision_segments(batch, model)
    assert segs[:, 2].tolist() == out_lens.tolist()
    assert int((segs[:, 1] + segs[:, 2]).max()) <= lp.shape[1]


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_padding_invariance(cfg):
    name, kw = cfg
    model = _make(name, kw)
    T = max(LENS) + 3
    x = torch.randn(len(LENS), T, F)
    for b, n in enumerate(LENS):  # garbage in the padding must not matter
        x[b, n:] = 100.0
    lens = torch.tensor(LENS)
    with torch.no_grad():
        lp, out_lens = model(x, lens)
        for b, n in enumerate(LENS):
            lp1, ol1 = model(x[b:b + 1, :n], lens[b:b + 1])
            m = int(ol1)
            assert m == int(out_lens[b])
            torch.testing.assert_close(lp[b, :m], lp1[0, :m], atol=1e-5, rtol=0)


def test_zero_length_utterance_and_grad():
    model = Blstm(F, V, hidden=4, num_layers=2, subsampling=2)
    x = torch.randn(3, 6, F, requires_grad=True)
    lp, out_lens = model(x, torch.tensor([6, 0, 1]))
    assert out_lens.tolist() == [3, 0, 0]
    lp[0].sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[1:].abs().sum() == 0  # nothing flows across the batch


def test_bad_input_raises():
    model = TdnnLstm(F, V, tdnn_dim=4, lstm_hidden=4, lstm_layers=1)
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(2, 5, F + 1), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="lens"):
        model(torch.randn(2, 5, F), torch.tensor([6, 5]))
    with pytest.raises(ValueError, match="subsampling"):
        Blstm(F, V, subsampling=5)


def test_registry_and_check_output_dim():
    model = build_model("blstm", F, V, hidden=4, num_layers=1)
    assert isinstance(model, Blstm)
    check_output_dim(model, V)
    check_output_dim(model, ["<blk>"] + [f"p{i}" for i in range(V - 1)])
    with pytest.raises(ValueError, match=r"7 outputs but there are 8 tokens"):
        check_output_dim(model, V + 1)
    with pytest.raises(ValueError, match="tokens"):
        build_model("tdnn_lstm", F, V, num_tokens=V - 1, tdnn_dim=4, lstm_hidden=4)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", F, V)


@pytest.mark.parametrize("bidirectional,num_layers", [(True, 1), (True, 2), (False, 3)])
def test_run_lstm_equals_torch_packed_lstm(bidirectional, num_layers):
    """The padded, per-direction LSTM equals torch's own LSTM on packed sequences (the
    reference), outputs and gradients, in float64; zero-length sequences give zeros."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from wfst_asr.models.encoders import _run_lstm
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 4, num_layers=num_layers, bidirectional=bidirectional,
                         batch_first=True).double()
    lens = torch.tensor([9, 4, 0, 7, 1])
    x = torch.randn(5, 9, 5, dtype=torch.float64, requires_grad=True)
    got = _run_lstm(lstm, x, lens)
    nz = lens > 0
    packed = pack_padded_sequence(x[nz], lens[nz], batch_first=True, enforce_sorted=False)
    ref_nz, _ = pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=9)
    ref = torch.zeros_like(got)
    ref[nz] = ref_nz
    assert torch.allclose(got, ref, atol=1e-12)
    w = torch.randn_like(ref)
    params = [x, *lstm.parameters()]
    g_got = torch.autograd.grad((got * w).sum(), params)
    g_ref = torch.autograd.grad((ref * w).sum(), params)
    for a, b in zip(g_got, g_ref):
        assert torch.allclose(a, b, atol=1e-10)
    assert got[2].abs().max() == 0 and got[4, 1:].abs().max() == 0
