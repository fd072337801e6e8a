"""Every bad input gets one clear line, never a traceback (issue 12).

* :func:`test_bad_input` runs every relevant ``wfst-asr`` command on every relevant file of the
  bad-input corpus ``tests/data/bad/`` (see its README.md), each in its own process, and checks
  the contract of :func:`wfst_asr.bin.cli.main`: exit code 2; stderr one line
  ``wfst-asr CMD: error: ...`` naming the file; no ``Traceback``; no output left behind (the
  output path does not exist afterwards, nor any ``.tmp-*`` file); under 1 GB of memory. To
  stay fast the cases run in one driver process that imports the command line once and forks
  one child per case (its rusage from ``os.wait4``).
* a two-line text FST with state id 2e9 is refused at once, in little memory;
* a full disk (a monkeypatched write; a real 64 KiB tmpfs where mounting is permitted) is one
  ``OSError(ENOSPC, "no space left on DEVICE while writing FILE")``, for text, torch files,
  FSTs and checkpoints, and leaves no temporary file; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from wfst_asr.atomic import atomic_output, atomic_write_text

REPO = Path(__file__).resolve().parent.parent
GB = 1 << 30

#: The binary members of the corpus, written by :func:`_bad_corpus` (no binary files in git):
#: bytes as hex, or ``None`` for the truncated wav made with soundfile.
_BINARY = {
    # OpenFst magic number, then random bytes
    "fst_garbage.fst": "d6fdb27ef289b349c305bff78ceb74004ae1bc53ad6b1e6626accf2c091f722ed8e339d8"
                       "45a0531a572acdd6f0f4c40f2a6285b6b9c59e3a8178abbabe5b0ec3",
    # a vector FST cut short, header intact
    "fst_truncated.fst": "d6fdb27e06000000766563746f72080000007374616e646172640200000000000000"
                         "03000000000000000000000000000000030000000000000000000000000000000000"
                         "807f01000000000000000100000001000000000000bf010000000000000001000000"
                         "000000000200000002000000",
    # a zip signature (torch's format), then random bytes
    "garbage.pt": "504b0304dc100d71da16c66834705b278c12dd8dffb01aebbc6aad90e9f3f67a55edba5d6070"
                  "0389ae5b7b04147e3bb84f0ca58f3c75f4fab586e353e595178e",
    "exp_garbage_checkpoint/averaged.pt": "garbage.pt",
    "wav_truncated.wav": None,
}


def _bad_corpus() -> Path:
    """tests/data/bad (its text files) plus the binary files of :data:`_BINARY`, in a fresh
    temporary folder removed at exit."""
    import atexit
    import tempfile

    import numpy as np
    import soundfile as sf

    out = Path(tempfile.mkdtemp(prefix="wfst_asr_bad_"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    shutil.copytree(REPO / "tests" / "data" / "bad", out, dirs_exist_ok=True)
    for name, spec in _BINARY.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if spec is None:  # 1 s of 8 kHz 16-bit audio, cut to half its samples, header intact
            tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)
            sf.write(path, tone.astype(np.float32), 8000, subtype="PCM_16")
            with open(path, "r+b") as f:
                f.truncate(44 + 8000)
        else:
            path.write_bytes(bytes.fromhex(_BINARY.get(spec) or spec))
    return out


BAD = _bad_corpus()

LEXICON = "yes y e s\nno n o\n"
WORDS_TXT = "<eps> 0\nno 1\nyes 2\n#0 3\n<s> 4\n</s> 5\n"
GOOD_ARPA = ("\\data\\\nngram 1=4\n\n\\1-grams:\n-99\t<s>\n-0.5\tyes\n-0.5\tno\n-0.5\t</s>\n"
             "\n\\end\\\n")
FSTS = ["fst_garbage.txt", "fst_huge_state.txt", "fst_negative.txt", "fst_garbage.fst",
        "fst_truncated.fst", "garbage.pt"]


def _case(cid: str, argv: list[str], names: str, outputs: tuple[str, ...] = (),
          loose: bool = False) -> tuple:
    """A case: its id, the argv (``{bad}``, ``{good}``, ``{out}`` filled in later), the file
    the error line must name, the outputs that must not exist afterwards; ``loose``: other
    lines (warnings) may precede the error line, and outputs may be left."""
    return cid, argv, names, outputs, loose


CASES = [
    *(_case(f"compile-lang-{f}", ["compile-lang", "--lang-dir", "{out}/lang", "--lexicon",
                                  f"{{bad}}/{f}"], f"{{bad}}/{f}", ("{out}/lang",))
      for f in ("lexicon_bad_utf8.txt", "lexicon_empty_pron.txt", "lexiconp_bad_prob.txt",
                "empty.txt")),
    _case("compile-lang-dir-is-a-file", ["compile-lang", "--lang-dir", "{out}/afile",
                                         "--lexicon", "{good}/lexicon.txt"], "{out}/afile"),
    *(_case(f"estimate-lm-{f}", ["estimate-lm", "--text", f"{{bad}}/{f}", "--out",
                                 "{out}/lm.arpa"], f"{{bad}}/{f}", ("{out}/lm.arpa",))
      for f in ("text_bad_utf8.txt", "empty.txt")),
    _case("estimate-lm-order-50", ["estimate-lm", "--text", "{good}/text", "--order", "50",
                                   "--out", "{out}/lm.arpa"], "{good}/text", ("{out}/lm.arpa",)),
    *(_case(f"compile-lm-{f}", ["compile-lm", "--arpa", f"{{bad}}/{f}", "--words",
                                "{good}/words.txt", "--out", "{out}/G.fst"], f"{{bad}}/{f}",
            ("{out}/G.fst", "{out}/G.pt"))
      for f in ("arpa_nan.arpa", "arpa_truncated.arpa", "arpa_no_data.arpa")),
    _case("compile-lm-symbols_dup_id.txt", ["compile-lm", "--arpa", "{good}/lm.arpa", "--words",
                                            "{bad}/symbols_dup_id.txt", "--out", "{out}/G.fst"],
          "{bad}/symbols_dup_id.txt", ("{out}/G.fst", "{out}/G.pt")),
    _case("compile-lm-no-out-dir", ["compile-lm", "--arpa", "{good}/lm.arpa", "--words",
                                    "{good}/words.txt", "--out", "{out}/nodir/G.fst"],
          "{out}/nodir/G.fst", ("{out}/nodir",)),
    *(_case(f"fst-info-{f}", ["fst-info", f"{{bad}}/{f}"], f"{{bad}}/{f}") for f in FSTS),
    _case("fst-info-isymbols-symbols_dup_id.txt",
          ["fst-info", "{good}/lang/L.fst", "--isymbols", "{bad}/symbols_dup_id.txt"],
          "{bad}/symbols_dup_id.txt"),
    *(_case(f"fst-draw-{f}", ["fst-draw", f"{{bad}}/{f}", "{out}/g.dot"], f"{{bad}}/{f}",
            ("{out}/g.dot",)) for f in FSTS),
    *(_case(f"compile-graph-G-{f}", ["compile-graph", "--lang-dir", f"{{good}}/lang-{f}",
                                     "--kind", "LG"], f"{{good}}/lang-{f}/G.fst",
            (f"{{good}}/lang-{f}/LG.fst", f"{{good}}/lang-{f}/LG.pt"))
      for f in ("fst_garbage.fst", "fst_truncated.fst", "fst_garbage.txt")),
    _case("compute-features-cuts_bad_json.jsonl",
          ["compute-features", "--cuts", "{bad}/cuts_bad_json.jsonl", "--out-dir",
           "{out}/fbank"], "{bad}/cuts_bad_json.jsonl:2", ("{out}/fbank",)),
    _case("lexicon-supervisions-cuts_bad_json.jsonl",
          ["lexicon", "--supervisions", "{bad}/cuts_bad_json.jsonl", "--out",
           "{out}/lexicon.txt"], "{bad}/cuts_bad_json.jsonl:2",
          ("{out}/lexicon.txt", "{out}/lexicon_oovs.txt")),
    _case("lexicon-text-text_bad_utf8.txt",
          ["lexicon", "--text", "{bad}/text_bad_utf8.txt", "--out", "{out}/lexicon.txt"],
          "{bad}/text_bad_utf8.txt:2", ("{out}/lexicon.txt", "{out}/lexicon_oovs.txt")),
    _case("lexicon-words-empty.txt", ["lexicon", "--words", "{bad}/empty.txt", "--out",
                                      "{out}/lexicon.txt"], "{bad}/empty.txt",
          ("{out}/lexicon.txt", "{out}/lexicon_oovs.txt")),
    _case("train-nnlm-text_bad_utf8.txt", ["train-nnlm", "{bad}/text_bad_utf8.txt",
                                           "{good}/words.txt", "{out}/exp"],
          "{bad}/text_bad_utf8.txt:2", ("{out}/exp",)),
    _case("train-nnlm-symbols_dup_id.txt", ["train-nnlm", "{good}/text",
                                            "{bad}/symbols_dup_id.txt", "{out}/exp"],
          "{bad}/symbols_dup_id.txt:3", ("{out}/exp",)),
    _case("train-mono-cuts_bad_json.jsonl",
          ["train-mono", "--train-cuts", "{bad}/cuts_bad_json.jsonl", "--lang-dir",
           "{good}/lang", "--token-field", "text", "--out-dir", "{out}/mono"],
          "{bad}/cuts_bad_json.jsonl", ("{out}/mono/gmm.pt",)),
    _case("score-missing-decode-dir", ["score", "--decode-dir", "{out}/nodecode"],
          "{out}/nodecode", ("{out}/nodecode",)),
    _case("lattice-info-lattice_bad_meta", ["lattice-info", "{bad}/lattice_bad_meta"],
          "{bad}/lattice_bad_meta/meta.json:2"),
    _case("lattice-prune-lattice_bad_meta", ["lattice-prune", "{bad}/lattice_bad_meta",
                                             "--beam", "5", "--out-dir", "{out}/pruned"],
          "{bad}/lattice_bad_meta/meta.json:2", ("{out}/pruned",)),
    _case("decode-exp_garbage_checkpoint",
          ["decode", "--exp-dir", "{bad}/exp_garbage_checkpoint", "--dev-cuts",
           "{good}/cuts_wav_truncated.jsonl", "--out-dir", "{out}/decode"],
          "{bad}/exp_garbage_checkpoint/averaged.pt", ("{out}/decode",)),
    _case("train-config_bad.yaml", ["train", "--config", "{bad}/config_bad.yaml", "--exp-dir",
                                    "{out}/exp"], "{bad}/config_bad.yaml", ("{out}/exp",)),
    # skipped and counted by design (a warning each), then no cut has features: refused,
    # with no archive, manifest or CMVN left behind
    _case("compute-features-wav_truncated.wav",
          ["compute-features", "--cuts", "{good}/cuts_wav_truncated.jsonl", "--out-dir",
           "{out}/fbank", "--num-mel-bins", "23"], "cuts_wav_truncated.jsonl",
          ("{out}/fbank",), loose=True),
]

#: Forks one child per case (after importing everything once): argv in, rc/stderr/rusage out.
DRIVER = textwrap.dedent("""\
    import json, os, signal, sys, time, traceback
    import wfst_asr.bin.cli as cli
    cli.build_parser()  # imports every command module once, before the forks
    from wfst_asr import _kaldi
    _kaldi.kaldifst(); _kaldi.kaldilm()
    cases = json.load(open(sys.argv[1]))
    results = {}
    for cid, argv, work in cases:
        err, out = os.path.join(work, ".stderr"), os.path.join(work, ".stdout")
        sys.stdout.flush(); sys.stderr.flush()
        t0 = time.time()
        pid = os.fork()
        if pid == 0:
            os.chdir(work)
            fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC); os.dup2(fd, 2)
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC); os.dup2(fd, 1)
            try:
                rc = cli.main(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
                rc = 1
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(rc)
        while True:
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got:
                break
            if time.time() - t0 > 60:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        results[cid] = {"rc": os.waitstatus_to_exitcode(status), "secs": time.time() - t0,
                        "maxrss_kb": usage.ru_maxrss, "stderr": open(err, errors="replace").read()}
    json.dump(results, open(sys.argv[2], "w"))
    """)


def _fill(s: str, dirs: dict[str, Path]) -> str:
    return s.format(**{k: str(v) for k, v in dirs.items()})


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Run every case once; ``(results by case id, the folders used)``."""
    from wfst_asr.graphs.lang import prepare_lang

    root = tmp_path_factory.mktemp("bad_input")
    good = root / "good"
    good.mkdir()
    (good / "lexicon.txt").write_text(LEXICON)
    (good / "words.txt").write_text(WORDS_TXT)
    (good / "lm.arpa").write_text(GOOD_ARPA)
    (good / "text").write_text("u1 yes no\nu2 no\n")
    prepare_lang(good / "lang", good / "lexicon.txt")
    from lhotse import CutSet, Recording, RecordingSet

    rec = Recording.from_file(BAD / "wav_truncated.wav")
    rec.duration, rec.num_samples = 1.0, 8000  # what its header says; the data is half of it
    CutSet.from_manifests(recordings=RecordingSet.from_recordings([rec])).to_file(
        good / "cuts_wav_truncated.jsonl")
    shutil.copy(good / "lm.arpa", good / "lang" / "G.arpa")
    for f in ("fst_garbage.fst", "fst_truncated.fst", "fst_garbage.txt"):
        shutil.copytree(good / "lang", good / f"lang-{f}")
        shutil.copy(BAD / f, good / f"lang-{f}" / "G.fst")
    cases = []
    for cid, argv, *_ in CASES:
        out = root / cid
        out.mkdir()
        dirs = {"bad": BAD, "good": good, "out": out}
        cases.append((cid, [_fill(a, dirs) for a in argv], str(out)))
    (root / "compile-lang-dir-is-a-file" / "afile").write_text("")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    (root / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(root / "cases.json"),
                           str(root / "results.json")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((root / "results.json").read_text()), root, good


@pytest.mark.parametrize("cid, argv, names, outputs, loose", CASES, ids=[c[0] for c in CASES])
def test_bad_input(ran, cid, argv, names, outputs, loose):
    results, root, good = ran
    res = results[cid]
    dirs = {"bad": BAD, "good": good, "out": root / cid}
    err = res["stderr"]
    cmd = argv[0]
    assert "Traceback" not in err, err
    assert res["rc"] == 2, (res["rc"], err)
    lines = err.splitlines()
    if loose:
        lines = [ln for ln in lines if " error: " in ln]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"wfst-asr {cmd}: error: "), err
    assert _fill(names, dirs) in lines[0], (names, err)
    assert "weights_only=False" not in err
    for out in outputs:
        assert not Path(_fill(out, dirs)).exists(), out
    for folder in (root / cid, good):
        left = [p for p in folder.rglob(".tmp-*")]
        assert not left, left
    assert res["maxrss_kb"] * 1024 < GB, res["maxrss_kb"]


# ---------------------------------------------------------------------- memory bound
#: Imports the command line, then runs fst-info and fst-draw in a forked child: its rusage
#: (os.wait4) is its own peak memory (a process started by exec would report its parent's).
MEASURE = textwrap.dedent("""\
    import json, os, sys, time
    from wfst_asr.bin.cli import build_parser, main
    build_parser()
    base_kb = next(int(ln.split()[1]) for ln in open("/proc/self/status")
                   if ln.startswith("VmHWM:"))
    t0 = time.time()
    pid = os.fork()
    if pid == 0:
        rcs = [main(["fst-info", sys.argv[1]]), main(["fst-draw", sys.argv[1], sys.argv[2]])]
        sys.stderr.flush()
        os._exit(10 * rcs[0] + rcs[1])
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    print(json.dumps({"rcs": [code // 10, code % 10], "secs": time.time() - t0,
                      "base_kb": base_kb, "rss_kb": usage.ru_maxrss}))
    """)


def test_huge_state_id_is_refused_fast_in_little_memory(tmp_path):
    """Issue 12: ``0 2000000000 1`` / ``2000000000`` made fst-info / fst-draw take 9.4 GB."""
    src = tmp_path / "huge.txt"
    src.write_text("0 2000000000 1\n2000000000\n")
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(src), str(tmp_path / "g.dot")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["rcs"] == [2, 2]
    assert got["secs"] < 5
    assert (got["rss_kb"] - got["base_kb"]) * 1024 < 64 << 20, got  # beyond the imports
    assert got["rss_kb"] * 1024 < 400 << 20, got  # 9.4 GB before
    err = proc.stderr.splitlines()
    assert len(err) == 2 and all("huge.txt:1: state 2000000000 is far beyond" in ln for ln in err)
    assert not (tmp_path / "g.dot").exists()
    # the k2 text reader too, and the states of a sparse but small file are fine
    from wfst_asr.fsa import io

    with pytest.raises(ValueError, match="huge.txt:2: final state 2000000000 is far beyond"):
        io.from_file(src)
    assert io.from_openfst("0 1000 1\n1000\n").num_states == 1002


def test_max_states_is_checked_before_reading(tmp_path):
    from wfst_asr.fsa import io

    fst = tmp_path / "chain.txt"
    fst.write_text("".join(f"{q} {q + 1} 1\n" for q in range(50)) + "50\n")
    with pytest.raises(io.TooManyStatesError, match="52 states, more than the limit 10"):
        io.from_openfst_file(fst, max_states=10)
    assert io.from_openfst_file(fst, max_states=52).num_states == 52
    io.write_fst(io.from_openfst_file(fst), tmp_path / "chain.fst")
    with pytest.raises(io.TooManyStatesError):
        io.read_fst(tmp_path / "chain.fst", max_states=10)


# ---------------------------------------------------------------------- disk full
def _no_space(monkeypatch):
    """Make every file system look full to os.statvfs."""
    real = os.statvfs

    def full(path):
        st = real(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0, st.f_files,
                                  st.f_ffree, st.f_favail, st.f_flag, st.f_namemax))
    monkeypatch.setattr(os, "statvfs", full)


