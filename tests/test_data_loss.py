"""No silent data loss, no silent empty graphs, locked experiment directories (issue 12).

Each test holds one case of the issue with its repro:

1. ``lattice-prune`` in place (``--out-dir`` = the input, ``--overwrite``) keeps every lattice;
   an interrupted writer leaves the old directory as it was; the CLI hint is ``--overwrite``;
   a corrupt ``meta.json`` is an error naming the file and line.
2. ``compile-graph`` with a G built against another ``words.txt``: an error naming both files
   (G.pt's word table, else G.fst's label ranges), never an empty HLG; an empty composition
   names the step that emptied it.
3. Two ``wfst-asr train`` runs into one experiment directory: the second fails at once naming
   the holder; the lock goes with its process (``kill -9``).
4. A truncated older checkpoint: averaging skips it with a warning, ``averaged.pt`` records
   what it averaged, and a failed run leaves no earlier ``averaged.pt``.
5. ``save_checkpoint`` fsyncs before the rename (through ``atomic_output``).
6. A WAV file truncated to half, header intact: skipped as truncated audio.
7. ``egs/timit/run.sh --stage 6 --stop-stage 6`` (and 9) on a fresh exp dir: one error line,
   a non-zero exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_lattice import make_case
from tests.test_train import _cli_args, data  # noqa: F401 (data: the training cuts)
from wfst_asr.bin.cli import main
from wfst_asr.decode.lattice import prune
from wfst_asr.decode.lattice_io import LatticeReader, LatticeWriter
from wfst_asr.fsa import SymbolTable

REPO = Path(__file__).resolve().parent.parent
WORDS = SymbolTable.from_str("<eps> 0\na 1\nb 2\nc 3\n")
N_UTT = 20


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wfst_asr.bin.cli", *args], env=_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


# ---------------------------------------------------------------------- 1. lattice directories
@pytest.fixture(scope="module")
def lat20(tmp_path_factory):
    """A lattice directory of 20 utterances, in one file."""
    d = tmp_path_factory.mktemp("lat20") / "LAT"
    c = make_case(7, T=5, lens=[5, 4, 3, 5] * 5)
    ids = [f"utt{i:02d}" for i in range(N_UTT)]
    with LatticeWriter(d, words=WORDS, meta={"frame_shift": 0.01}) as w:
        w.write(ids, c["lat"])
    return {"dir": d, "ids": ids, "lat": c["lat"]}


def _same_lattices(d: Path, lat20) -> None:
    r = LatticeReader(d)
    assert r.utt_ids == lat20["ids"]
    for i, (u, one) in enumerate(r):
        assert not isinstance(one, Exception), one
        assert torch.equal(one.arcs, prune(lat20["lat"][i], 100.0)[0].arcs), u


def test_lattice_prune_in_place_keeps_every_lattice(lat20, tmp_path, capsys):
    """The issue's repro: prune LAT -> D (batches of 10), then D -> D in place (batches of 5):
    lattice-info D used to show 10 of 20 utterances, exit 0."""
    D = tmp_path / "D"
    assert main(["lattice-prune", str(lat20["dir"]), "--beam", "100", "--out-dir", str(D),
                 "--batch-size", "10", "--no-progress"]) == 0
    assert main(["lattice-prune", str(D), "--beam", "100", "--out-dir", str(D), "--overwrite",
                 "--batch-size", "5", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"{N_UTT} lattices done, 0 skipped" in err
    assert main(["lattice-info", str(D), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"utterances: {N_UTT} ({N_UTT} usable, 0 skipped)" in out
    _same_lattices(D, lat20)
    assert sorted(p.name for p in D.glob("lat.*.pt")) == [f"lat.{i:05d}.pt" for i in range(4)]
    assert not list(D.glob(".tmp-*"))
    # an output inside the input works as well, and leaves the input alone
    inner = D / "sub"
    assert main(["lattice-prune", str(D), "--beam", "100", "--out-dir", str(inner),
                 "--no-progress"]) == 0
    _same_lattices(inner, lat20)
    _same_lattices(D, lat20)
    # a text output that is a file of the input directory is refused, the directory intact
    for name in ("index.tsv", "lat.00000.pt"):
        assert main(["lattice-best-path", str(D), str(D / name), "--no-progress"]) == 2
        assert f"a file of the input lattice directory {D}" in capsys.readouterr().err
    _same_lattices(D, lat20)


def test_interrupted_writer_leaves_the_old_directory(lat20, tmp_path, capsys, monkeypatch):
    """A failure while the new lattices are written (the 3rd file of 4) leaves the directory
    as it was, complete and readable, with no staging folder."""
    import wfst_asr.decode.lattice_io as lio

    D = tmp_path / "D"
    assert main(["lattice-prune", str(lat20["dir"]), "--beam", "100", "--out-dir", str(D),
                 "--batch-size", "10", "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in D.iterdir()}
    real, calls = lio.save_lattices, []

    def failing(path, *a, **k):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(lio, "save_lattices", failing)
    assert main(["lattice-prune", str(D), "--beam", "100", "--out-dir", str(D), "--overwrite",
                 "--batch-size", "5", "--no-progress"]) == 2
    assert "no space left" in capsys.readouterr().err.lower()
    assert {p.name: p.read_bytes() for p in D.iterdir()} == before
    _same_lattices(D, lat20)
    # a new output directory that failed is not left behind
    calls.clear()
    assert main(["lattice-prune", str(D), "--beam", "100", "--out-dir", str(tmp_path / "new"),
                 "--batch-size", "5", "--no-progress"]) == 2
    assert not (tmp_path / "new").exists()


def test_existing_output_hint_is_the_cli_flag(lat20, tmp_path):
    D = tmp_path / "D"
    assert main(["lattice-prune", str(lat20["dir"]), "--beam", "100", "--out-dir", str(D),
                 "--no-progress"]) == 0
    res = _cli("lattice-prune", str(lat20["dir"]), "--beam", "100", "--out-dir", str(D),
               "--no-progress")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wfst-asr lattice-prune: error: ")
    assert str(D) in lines[0] and "--overwrite" in lines[0] and "overwrite=True" not in lines[0]


def test_corrupt_meta_json_names_file_and_line(lat20, tmp_path, capsys):
    D = tmp_path / "D"
    assert main(["lattice-prune", str(lat20["dir"]), "--beam", "100", "--out-dir", str(D),
                 "--no-progress"]) == 0
    meta = D / "meta.json"
    text = meta.read_text().splitlines()
    text[3] = text[3][: len(text[3]) // 2]  # cut a line in the middle: invalid JSON on line 4
    meta.write_text("\n".join(text) + "\n")
    capsys.readouterr()
    assert main(["lattice-info", str(D), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{meta}:4: not valid JSON" in err[0], err
    meta.write_bytes(b'{"format": "\xff"}\n')
    assert main(["lattice-info", str(D), "--no-progress"]) == 2
    assert f"{meta}:1: not valid UTF-8" in capsys.readouterr().err


# ---------------------------------------------------------------------- 2. compile-graph
@pytest.fixture(scope="module")
def mismatched_lang(tmp_path_factory):
    """The issue's repro: G compiled over another lang dir's words.txt (5 words), placed in a
    lang dir of 3 words (same tokens), where its ids still fit words.txt."""
    tmp = tmp_path_factory.mktemp("graphs")
    (tmp / "lex_other.txt").write_text("A a\nB b\nC c\nD a b\nE b c\n")
    (tmp / "lex.txt").write_text("A a\nB b\nC c\n")
    (tmp / "text").write_text("E\nE E\n")
    other, lang = tmp / "other", tmp / "lang"
    for args in (["compile-lang", "--lang-dir", str(other), "--lexicon",
                  str(tmp / "lex_other.txt")],
                 ["compile-lang", "--lang-dir", str(lang), "--lexicon", str(tmp / "lex.txt"),
                  "--tokens", str(other / "tokens.txt")],
                 ["estimate-lm", "--text", str(tmp / "text"), "--order", "2", "--out",
                  str(tmp / "lm.arpa")],
                 ["compile-lm", "--arpa", str(tmp / "lm.arpa"), "--words",
                  str(other / "words.txt"), "--out", str(lang / "G.fst")]):
        assert main(args) == 0, args
    return lang


def test_compile_graph_g_of_another_words_txt(mismatched_lang, tmp_path, capsys):
    """Used to print 'HLG: -1 states, 0 arcs' with exit 0."""
    lang = mismatched_lang
    capsys.readouterr()
    assert main(["compile-graph", "--lang-dir", str(lang), "--kind", "HLG"]) == 2
    cap = capsys.readouterr()
    assert "-1 states" not in cap.out
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wfst-asr compile-graph: error: ")
    assert f"{lang / 'G.pt'}" in err[0] and f"{lang / 'words.txt'}" in err[0]
    assert "checksum" in err[0]
    assert not (lang / "HLG.fst").exists() and not (lang / "HLG.pt").exists()
    # without G.pt (a G.fst from elsewhere carries no symbols): G's label ranges
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("L_disambig.fst", "G.fst", "tokens.txt", "words.txt"):
        (bare / name).write_bytes((lang / name).read_bytes())
    assert main(["compile-graph", "--lang-dir", str(bare), "--kind", "HLG"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bare / 'G.fst'}" in err[0]
    assert f"{bare / 'words.txt'}" in err[0] and "another words.txt" in err[0]
    assert not (bare / "HLG.fst").exists()


def test_empty_composition_names_the_step(mismatched_lang, tmp_path, capsys):
    """A G over the right words without a complete path: 'L o G is empty', no graph."""
    from wfst_asr.fsa import from_str, write_fst

    lang = tmp_path / "lang"
    lang.mkdir()
    for name in ("L_disambig.fst", "tokens.txt", "words.txt"):
        (lang / name).write_bytes((mismatched_lang / name).read_bytes())
    # word A, then a state that is not final; the final state is unreachable
    write_fst(from_str("0 1 1 0.0\n2\n"), lang / "G.fst")
    for kind in ("LG", "HLG"):
        assert main(["compile-graph", "--lang-dir", str(lang), "--kind", kind]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "L o G is empty" in err[0], err
        assert str(lang / "G.fst") in err[0] and not (lang / f"{kind}.fst").exists()


# ---------------------------------------------------------------------- 3, 4: training
def _train_args(cuts: dict, exp: Path, *sets: str) -> list[str]:
    """``wfst-asr train`` arguments (tests/test_train.py's), average_last=3, then ``sets``."""
    return _cli_args(cuts, exp, *(x for kv in ("average_last=3", *sets) for x in ("--set", kv)))


def test_second_train_run_into_one_exp_dir_fails_at_once(data, tmp_path, capsys):  # noqa: F811
    """Two `wfst-asr train` runs into one directory used to both exit 0. The first is a process
    of its own, the second and third run in this one."""
    exp = tmp_path / "exp"
    first = subprocess.Popen([sys.executable, "-m", "wfst_asr.bin.cli",
                              *_train_args(data, exp, "num_epochs=500")],
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        lock = exp / ".lock"
        while not (lock.is_file() and lock.stat().st_size > 0):
            assert first.poll() is None, "the first run ended"
            assert time.time() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid
        # the second run, in this process: refused before its first epoch
        capsys.readouterr()
        assert main(_train_args(data, exp, "num_epochs=1")) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
        assert len(err) == 1 and err[0].startswith("wfst-asr train: error: "), err
        assert f"pid {first.pid} on host {holder['host']} since {holder['since']}" in err[0]
        assert json.loads(lock.read_text()) == holder  # the holder's record is left alone
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the lock goes with the killed process: a run into the directory works now
    assert main(_train_args(data, exp, "num_epochs=1")) == 0
    assert lock.read_text() == ""  # released: no holder recorded


def test_lock_in_process(tmp_path):
    """Re-entrant within a process (the command line holds it around Trainer.fit's), held
    until the outermost holder lets go; another process is refused meanwhile, by name."""
    from wfst_asr.train.lock import ExpDirLock

    probe = ("import sys; from wfst_asr.train.lock import ExpDirLock as L\n"
             "try:\n    L(sys.argv[1]).acquire()\nexcept Exception as e:\n    print(e)\n"
             "else:\n    print('acquired')")

    def other_process() -> str:
        return subprocess.run([sys.executable, "-c", probe, str(tmp_path / "e")], env=_env(),
                              capture_output=True, text=True, check=True).stdout.strip()

    with ExpDirLock(tmp_path / "e", what="test"):
        with ExpDirLock(tmp_path / "e"):  # the same process: shared
            pass
        assert f"pid {os.getpid()} on host" in other_process()  # still held by the outer one
        assert "(test)" in other_process()
    assert other_process() == "acquired"  # released


def test_averaging_skips_a_truncated_older_checkpoint(data, tmp_path, monkeypatch):  # noqa: F811
    """The issue's repro: `truncate -s 5000 exp/epoch-5.pt`, then train on with
    average_last=3: averaging used to abort on every rerun, leaving a stale averaged.pt."""
    from wfst_asr.train import Trainer, load_checkpoint

    exp = tmp_path / "exp"
    assert main(_train_args(data, exp, "num_epochs=6")) == 0
    first = load_checkpoint(exp / "averaged.pt")
    assert [a["epoch"] for a in first["averaged_from"]] == [4, 5, 6]
    os.truncate(exp / "epoch-5.pt", 5000)  # truncate -s 5000 exp/epoch-5.pt

    # a run that fails leaves no averaged.pt of the earlier run behind
    def boom(self, epoch):
        raise RuntimeError("crash in training")

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_epoch", boom)
        with pytest.raises(RuntimeError, match="crash in training"):
            main(_train_args(data, exp, "num_epochs=7") + ["--resume"])
    assert not (exp / "averaged.pt").exists()
    assert (exp / "best.pt").exists()  # from epoch <= 6: this run's
    for rerun in range(2):  # train on, then a rerun with nothing left to train
        (exp / "train.log").unlink()
        assert main(_train_args(data, exp, "num_epochs=7") + ["--resume"]) == 0
        log = (exp / "train.log").read_text()
        assert "averaging: skipping unreadable checkpoint" in log
        assert "epoch-5.pt (5000 bytes): corrupted or truncated" in log
        avg = load_checkpoint(exp / "averaged.pt")
        assert avg["averaged_from"] == [{"file": "epoch-6.pt", "epoch": 6},
                                        {"file": "epoch-7.pt", "epoch": 7}]
        assert avg["averaged"] == ["epoch-6.pt", "epoch-7.pt"]
        want = {k: (load_checkpoint(exp / "epoch-6.pt")["model"][k].double()
                    + load_checkpoint(exp / "epoch-7.pt")["model"][k].double()) / 2
                for k in avg["model"] if avg["model"][k].is_floating_point()}
        for k, v in want.items():
            torch.testing.assert_close(avg["model"][k].double(), v)


def test_fresh_start_sets_aside_an_earlier_run(data, tmp_path):  # noqa: F811
    from wfst_asr.train import load_checkpoint

    exp = tmp_path / "exp"
    assert main(_train_args(data, exp, "num_epochs=2")) == 0
    assert (exp / "best.pt").exists()
    # a fresh run without a dev set writes no best.pt: the earlier one must not stay
    assert main(_train_args(data, exp, "num_epochs=1", "dev_cuts=", "average_last=1")) == 0
    assert not (exp / "best.pt").exists()
    assert load_checkpoint(exp / "averaged.pt")["averaged_from"] == [
        {"file": "epoch-1.pt", "epoch": 1}]
    # the earlier run's checkpoints are kept aside, not left to look like this run's: a
    # --resume now continues this run (from its epoch 1), not the earlier run's epoch 2
    kept = sorted(exp.glob("earlier-run-*"))
    assert len(kept) == 1
    names = ["best.pt", "epoch-1.pt", "epoch-2.pt"]  # with their completion markers
    assert sorted(p.name for p in kept[0].iterdir()) == sorted(names + [f"{n}.done" for n in names])
    assert sorted(p.name for p in exp.glob("epoch-*.pt")) == ["epoch-1.pt"]
    assert main(_train_args(data, exp, "num_epochs=2", "dev_cuts=", "average_last=1")
                + ["--resume"]) == 0
    assert f"resumed from {exp / 'epoch-1.pt'} (epoch 1 done" in (exp / "train.log").read_text()
    assert load_checkpoint(exp / "epoch-2.pt")["epoch"] == 2
    assert len(list(exp.glob("earlier-run-*"))) == 1


# ---------------------------------------------------------------------- 5. fsync
def test_save_checkpoint_fsyncs_before_rename(tmp_path, monkeypatch):
    from wfst_asr.train import save_checkpoint

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace",
                        lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    save_checkpoint(tmp_path / "epoch-1.pt", {"model": {"w": torch.ones(3)}})
    assert "fsync" in events and events.index("fsync") < events.index("replace")


# ---------------------------------------------------------------------- 6. truncated audio
def test_truncated_wav_is_skipped_as_truncated_audio(tmp_path):
    """A wav truncated to half with its header intact (was skipped as times_past_audio by
    the TIMIT prep, and given features of half the audio, padded, by compute_features)."""
    import soundfile as sf
    from lhotse import CutSet, Recording, RecordingSet

    from wfst_asr.data.features import compute_features, wav_truncation

    rng = np.random.default_rng(0)
    good, bad = tmp_path / "good.wav", tmp_path / "bad.wav"
    for p in (good, bad):
        sf.write(p, (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000,
                 subtype="PCM_16")
    rec_before = Recording.from_file(bad, recording_id="before")
    size = bad.stat().st_size
    os.truncate(bad, 44 + (size - 44) // 2)  # the header (44 bytes) intact, half the samples
    rec_after = Recording.from_file(bad, recording_id="after")  # soundfile: 8000 samples
    assert wav_truncation(good) is None
    msg = wav_truncation(bad)
    assert msg is not None and "truncated audio" in msg and "16000 samples" in msg
    recs = RecordingSet.from_recordings([Recording.from_file(good, recording_id="good"),
                                         rec_before, rec_after])
    res = compute_features(CutSet.from_manifests(recordings=recs), tmp_path / "fbank")
    assert [c.recording_id for c in res.cuts] == ["good"]
    assert {cid.split("-")[0] for cid, _ in res.skipped} == {"before", "after"}
    for _, why in res.skipped:
        assert why.startswith("TruncatedAudioError: ") and "truncated audio" in why
        assert str(bad) in why and "times_past_audio" not in why
    assert res.reasons() == {"TruncatedAudioError": 2}


# ---------------------------------------------------------------------- 7. recipe exit codes
@pytest.mark.parametrize("stage,what", [(6, "wfst-asr score: error: "),
                                        (9, "stage 9: error: ")])
def test_recipe_stage_on_fresh_exp_dir_fails_in_one_line(tmp_path, stage, what):
    exp = tmp_path / "exp"
    res = subprocess.run(["bash", str(REPO / "egs" / "timit" / "run.sh"), "--stage", str(stage),
                          "--stop-stage", str(stage), "--exp-dir", str(exp)],
                         env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0
    errors = [ln for ln in res.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith(what), res.stderr
    assert "Traceback" not in res.stderr and "cat:" not in res.stderr
    assert not (exp / f".stage{stage}.done").exists()
