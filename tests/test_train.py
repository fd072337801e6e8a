"""wfst_asr.train: config registry/overrides, checkpoints, the Trainer, resume, averaging, DDP.

Data: a tiny synthetic task written as a real lhotse ``CutSet`` with precomputed features
(lhotse's ``NumpyFilesWriter`` in ``tmp_path``, lossless, so runs are bit-reproducible): each
cut is a sequence of 3-5 phones from {a, b, c, d}; every phone lasts 5-8 frames of an 8-dim
feature whose mean depends on the phone (plus noise), and the supervision carries the phones as
a string in ``custom["phones"]`` mapped through a ``tokens.txt`` (as TIMIT's ``phones_48``).
The models are a 1-layer BLSTM of 16 cells, so an epoch takes a fraction of a second.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import timit_conf
from lhotse import CutSet, Features, MonoCut, SupervisionSegment
from lhotse.features.io import NumpyFilesWriter

from wfst_asr.bin.train_cmd import build
from wfst_asr.train import (
    CheckpointError,
    ExperimentConfig,
    Trainer,
    apply_overrides,
    average_checkpoints,
    get_config,
    list_configs,
    load_checkpoint,
    load_config,
    register,
    save_checkpoint,
    seed_everything,
)

REPO = Path(__file__).resolve().parent.parent
PHONES = ["a", "b", "c", "d"]
F = 8


def _write_cuts(folder: Path, name: str, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    means = np.eye(len(PHONES), F, dtype=np.float32) * 3.0
    cuts = []
    with NumpyFilesWriter(folder / f"feats_{name}") as writer:
        for i in range(n):
            phones = [PHONES[k] for k in rng.integers(0, len(PHONES), rng.integers(3, 6))]
            frames = [np.repeat(means[PHONES.index(p)][None], rng.integers(5, 9), 0)
                      for p in phones]
            x = np.concatenate(frames) + rng.normal(0, 0.5, (sum(map(len, frames)), F))
            cid = f"{name}{i}"
            key = writer.write(cid, x.astype(np.float32))
            dur = x.shape[0] * 0.01
            feats = Features(type="synthetic", num_frames=x.shape[0], num_features=F,
                             frame_shift=0.01, sampling_rate=16000, start=0.0, duration=dur,
                             storage_type=writer.name, storage_path=str(writer.storage_path),
                             storage_key=key)
            sup = SupervisionSegment(id=cid, recording_id=cid, start=0.0, duration=dur,
                                     custom={"phones": " ".join(phones)})
            cuts.append(MonoCut(id=cid, start=0.0, duration=dur, channel=0,
                                supervisions=[sup], features=feats))
    path = folder / f"cuts_{name}.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(path)
    return path


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: tiny models are far faster so, and the 2 shared cores are not
    oversubscribed (the subprocesses get OMP_NUM_THREADS=1)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("data")
    tokens = folder / "tokens.txt"
    tokens.write_text("<blk> 0\n" + "".join(f"{p} {i}\n" for i, p in enumerate(PHONES, 1))
                      + "#0 5\n")
    return {"train_cuts": str(_write_cuts(folder, "train", 24, 0)),
            "dev_cuts": str(_write_cuts(folder, "dev", 6, 1)), "tokens": str(tokens)}


@register("test.tiny_blstm")
class TinyBlstm(ExperimentConfig):
    token_field: str = "phones"
    num_features: int = F
    model: str = "blstm"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"hidden": 16, "num_layers": 1, "dropout": 0.1})
    max_duration: float = 1.6
    bucketing: bool = False
    spec_augment: bool = True
    lr: float = 1e-2
    num_epochs: int = 2
    average_last: int = 2
    tensorboard: bool = False
    seed: int = 3


@register("test.tiny_tdnn")
class TinyTdnn(TinyBlstm):
    model: str = "tdnn_lstm"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"tdnn_dim": 16, "dilations": (1, 2), "lstm_hidden": 16,
                                 "lstm_layers": 1})
    schedule: str = "noam"


def _cfg(data, exp_dir, name="test.tiny_blstm", *overrides) -> ExperimentConfig:
    cfg = get_config(name)
    apply_overrides(cfg, [f"{k}={v}" for k, v in data.items()] + [f"exp_dir={exp_dir}",
                                                                  *overrides])
    return cfg


def _trainer(cfg) -> Trainer:
    seed_everything(cfg.seed)
    model, loss, train_dl, dev_dl, table = build(cfg)
    return Trainer(cfg, model, loss, train_dl, dev_dl, "cpu", token_table=table)


# --------------------------------------------------------------------------- config


def test_registry_inheritance_and_overrides():
    assert {"ctc_blstm", "tdnn_lstm", "hmm_blstm", "mmi_blstm", "transducer_blstm",
            "test.tiny_tdnn"} <= set(list_configs())
    assert not any(n.startswith("timit") for n in list_configs())  # recipes own their configs
    tdnn, blstm = load_config(timit_conf("ctc_tdnn_lstm")), load_config(timit_conf("ctc_blstm"))
    assert tdnn.name == "timit.ctc_tdnn_lstm" and tdnn.model == "tdnn_lstm"
    assert tdnn.token_field == blstm.token_field == "phones_48"  # inherited
    assert get_config("test.tiny_tdnn").lr == 1e-2 and get_config("test.tiny_tdnn").schedule \
        == "noam"
    cfg = apply_overrides(load_config(timit_conf("ctc_blstm")), [
        "lr=5e-4", "num_epochs=3", "spec_augment=false", "max_cuts=7", "model.hidden=128",
        "exp_dir=/x/y", "model.subsample_type=stride", "max_cuts=none"])
    assert cfg.lr == 5e-4 and isinstance(cfg.num_epochs, int) and cfg.spec_augment is False
    assert cfg.model_kwargs["hidden"] == 128 and cfg.model_kwargs["subsample_type"] == "stride"
    assert cfg.max_cuts is None and cfg.exp_dir == "/x/y"
    apply_overrides(tdnn, ["model.dilations=1,2,3", "loss.modified=true"])
    assert tdnn.model_kwargs["dilations"] == (1, 2, 3) and tdnn.loss_kwargs["modified"] is True
    assert load_config(timit_conf("ctc_blstm")).lr != 5e-4  # fresh instances, no shared state
    apply_overrides(cfg, ["specaug.time_warp_factor=0", "specaug.p=0.5"])
    assert cfg.spec_augment_kwargs["time_warp_factor"] == 0
    assert cfg.spec_augment_kwargs["p"] == 0.5
    assert load_config(timit_conf("ctc_blstm")).spec_augment_kwargs.get("p") != 0.5
    with pytest.raises(ValueError, match="specaug.num_frame_masks"):
        apply_overrides(cfg, ["specaug.num_frame_mask=2"])
    with pytest.raises(ValueError, match="valid keys.*max_duration"):
        apply_overrides(cfg, ["max_durration=3"])
    with pytest.raises(ValueError, match="model.hidden"):
        apply_overrides(cfg, ["model.hiden=3"])
    with pytest.raises(ValueError, match="boolean"):
        apply_overrides(cfg, ["spec_augment=maybe"])
    with pytest.raises(ValueError):
        apply_overrides(cfg, ["num_epochs=2.5"])
    with pytest.raises(ValueError, match="unknown config"):
        get_config("timit.nope")


@pytest.mark.parametrize("name", ["ctc_blstm", "transducer_blstm"])
def test_output_dim_must_match_token_table(tmp_path, name):
    """CTC and transducer: blank + the token ids of ``tokens``; any other num_classes is an
    error at build time that names the tokens file and the right value."""
    from wfst_asr.train import build_model_and_loss

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("<blk> 0\na 1\nb 2\nc 3\n")
    sets = [f"tokens={tokens}", "train_cuts=", "model.hidden=4", "model.num_layers=1", "num_features=8"]
    for bad in (3, 7):
        cfg = apply_overrides(load_config(timit_conf(name)), sets + [f"num_classes={bad}"])
        with pytest.raises(ValueError, match=f"tokens.txt.*needs 4 network outputs.*"
                                             f"num_classes is {bad}"):
            build_model_and_loss(cfg)
    for good in (0, 4):  # 0: from the table
        cfg = apply_overrides(load_config(timit_conf(name)), sets + [f"num_classes={good}"])
        _, _, table = build_model_and_loss(cfg)
        assert cfg.num_classes == 4 and table["c"] == 3


def test_config_logged_and_saved(data, tmp_path, caplog):
    cfg = _cfg(data, tmp_path / "exp", "test.tiny_blstm", "num_epochs=1", "average_last=0",
               "tensorboard=true")
    with caplog.at_level("INFO", logger="wfst_asr.train"):
        _trainer(cfg).fit()
    saved = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert saved == cfg.to_dict() and saved["model_kwargs"]["hidden"] == 16
    assert type(cfg).from_dict(saved) == cfg
    for key in cfg.to_dict():
        assert f"  {key} = " in caplog.text
    assert list((tmp_path / "exp" / "tensorboard").glob("events.out.tfevents.*"))
    assert not list((tmp_path / "exp").glob(".tmp-*"))


# --------------------------------------------------------------------------- checkpoints


def test_two_epochs_decrease_loss_and_write_checkpoints(data, tmp_path):
    exp = tmp_path / "exp"
    history = _trainer(_cfg(data, exp, "test.tiny_tdnn")).fit()
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[1]["dev_loss"] < history[0]["dev_loss"]
    names = {p.name for p in exp.iterdir()}
    assert {"epoch-1.pt", "epoch-2.pt", "best.pt", "averaged.pt", "config.json"} <= names
    assert not [n for n in names if n.startswith(".tmp-")]
    state = torch.load(exp / "epoch-2.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step_in_epoch"] > 0 and state["sampler"] is not None
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] > 0
    assert isinstance(state["rng"]["torch"], torch.Tensor)


def test_corrupted_checkpoint_clear_error(tmp_path):
    good = tmp_path / "epoch-1.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(1000)}})
    bad = tmp_path / "epoch-2.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"epoch-2\.pt.*corrupted or truncated"):
        load_checkpoint(bad)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    from wfst_asr.train import latest_checkpoint
    path, state = latest_checkpoint(tmp_path)  # skips the truncated newest one
    assert path == good and torch.equal(state["model"]["w"], torch.ones(1000))


def test_failed_save_leaves_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "epoch-1.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(3)}})

    def broken(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-1.pt"]


def test_average_checkpoints(tmp_path):
    a = {"w": torch.randn(4, 3), "b": torch.randn(3).half(), "n": torch.tensor(5)}
    b = {"w": torch.randn(4, 3), "b": torch.randn(3).half(), "n": torch.tensor(9)}
    save_checkpoint(tmp_path / "a.pt", {"model": a})
    save_checkpoint(tmp_path / "b.pt", {"model": b})
    avg = average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"])
    torch.testing.assert_close(avg["w"], (a["w"] + b["w"]) / 2)
    assert avg["b"].dtype == torch.float16
    torch.testing.assert_close(avg["b"], ((a["b"].double() + b["b"].double()) / 2).half())
    assert int(avg["n"]) == 9


# --------------------------------------------------------------------------- resume


def test_resume_matches_uninterrupted(data, tmp_path):
    full = _trainer(_cfg(data, tmp_path / "full"))
    h_full = full.fit()
    first = _trainer(_cfg(data, tmp_path / "part", "test.tiny_blstm", "num_epochs=1"))
    first.fit()
    second = _trainer(_cfg(data, tmp_path / "part"))
    h_part = second.fit(resume=True)
    assert [h["train_loss"] for h in h_part] == [h["train_loss"] for h in h_full]
    assert [h["dev_loss"] for h in h_part] == [h["dev_loss"] for h in h_full]
    for (k, p), q in zip(full.raw_model.state_dict().items(),
                         second.raw_model.state_dict().values()):
        assert torch.equal(p, q), k
    for name in ("averaged.pt", "best.pt"):
        x = load_checkpoint(tmp_path / "full" / name)["model"]
        y = load_checkpoint(tmp_path / "part" / name)["model"]
        assert all(torch.equal(x[k], y[k]) for k in x)


class _ScaledLoss(torch.nn.Module):
    """A criterion with a parameter of its own: ``loss + frames * (b - 1)^2``."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.reduction = getattr(inner, "reduction", "sum")
        self.b = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, x, lens, targets):
        loss, info = self.inner(x, lens, targets)
        return loss + info["frames"] * (self.b - 1.0) ** 2, info


