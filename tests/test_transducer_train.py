"""Transducer training through the trainer: the ``blstm_transducer`` model, the ``transducer``
loss of the registry, the ``timit.transducer_blstm`` configuration, ``wfst-asr train`` (and
torchrun) on the synthetic task of test_train.py, and the batched modified beam search against
a one-utterance-at-a-time reference written here.

The loss values are checked against :class:`~wfst_asr.losses.TransducerLoss` called by hand on
the model's own pieces (the loss itself is checked against DPs in test_transducer.py).
"""

from __future__ import annotations

import inspect
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import timit_conf

from tests.reference import ctc_forward_dp
from tests.test_train import F, _write_cuts
from wfst_asr.decode.transducer import beam_search, greedy_search
from wfst_asr.losses import TransducerLoss
from wfst_asr.models import MODELS, Blstm, BlstmTransducer, Joiner, StatelessDecoder, add_sos
from wfst_asr.train import (
    apply_overrides,
    build_model_from_config,
    load_checkpoint,
    load_config,
)
from wfst_asr.train.build import build_model_and_loss
from wfst_asr.train.config import CtcBlstm
from wfst_asr.train.criteria import LOSSES, TransducerCriterion

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("data")
    tokens = folder / "tokens.txt"
    tokens.write_text("<blk> 0\na 1\nb 2\nc 3\nd 4\n#0 5\n")
    return {"train_cuts": str(_write_cuts(folder, "train", 24, 0)),
            "dev_cuts": str(_write_cuts(folder, "dev", 6, 1)), "tokens": str(tokens)}


def _sets(data, exp: Path, *extra: str) -> list[str]:
    sets = {**data, "token_field": "phones", "num_features": F, "model.hidden": 16,
            "model.num_layers": 1, "model.encoder_dim": 16, "model.decoder_dim": 8,
            "model.joiner_dim": 16, "subsampling": 1, "spec_augment": "false", "cmvn": "",
            "schedule": "none", "lr": 0.01, "max_duration": 0.8, "bucketing": "false",
            "tensorboard": "false", "average_last": 2, "model.dropout": 0.0}
    args = ["train", "--config", timit_conf("transducer_blstm"), "--exp-dir", str(exp)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return args + list(extra)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


# ----------------------------------------------------------------------------- model
def test_blstm_transducer_model():
    assert MODELS["blstm_transducer"] is BlstmTransducer
    torch.manual_seed(0)
    model = BlstmTransducer(8, 6, hidden=8, num_layers=2, subsampling=3, encoder_dim=10,
                            decoder_dim=4, joiner_dim=5).eval()
    x, lens = torch.randn(3, 20, 8), torch.tensor([20, 13, 4])
    enc, out_lens = model(x, lens)
    assert enc.shape == (3, 6, 10) and out_lens.tolist() == [6, 4, 1]
    assert torch.equal(out_lens, model.output_lengths(lens))
    assert model.subsampling_factor == 3 and model.num_classes == 6 and model.num_features == 8
    # the encoder output is the BLSTM's output layer, without the log-softmax of forward()
    lp, _ = model.encoder(x, lens)
    torch.testing.assert_close(lp, enc.log_softmax(-1))
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"encoder", "head"}
    assert model.decoder is model.head.decoder and model.joiner is model.head.joiner
    assert isinstance(model.encoder, Blstm)


def test_blstm_logits_is_forward_before_log_softmax():
    torch.manual_seed(1)
    m = Blstm(5, 7, hidden=6, num_layers=2, subsampling=2).eval()
    x, lens = torch.randn(2, 9, 5), torch.tensor([9, 6])
    s, n1 = m.logits(x, lens)
    lp, n2 = m(x, lens)
    torch.testing.assert_close(lp, s.log_softmax(-1))
    assert torch.equal(n1, n2)