def _assert_enospc(excinfo, path: Path) -> None:
    e = excinfo.value
    assert e.errno == errno.ENOSPC and e.filename == str(path)
    assert str(e.strerror).startswith("no space left on ") and \
        str(e.strerror).endswith(f" while writing {path}")
    assert sorted(os.listdir(path.parent)) == []


def _full_disk(write, path: Path) -> None:
    """``write(path)`` raises the ENOSPC OSError naming ``path`` and leaves nothing."""
    with pytest.raises(OSError) as excinfo:
        write(path)
    _assert_enospc(excinfo, path)


def test_enospc_from_a_write_is_named(tmp_path):
    p = tmp_path / "words.txt"
    with pytest.raises(OSError) as excinfo, atomic_output(p) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    _assert_enospc(excinfo, p)


def test_torch_runtime_error_on_a_full_disk_is_enospc(tmp_path, monkeypatch):
    """torch.save on a full disk says ``RuntimeError: ... unexpected pos``: with statvfs showing
    no space it becomes ENOSPC, for Fsa files and checkpoints alike."""
    from wfst_asr.fsa import io
    from wfst_asr.train.checkpoint import save_checkpoint

    def failing_save(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", failing_save)
    fsa = io.from_str("0 1 1 0.5\n1 2 -1 0\n2\n")
    with pytest.raises(RuntimeError, match="unexpected pos"):  # space left: not a full disk
        io.save(fsa, tmp_path / "L.pt")
    assert os.listdir(tmp_path) == []
    _no_space(monkeypatch)
    _full_disk(lambda p: io.save(fsa, p), tmp_path / "L.pt")
    _full_disk(lambda p: save_checkpoint(p, {"model": {"w": torch.zeros(3)}}),
               tmp_path / "epoch-1.pt")


def test_full_disk_through_the_command_line(tmp_path, monkeypatch, capsys):
    from wfst_asr.bin.cli import main

    (tmp_path / "lexicon.txt").write_text(LEXICON)
    out = tmp_path / "out"
    out.mkdir()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise RuntimeError("unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", failing_save)
    _no_space(monkeypatch)
    argv = ["compile-lang", "--lang-dir", str(out / "lang"), "--lexicon",
            str(tmp_path / "lexicon.txt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("wfst-asr compile-lang: error: no space left on ")
    assert err.rstrip().endswith(f"while writing {out / 'lang' / 'L.pt'}")
    assert not list((out / "lang").glob(".tmp-*")) and not (out / "lang" / "L.pt").exists()
    with pytest.raises(OSError, match="no space left"):
        main(["--debug", *argv])


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs (root only; skipped where mounting is not permitted)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_disk(tiny_tmpfs):
    from wfst_asr.fsa import Fsa, io
    from wfst_asr.train.checkpoint import save_checkpoint

    _full_disk(lambda p: atomic_write_text(p, "x" * 200_000), tiny_tmpfs / "big.txt")
    n = 20_000
    big = Fsa(torch.stack([torch.arange(n), torch.arange(n) + 1, torch.ones(n, dtype=torch.long)],
                          dim=1).int(), torch.zeros(n), num_states=n + 2)
    _full_disk(lambda p: io.save(big, p), tiny_tmpfs / "G.pt")
    _full_disk(lambda p: save_checkpoint(p, {"model": {"w": torch.zeros(100_000)}}),
               tiny_tmpfs / "epoch-1.pt")
    _full_disk(lambda p: io.write_fst(big, p), tiny_tmpfs / "G.fst")
    gc.collect()  # the failed writers' files (deleted, maybe still open) give their space back
    atomic_write_text(tiny_tmpfs / "small.txt", "fits\n")  # the disk works when there is room
    assert os.listdir(tiny_tmpfs) == ["small.txt"]


def test_real_full_disk_through_the_command_line(tiny_tmpfs, tmp_path):
    words = [f"w{i:04d}" for i in range(3000)]
    (tmp_path / "lexicon.txt").write_text("".join(f"{w} {' '.join(w)}\n" for w in words))
    proc = subprocess.run([sys.executable, "-m", "wfst_asr.bin.cli", "compile-lang",
                           "--lang-dir", str(tiny_tmpfs / "lang"), "--lexicon",
                           str(tmp_path / "lexicon.txt")], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"wfst-asr compile-lang: error: no space left on tmpfs "
                                  f"(mounted on {tiny_tmpfs}) while writing {tiny_tmpfs}/lang/")
    assert not list((tiny_tmpfs / "lang").glob(".tmp-*"))


# ---------------------------------------------------------------------- --debug, Ctrl-C
def test_debug_shows_the_traceback_and_ctrl_c_is_130(monkeypatch, capsys):
    from wfst_asr.bin import fst_cmd
    from wfst_asr.bin.cli import main

    bad = str(BAD / "garbage.pt")
    assert main(["fst-info", bad]) == 2
    assert capsys.readouterr().err.startswith(f"wfst-asr fst-info: error: {bad}: ")
    with pytest.raises(ValueError, match="not a torch file"):
        main(["--debug", "fst-info", bad])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(fst_cmd, "read_any", interrupted)
    assert main(["fst-info", bad]) == 130
    assert capsys.readouterr().err == ""
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", "fst-info", bad])
    # a bug (not a bad input) keeps its traceback
    monkeypatch.setattr(fst_cmd, "read_any", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["fst-info", bad])


def test_read_only_file_system(tiny_tmpfs, tmp_path, capsys):
    from wfst_asr.bin.cli import main

    (tiny_tmpfs / "lang").mkdir()
    proc = subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot remount read-only: {proc.stderr.strip()}")
    (tmp_path / "lexicon.txt").write_text(LEXICON)
    for lang in (tiny_tmpfs / "lang", tiny_tmpfs / "new"):
        assert main(["compile-lang", "--lang-dir", str(lang), "--lexicon",
                     str(tmp_path / "lexicon.txt")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"wfst-asr compile-lang: error: {lang}")
        assert err.rstrip().endswith("read-only file system"), err