def _trainer_own_params(cfg) -> Trainer:
    seed_everything(cfg.seed)
    model, loss, train_dl, dev_dl, table = build(cfg)
    return Trainer(cfg, model, _ScaledLoss(loss), train_dl, dev_dl, "cpu", token_table=table)


def test_criterion_parameters_train_checkpoint_resume_average(data, tmp_path):
    """A criterion's own parameters train with the model's (here towards 1), are saved under
    ``criterion`` in every checkpoint, restored by a resume (the resumed run ends equal to the
    uninterrupted one, parameters and criterion alike) and averaged into ``averaged.pt`` (the
    mean of the last epochs' values, computed here); a checkpoint without them is refused on
    resume with one line naming it."""
    full = _trainer_own_params(_cfg(data, tmp_path / "full", "test.tiny_blstm",
                                    "average_last=2"))
    # the criterion's own parameters are a second group at cfg.lr x its lr_scale (default 1)
    assert [g["lr"] for g in full.optimizer.param_groups] == [full.cfg.lr] * 2
    full.fit()
    b = float(full.loss_fn.b.detach())
    assert 0.0 < b <= 1.5
    part = tmp_path / "part"
    _trainer_own_params(_cfg(data, part, "test.tiny_blstm", "num_epochs=1",
                             "average_last=2")).fit()
    second = _trainer_own_params(_cfg(data, part, "test.tiny_blstm", "average_last=2"))
    second.fit(resume=True)
    assert float(second.loss_fn.b.detach()) == b
    for k, p in full.raw_model.state_dict().items():
        assert torch.equal(p, second.raw_model.state_dict()[k]), k
    epochs = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "full").glob("epoch-*.pt"))
    vals = [float(load_checkpoint(tmp_path / "full" / f"epoch-{e}.pt")["criterion"]["b"])
            for e in epochs[-2:]]
    avg = load_checkpoint(tmp_path / "full" / "averaged.pt")["criterion"]["b"]
    assert float(avg) == pytest.approx(sum(vals) / 2, abs=1e-7)
    plain = tmp_path / "plain"
    _trainer(_cfg(data, plain, "test.tiny_blstm", "num_epochs=1")).fit()
    with pytest.raises(CheckpointError, match="no 'criterion' entry"):
        _trainer_own_params(_cfg(data, plain)).fit(resume=True)


