"""Shared pytest helpers: the ../shared/data location and the device list."""

from __future__ import annotations

import os
from pathlib import Path

# Passive OpenMP waiting, set before torch is imported (as wfst_asr/__init__.py does): under
# plain `python -m pytest`, torch would otherwise come first and spin (10x slower small ops).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Must come before any kaldifst / kaldi_decoder / kaldilm import in this process (even a
# test module's own `import kaldifst`), or a later kaldi_hmm_gmm import hangs; see
# wfst_asr/_kaldi.py. conftest.py is imported before the test modules are collected.
import kaldi_hmm_gmm  # noqa: F401
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Devices every device-aware test runs on: always "cpu", plus "cuda" when available.
devices: list[str] = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


#: The TIMIT recipe's config files (the library registers only corpus-free bases).
TIMIT_CONF = Path(__file__).resolve().parent.parent / "egs" / "timit" / "conf"


def timit_conf(name: str) -> str:
    """Path of ``egs/timit/conf/<name>.yaml`` (e.g. ``timit_conf("ctc_blstm")``)."""
    return str(TIMIT_CONF / f"{name}.yaml")


def shared_data_dir() -> Path:
    """Return ``../shared/data`` (relative to the repo root), or skip the test if it is absent."""
    path = (REPO_ROOT.parent / "shared" / "data").resolve()
    if not path.is_dir():
        reason = f"../shared/data not found: {path} does not exist"
        print(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(name="shared_data_dir")
def shared_data_dir_fixture() -> Path:
    """Fixture form of :func:`shared_data_dir`."""
    return shared_data_dir()


@pytest.fixture(params=devices)
def device(request: pytest.FixtureRequest) -> str:
    """A device name ("cpu" or "cuda"): the test runs once per entry of :data:`devices`."""
    return request.param


def recipe_wer(results: Path, method: str, split: str) -> float:
    """The WER of ``method`` on ``split`` in a decode dir's ``results.txt``."""
    import re

    m = re.search(rf"^{method} +{split} +WER +([0-9.]+)%", results.read_text(), re.MULTILINE)
    assert m is not None, (method, split, results.read_text())
    return float(m.group(1))
