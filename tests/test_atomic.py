"""wfst_asr.atomic: files appear whole or not at all, with normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from wfst_asr.atomic import atomic_output, atomic_write_text


def test_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "words.txt"
    p.write_text("old\n")
    atomic_write_text(p, "new\n")
    assert p.read_text() == "new\n"
    assert sorted(os.listdir(tmp_path)) == ["words.txt"]


def test_error_keeps_old_file(tmp_path):
    p = tmp_path / "G.fst"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(p) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("crash while writing")
    assert p.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["G.fst"]


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = tmp_path / "L.fst"
        atomic_write_text(p, "x")
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644  # not mkstemp's 0600
    finally:
        os.umask(old)