def test_dbd_criterion_trains_the_lm(data, tmp_path):
    """``loss=dbd`` through the registry: a phone bigram of the training transcripts as G, the
    network and G's log-weights trained together for 2 epochs (the weights move, and are the
    checkpoints' ``criterion``); with ``loss.train_lm=false`` G stays the ARPA's and no
    criterion entry is written; an LM over symbols the token table lacks is refused at build
    time."""
    from lhotse import load_manifest_lazy

    from wfst_asr.graphs.lm import make_token_lm
    texts = [s.custom["phones"].split() for c in load_manifest_lazy(data["train_cuts"])
             for s in c.supervisions]
    make_token_lm(texts, order=2, out_arpa=tmp_path / "lm.arpa", vocab=PHONES)
    sets = ("loss=dbd", f"lang_dir={tmp_path}", "loss.search_beam=6",
            "loss.output_beam=4", "loss.lm_scale=0.5", "num_epochs=2")
    tr = _trainer(_cfg(data, tmp_path / "exp", "test.tiny_blstm", *sets))
    w0 = tr.loss_fn.graph.lm.weight.detach().clone()
    hist = tr.fit()
    assert all(math.isfinite(h["train_loss"]) and h["train_loss"] >= 0 for h in hist)
    w = tr.loss_fn.graph.lm.weight.detach()
    assert not torch.equal(w, w0)
    ck = load_checkpoint(tmp_path / "exp" / "epoch-2.pt")
    assert torch.equal(ck["criterion"]["graph.lm.weight"], w)
    fast = _trainer(_cfg(data, tmp_path / "fast", "test.tiny_blstm", *sets,
                         "loss.lr_scale=20"))
    assert fast.optimizer.param_groups[1]["lr"] == pytest.approx(20 * fast.cfg.lr)
    fast.fit()
    moved = (fast.loss_fn.graph.lm.weight.detach() - w0).abs().mean()
    assert moved > 5 * (w - w0).abs().mean()  # the LM's own rate moves it further
    fixed = _trainer(_cfg(data, tmp_path / "fixed", "test.tiny_blstm", *sets,
                          "loss.train_lm=false", "num_epochs=1"))
    fixed.fit()
    assert torch.equal(fixed.loss_fn.graph.lm.weight, w0)
    assert "criterion" not in load_checkpoint(tmp_path / "fixed" / "epoch-1.pt")
    # the decoder job: method dbd searches the criterion's graph with the averaged trained
    # weights and the training beams, min_active_states included (the same best paths as
    # one_best in that graph, built here from the checkpoint)
    from wfst_asr.decode import one_best
    from wfst_asr.train.decoder import DecodeError, DecodeOptions, Decoder
    from wfst_asr.train.inference import run_model
    dec = Decoder(tmp_path / "exp", options=DecodeOptions(methods=["dbd", "greedy"],
                                                          metric="PER"), log=None)
    assert "trained LM weights" in dec.methods["dbd"].how
    dec.run({"dev": data["dev_cuts"]}, tmp_path / "decode")
    hyps = (tmp_path / "decode" / "dbd" / "dev.hyp").read_text().splitlines()
    crit = tr.loss_fn
    crit.load_state_dict(load_checkpoint(tmp_path / "exp" / "averaged.pt")["criterion"])
    g = crit.decoding_graph().detach()
    outs = run_model(dec.model, data["dev_cuts"], dec.cfg, "cpu", 100.0)
    want = {}
    for o in outs:
        for i, seq in zip(o.ids, one_best(g, o.log_probs, o.lens, search_beam=6.0,
                                          min_active_states=1)):
            want[i] = " ".join(PHONES[t - 1] for t in seq)
    got = dict((ln.split(maxsplit=1) + [""])[:2] for ln in hyps)
    assert got == want and len(got) == 6
    # a CTC model in the graph of a DBD config (the ARPA's weights), and the beam sweep:
    # dbd_K = at most K active states
    ctc = _trainer(_cfg(data, tmp_path / "ctc", "test.tiny_blstm", "num_epochs=1"))
    ctc.fit()
    conf = tmp_path / "dbd.yaml"
    conf.write_text(f"base: test.tiny_blstm\nloss: dbd\nlang_dir: {tmp_path}\n"
                    f"tokens: {data['tokens']}\nloss_kwargs:\n  search_beam: 6\n"
                    "  output_beam: 4\n  lm_scale: 0.5\n")
    dec = Decoder(tmp_path / "ctc", options=DecodeOptions(
        methods=["dbd"], metric="PER", dbd_config=str(conf), dbd_max_active=[2]), log=None)
    assert list(dec.methods) == ["dbd", "dbd_2"] and "fixed LM" in dec.methods["dbd"].how
    dec.run({"dev": data["dev_cuts"]}, tmp_path / "decode_ctc")
    g = fixed.loss_fn.decoding_graph().detach()  # the same graph: ARPA weights, scale 0.5
    outs = run_model(dec.model, data["dev_cuts"], dec.cfg, "cpu", 100.0)
    for name, k in (("dbd", 10000), ("dbd_2", 2)):
        want = {}
        for o in outs:
            for i, seq in zip(o.ids, one_best(g, o.log_probs, o.lens, search_beam=6.0,
                                              min_active_states=1, max_active_states=k)):
                want[i] = " ".join(PHONES[t - 1] for t in seq)
        hyps = (tmp_path / "decode_ctc" / name / "dev.hyp").read_text().splitlines()
        assert dict((ln.split(maxsplit=1) + [""])[:2] for ln in hyps) == want, name
    with pytest.raises(DecodeError, match="not 'dbd'"):
        Decoder(tmp_path / "ctc", options=DecodeOptions(
            methods=["dbd"], dbd_config=timit_conf("ctc_blstm")), log=None)
    make_token_lm(texts + [["zz"]], order=2, out_arpa=tmp_path / "bad.arpa")
    with pytest.raises(ValueError, match="not in the symbol table"):
        _trainer(_cfg(data, tmp_path / "bad", "test.tiny_blstm", *sets, "loss.lm=bad.arpa"))