def test_loss_registry_and_criterion(data):
    cfg = apply_overrides(load_config(timit_conf("transducer_blstm")), [
        f"tokens={data['tokens']}", "model.hidden=8", "model.num_layers=1", "num_features=8",
        "model.encoder_dim=6", "model.decoder_dim=4", "model.joiner_dim=5", "loss.s_range=3",
        "model.dropout=0", "model.aux_ctc=false", "loss.ctc_scale=0", "train_cuts="])
    assert cfg.loss_kwargs["s_range"] == 3 and isinstance(cfg.loss_kwargs["s_range"], int)
    keys = set(LOSSES["transducer"].options)
    assert keys == set(inspect.signature(TransducerLoss).parameters) | {"ctc_scale"}
    torch.manual_seed(0)
    model, crit, _ = build_model_and_loss(cfg)
    assert isinstance(crit, TransducerCriterion) and cfg.num_classes == 5
    assert list(crit.parameters()) == [] and crit.reduction == "sum"
    assert crit.loss.pruned and crit.loss.s_range == 3 and crit.loss.lm_only_scale == 0.25
    model = model.double()
    x, lens = torch.randn(3, 12, 8, dtype=torch.float64), torch.tensor([12, 9, 7])
    ys = [[1, 2, 3], [4], [2, 2]]
    enc, out_lens = model(x, lens)
    loss, info = crit(enc, out_lens, ys)
    # by hand: the head's pieces and TransducerLoss
    dec = model.head.decoder(add_sos(ys))
    want, _ = crit.loss(enc, out_lens, dec, ys, model.head.joiner,
                        model.head.simple_am_proj(enc), model.head.simple_lm_proj(dec))
    torch.testing.assert_close(loss, want)
    assert info["num_utts"] == 3 and info["num_excluded"] == 0
    assert info["frames"] == int(out_lens.sum())
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all())
               for p in model.parameters())
    # full loss: same value as TransducerLoss(pruned=False), and every parameter still gets a
    # gradient (zero for the simple projections), as DDP needs
    model.zero_grad(set_to_none=True)
    full = TransducerCriterion(model, TransducerLoss(pruned=False))
    enc, out_lens = model(x, lens)
    loss, _ = full(enc, out_lens, ys)
    want, _ = TransducerLoss(pruned=False)(enc, out_lens, model.head.decoder(add_sos(ys)), ys,
                                           model.head.joiner)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert float(model.head.simple_am_proj.weight.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="transducer model"):
        TransducerCriterion(Blstm(8, 5), TransducerLoss())
    with pytest.raises(ValueError, match="aux_ctc"):
        TransducerCriterion(model, TransducerLoss(), ctc_scale=0.3)


def test_aux_ctc_loss(data):
    cfg = apply_overrides(load_config(timit_conf("transducer_blstm")), [
        f"tokens={data['tokens']}", "model.hidden=8", "model.num_layers=1", "num_features=8",
        "model.encoder_dim=6", "model.decoder_dim=4", "model.joiner_dim=5", "model.dropout=0",
        "model.aux_ctc=true", "loss.ctc_scale=0.3", "train_cuts="])
    assert cfg.loss_kwargs["ctc_scale"] == 0.3 and cfg.model_kwargs["aux_ctc"] is True
    torch.manual_seed(0)
    model, crit, _ = build_model_and_loss(cfg)
    model = model.double()
    assert crit.ctc_scale == 0.3 and list(crit.parameters()) == []
    x, lens = torch.randn(3, 12, 8, dtype=torch.float64), torch.tensor([12, 9, 7])
    ys = [[1, 2, 3], [4], [2, 2]]
    enc, out_lens = model(x, lens)
    loss, info = crit(enc, out_lens, ys)
    dec, simple_am, simple_lm = model.head(enc, ys)
    rnnt, _ = crit.loss(enc, out_lens, dec, ys, model.joiner, simple_am, simple_lm)
    # CTC reference: the DP of tests/reference.py over the auxiliary output; [2, 2] needs 3
    # frames but has 2 (7 frames stacked by 3): CTC leaves it out, the transducer keeps it
    assert out_lens.tolist() == [4, 3, 2]
    lp = model.ctc_output(enc).log_softmax(-1)
    ctc = -sum(ctc_forward_dp(lp[b, :int(out_lens[b])], ys[b]) for b in range(2))
    assert math.isinf(float(ctc_forward_dp(lp[2, :2], ys[2])))
    torch.testing.assert_close(loss, rnnt + 0.3 * ctc)
    assert info["ctc_loss"] == pytest.approx(float(ctc)) and info["ctc_excluded"] == 1
    assert info["num_excluded"] == 0
    loss.backward()
    assert float(model.ctc_output.weight.grad.abs().sum()) > 0
    # the CTC output without its loss still gets a (zero) gradient
    model.zero_grad(set_to_none=True)
    crit0 = TransducerCriterion(model, TransducerLoss(), ctc_scale=0.0)
    enc, out_lens = model(x, lens)
    crit0(enc, out_lens, ys)[0].backward()
    assert all(p.grad is not None for p in model.parameters())
    assert float(model.ctc_output.weight.grad.abs().sum()) == 0.0


