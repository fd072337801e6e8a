"""The Kaldi packages import in a safe order through wfst_asr._kaldi (see its docstring).

Each check runs in a fresh interpreter under a timeout, since the failure mode is a hang.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
from conftest import REPO_ROOT

TIMEOUT_S = 120


def run_python(
    code: str, timeout: float = TIMEOUT_S, hint: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter from the repo root; fail the test if it hangs."""
    try:
        return subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {timeout} s (bad kaldi import order?) {hint}:\n{code}")


def test_package_then_all_accessors() -> None:
    proc = run_python(
        "import wfst_asr; from wfst_asr import _kaldi; "
        "_kaldi.kaldifst(); _kaldi.kaldi_decoder(); _kaldi.kaldi_hmm_gmm(); _kaldi.kaldilm(); "
        "print('done')"
    )
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout


def test_kaldi_decoder_first() -> None:
    proc = run_python("import wfst_asr._kaldi as k; k.kaldi_decoder(); k.kaldifst(); print('done')")
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout


def test_warns_on_bad_order() -> None:
    """Importing kaldifst before wfst_asr warns; it also returns, since ``import wfst_asr``
    itself must not import kaldi_hmm_gmm (the Kaldi packages are imported lazily)."""
    hint = "- does `import wfst_asr` import kaldi_hmm_gmm eagerly? Keep it lazy"
    proc = run_python("import kaldifst, wfst_asr; print('done')", timeout=60, hint=hint)
    assert proc.returncode == 0, proc.stderr
    assert "imported before kaldi_hmm_gmm" in proc.stderr


def test_no_warning_in_good_order() -> None:
    from wfst_asr import _kaldi

    _kaldi.kaldifst()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _kaldi.warn_if_bad_order()
    assert set(_kaldi.versions()) >= {"kaldi_hmm_gmm", "kaldifst", "kaldi_decoder"}