def _cli_args(data, exp: Path, *extra: str) -> list[str]:
    sets = {**data, "token_field": "phones", "num_features": F, "model.hidden": 16,
            "model.num_layers": 1, "subsampling": 1, "spec_augment": "false", "cmvn": "",
            "schedule": "none", "lr": 0.01, "max_duration": 0.8, "bucketing": "false",
            "tensorboard": "false", "average_last": 2}
    args = ["train", "--config", timit_conf("ctc_blstm"), "--exp-dir", str(exp)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return args + list(extra)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_killed_mid_epoch_then_resumed(data, tmp_path):
    exp = tmp_path / "exp"
    cmd = [sys.executable, "-m", "wfst_asr.bin.cli",
           *_cli_args(data, exp, "--set", "num_epochs=4")]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 40
        while not (exp / "epoch-1.pt").exists() and proc.poll() is None:
            assert time.time() < deadline, "no first checkpoint"
            time.sleep(0.02)
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = sorted(p.name for p in exp.glob("epoch-*.pt"))
    assert done and "epoch-4.pt" not in done
    out = subprocess.run([sys.executable, "-m", "wfst_asr.bin.cli",
                          *_cli_args(data, exp, "--set", "num_epochs=4", "--resume")],
                         check=False, env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {exp / done[-1]}" in out.stderr
    state = load_checkpoint(exp / "epoch-4.pt")
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]
    assert (exp / "averaged.pt").exists() and (exp / "train.log").exists()


# --------------------------------------------------------------------------- DDP


@pytest.mark.skipif(os.environ.get("WFST_ASR_SKIP_SLOW") == "1",
                    reason="slow (about 10 s): WFST_ASR_SKIP_SLOW=1")
def test_slow_torchrun_two_processes_match_one(data, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun is not available")
    common = ["--set", "num_epochs=2", "--set", "model.dropout=0"]
    one = subprocess.run([sys.executable, "-m", "wfst_asr.bin.cli",
                          *_cli_args(data, tmp_path / "one", *common, "--set",
                                     "max_duration=1.6")],
                         check=False, env=_env(), capture_output=True, text=True, timeout=60)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m",
                          "wfst_asr.bin.cli", *_cli_args(data, tmp_path / "two", *common)],
                         check=False, env=_env(), capture_output=True, text=True, timeout=60)
    assert two.returncode == 0, two.stderr[-3000:]
    h1 = load_checkpoint(tmp_path / "one" / "epoch-2.pt")["history"]
    h2 = load_checkpoint(tmp_path / "two" / "epoch-2.pt")["history"]
    assert not (tmp_path / "two" / "epoch-3.pt").exists()
    for a, b in zip(h1, h2):  # same data, same number of steps, different batch make-up
        assert abs(a["train_loss"] - b["train_loss"]) < 0.15 * a["train_loss"]
        assert abs(a["dev_loss"] - b["dev_loss"]) < 0.15 * a["dev_loss"]
    assert h2[1]["train_loss"] < h2[0]["train_loss"]