def test_timit_transducer_config():
    cfg = load_config(timit_conf("transducer_blstm"))
    assert isinstance(cfg, CtcBlstm) and cfg.model == "blstm_transducer"
    assert cfg.loss == "transducer" and cfg.exp_dir == "exp/transducer_blstm"
    assert cfg.subsampling == 3 and cfg.token_field == "phones_48"
    assert cfg.loss_kwargs["pruned"] is True and cfg.loss_kwargs["s_range"] == 5
    assert cfg.model_kwargs["aux_ctc"] is True and cfg.loss_kwargs["ctc_scale"] == 0.3
    assert cfg.lr == 4e-3
    with pytest.raises(ValueError, match="loss.s_range"):
        apply_overrides(cfg, ["loss.srange=4"])
    with pytest.raises(ValueError, match="model.joiner_dim"):
        apply_overrides(cfg, ["model.joiner=4"])
    # the model of the configuration builds, 49 outputs over the 48 phones
    apply_overrides(cfg, ["num_classes=49", "tokens=", "train_cuts="])
    model, crit, _ = build_model_and_loss(cfg)
    assert model.num_classes == 49 and model.encoder.subsampling_factor == 3
    assert model.ctc_output.out_features == 49 and crit.ctc_scale == 0.3


# ----------------------------------------------------------------------------- training
def test_train_cli_decreases_loss_and_resumes(data, tmp_path):
    exp = tmp_path / "exp"
    cmd = [sys.executable, "-m", "wfst_asr.bin.cli"]
    out = subprocess.run(cmd + _sets(data, exp, "--set", "num_epochs=3"), check=False,
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    hist = load_checkpoint(exp / "epoch-3.pt")["history"]
    assert hist[2]["train_loss"] < hist[0]["train_loss"]
    assert hist[2]["dev_loss"] < hist[0]["dev_loss"]
    assert hist[-1]["skipped_steps"] == 0
    assert (exp / "averaged.pt").is_file()
    out = subprocess.run(cmd + _sets(data, exp, "--set", "num_epochs=4", "--resume"),
                         check=False, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [h["epoch"] for h in load_checkpoint(exp / "epoch-4.pt")["history"]] == [1, 2, 3, 4]
    # decoding rebuilds the model from the saved configuration (strict state-dict loading)
    state = load_checkpoint(exp / "averaged.pt")
    model = build_model_from_config(state["config"])
    model.load_state_dict(state["model"])
    assert state["config"]["loss"] == "transducer" and isinstance(model, BlstmTransducer)


@pytest.mark.skipif(os.environ.get("WFST_ASR_SKIP_SLOW") == "1",
                    reason="slow (about 10 s): WFST_ASR_SKIP_SLOW=1")
def test_slow_torchrun_two_processes(data, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun is not available")
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m",
                          "wfst_asr.bin.cli", *_sets(data, tmp_path / "two", "--set",
                                                     "num_epochs=2")],
                         check=False, env=_env(), capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    h = load_checkpoint(tmp_path / "two" / "epoch-2.pt")["history"]
    assert h[1]["train_loss"] < h[0]["train_loss"] and h[1]["skipped_steps"] == 0


# ----------------------------------------------------------------------------- beam search
@torch.no_grad()
def _ref_beam(decoder, joiner, enc, T, beam):
    """Modified beam search over one utterance, written with Python lists."""
    V = joiner.output_linear.out_features
    C = decoder.context_size
    hyps = {(): 0.0}
    for t in range(T):
        ext = []
        for s, sc in hyps.items():
            ctx = ([0] * C + list(s))[-C:]
            d = decoder(torch.tensor([ctx]), need_pad=False)[0, -1]
            lp = joiner(enc[t], d).log_softmax(-1).double().tolist()
            ext += [(sc + lp[v], s if v == 0 else s + (v,)) for v in range(V)]
        ext.sort(key=lambda e: -e[0])
        new: dict[tuple, float] = {}
        for sc, key in ext[:beam]:
            new[key] = sc if key not in new else math.log(math.exp(new[key]) + math.exp(sc))
        hyps = new
    return list(max(hyps.items(), key=lambda kv: kv[1])[0])


@pytest.mark.parametrize("beam", [1, 2, 4, 7])
def test_batched_beam_search_matches_reference(beam):
    V = 5
    torch.manual_seed(beam)
    decoder, joiner = StatelessDecoder(V, 4), Joiner(6, 4, 8, V)
    with torch.no_grad():
        joiner.output_linear.bias[0] -= 1.0
    enc = torch.randn(4, 9, 6) * 2
    lens = [9, 6, 1, 0]
    got = beam_search(decoder, joiner, enc, lens, beam=beam)
    assert got == [_ref_beam(decoder, joiner, enc[b], lens[b], beam) for b in range(4)]
    assert got[3] == [] and any(len(h) > 1 for h in got)
    if beam == 1:
        assert got == greedy_search(decoder, joiner, enc, lens)