def test_ctc_on_words_through_a_lexicon(tmp_path):
    """``loss.lexicon`` (ctc): word transcripts, several pronunciations per word, from the CLI
    config alone; the trainer gets the word table, the loss the lexicon's graphs."""
    from wfst_asr.train import build_model_and_loss
    from wfst_asr.train.trainer import batch_targets

    lang = tmp_path / "lang"
    lang.mkdir()
    (lang / "tokens.txt").write_text("<blk> 0\na 1\nb 2\nc 3\n#0 4\n")
    (lang / "words.txt").write_text("<eps> 0\nHI 1\nYO 2\n#0 3\n")
    (lang / "lexicon.txt").write_text("HI a b\nHI c\nYO b b a\n")
    cfg = apply_overrides(get_config("ctc_blstm"), [
        f"lang_dir={lang}", f"tokens={lang}/tokens.txt", "token_field=text", "num_features=8",
        "model.hidden=4", "model.num_layers=1", "subsampling=1", "loss.lexicon=lexicon.txt"])
    _, loss, table = build_model_and_loss(cfg)
    assert table == {"<eps>": 0, "HI": 1, "YO": 2, "#0": 3} and cfg.num_classes == 4
    assert loss.compiler is not None
    batch = {"features": torch.zeros(2, 6, 8), "supervisions": {
        "sequence_idx": torch.tensor([0, 1]), "text": ["HI YO", "HI"]}}
    targets = batch_targets(batch, "text", table)
    assert targets == [[1, 2], [1]]
    lp = torch.randn(2, 6, 4).log_softmax(-1)
    value, info = loss(lp, torch.tensor([6, 1]), targets)
    assert info["num_excluded"] == 0 and torch.isfinite(value)  # "HI" = "c" fits one frame
    with pytest.raises(ValueError, match="lexicon.txt: word 'NO'"):
        (lang / "lexicon.txt").write_text("HI a b\nNO c\n")
        build_model_and_loss(cfg)


def test_early_stop_rule():
    """Stop after `early_stop` epochs without a dev-loss improvement on the best so far
    (epochs without a dev loss do not count); never with early_stop=0."""
    from types import SimpleNamespace

    from wfst_asr.train import Trainer

    def stops(n: int, dev: list) -> bool:
        hist = [{"epoch": i + 1, "dev_loss": d} for i, d in enumerate(dev)]
        fake = SimpleNamespace(cfg=SimpleNamespace(early_stop=n), history=hist, is_main=False)
        return Trainer.should_stop_early(fake)

    assert not stops(0, [3, 2, 2.5, 2.6, 2.7, 2.8])
    assert not stops(2, [3, 2, 2.5])
    assert stops(2, [3, 2, 2.5, 2.1])
    assert not stops(2, [3, 2, 2.5, 1.9])
    assert not stops(2, [3, 2, None, 2.5])
    assert stops(2, [3, 2, None, 2.5, 2.2])
    assert not stops(3, [5, 4, 3])


@pytest.mark.parametrize("loss", ["ctc", "dbd"])
def test_cuts_with_unmappable_symbols_are_skipped_and_counted(caplog, monkeypatch, loss):
    """A cut whose transcript has a word outside the lexicon's words (e.g. a dev OOV) is left
    out of the loader with one warning counting them and naming the words and the table; the
    others are kept; none left: an error. (CTC on words and DBD alike.)"""
    import logging

    from lhotse import CutSet
    from lhotse.testing.dummies import dummy_cut, dummy_supervision

    from wfst_asr.train.build import _usable_cuts

    table = {"a": 1, "b": 2}
    cuts = []
    for i, text in enumerate(["a b", "a zz b", "b", "yy"]):
        c = dummy_cut(i)
        c.supervisions = [dummy_supervision(i, text=text)]
        cuts.append(c)
    cfg = apply_overrides(get_config(f"{loss}_blstm"), [
        "token_field=text", "loss.lexicon=lexicon.txt", "lang_dir=data/lang", "tokens="])
    from wfst_asr.train import build

    monkeypatch.setattr(build, "target_table", lambda c: table)
    with caplog.at_level(logging.WARNING):
        kept = _usable_cuts(CutSet.from_cuts(cuts), cfg, "dev.jsonl.gz")
    assert [c.id for c in kept] == [cuts[0].id, cuts[2].id]
    msg = caplog.text
    assert "dev.jsonl.gz: 2 of 4 cuts skipped" in msg and "'zz'" in msg and "'yy'" in msg
    assert "words of data/lang/words.txt" in msg
    with pytest.raises(ValueError, match="dev.jsonl.gz: every cut has"):
        _usable_cuts(CutSet.from_cuts(cuts[1:2] + cuts[3:]), cfg, "dev.jsonl.gz")


def test_init_from_copies_matching_parameters(data, tmp_path):
    """``init_from``: a fresh run starts from another run's parameters where name and shape
    match (here all: the same model; a different output layer keeps its own), and a file with
    nothing matching is refused."""
    from wfst_asr.models import Blstm
    from wfst_asr.train.checkpoint import init_model_from, save_checkpoint
    src = tmp_path / "src"
    _trainer(_cfg(data, src, "test.tiny_blstm", "num_epochs=1")).fit()
    want = torch.load(src / "epoch-1.pt", weights_only=True)["model"]
    tr = _trainer(_cfg(data, tmp_path / "dst", "test.tiny_blstm", "num_epochs=0",
                       f"init_from={src / 'epoch-1.pt'}"))
    tr.fit()
    got = tr.raw_model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    other = Blstm(F, 7, hidden=16, num_layers=1)  # another output size: the LSTM is copied
    before = {k: v.clone() for k, v in other.state_dict().items()}
    copied, kept = init_model_from(other, src / "epoch-1.pt")
    assert kept == ["output.bias", "output.weight"] and copied
    assert all(torch.equal(other.state_dict()[k], want[k]) for k in copied)
    assert all(torch.equal(other.state_dict()[k], before[k]) for k in kept)
    save_checkpoint(tmp_path / "x.pt", {"model": {"nothing.weight": torch.zeros(2)}})
    with pytest.raises(CheckpointError, match="no parameter matches"):
        init_model_from(other, tmp_path / "x.pt")


def test_init_from_rules_rename(tmp_path):
    """``init_from_rules``: an attention model's ``encoder.layers.*`` from a CTC BLSTM's
    ``layers.*`` (the first matching rule wins; other names as they are), so the encoder's
    LSTMs equal the source's tensor for tensor and everything else keeps its initialisation;
    a rule without ``->`` or with a bad regex is refused, naming the rule; the override
    ``init_from_rules=...`` parses to the list."""
    from wfst_asr.models import Blstm
    from wfst_asr.models.attention import BlstmAttention
    from wfst_asr.train.checkpoint import init_model_from, save_checkpoint
    src = Blstm(F, 7, hidden=16, num_layers=2)
    save_checkpoint(tmp_path / "ctc.pt", {"model": src.state_dict()})
    att = BlstmAttention(F, 7, hidden=16, num_layers=2, d_model=32, nhead=2, decoder_layers=1,
                         dim_feedforward=32)
    before = {k: v.clone() for k, v in att.state_dict().items()}
    with pytest.raises(CheckpointError, match="no parameter matches"):
        init_model_from(att, tmp_path / "ctc.pt")  # without the rule nothing has the same name
    copied, kept = init_model_from(att, tmp_path / "ctc.pt",
                                   [r"decoder\.nothing->x", r"encoder\.(layers\..*)->\1"])
    want = {f"encoder.{k}": v for k, v in src.state_dict().items() if k.startswith("layers.")}
    assert sorted(copied) == sorted(want) and len(copied) == 16  # 2 layers x 8
    after = att.state_dict()
    assert all(torch.equal(after[k], v) for k, v in want.items())
    assert all(torch.equal(after[k], before[k]) for k in kept)
    assert "encoder.output.weight" in kept and "ctc_output.weight" in kept
    for bad, why in (("encoder.layers", "expected 'REGEX->TEMPLATE'"),
                     ("encoder.(layers->x", "bad regular expression")):
        with pytest.raises(ValueError, match=why) as e:
            init_model_from(att, tmp_path / "ctc.pt", [bad])
        assert bad in str(e.value)
    cfg = apply_overrides(get_config("test.tiny_blstm"),
                          [r"init_from_rules=encoder\.(layers\..*)->\1"])
    assert cfg.init_from_rules == [r"encoder\.(layers\..*)->\1"]


def _reduce_worker(rank: int, world: int, store: str, out: str) -> None:
    from types import SimpleNamespace

    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        a = torch.nn.Parameter(torch.zeros(3))
        b = torch.nn.Parameter(torch.zeros(2))
        a.grad = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)
        if rank == 0:  # a parameter without gradient on one rank (not in its beam)
            b.grad = torch.tensor([4.0, -2.0])
        Trainer._reduce_criterion_grads(SimpleNamespace(criterion_params=[a, b]))
        torch.save({"a": a.grad, "b": b.grad}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_criterion_gradients_are_averaged_over_ranks(tmp_path):
    """DDP averages the model's gradients; the criterion's own (a trainable graph's LM
    weights) are all-reduced by the trainer: every rank ends with the mean over ranks, a rank
    where a parameter got no gradient counting as zero."""
    import torch.multiprocessing as mp
    mp.spawn(_reduce_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "g")), nprocs=2,
             join=True)
    for rank in range(2):
        g = torch.load(tmp_path / f"g.{rank}", weights_only=True)
        assert torch.allclose(g["a"], torch.tensor([1.5, 3.0, 4.5]))
        assert torch.allclose(g["b"], torch.tensor([2.0, -1.0]))
