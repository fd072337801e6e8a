"""wfst_asr: speech recognition with Kaldi-style WFSTs and a pure-PyTorch FSA engine."""

import os

__version__ = "0.1.0"

# OpenMP threads that spin while waiting make PyTorch's many small operations (the engine's
# frame loops, beam search) up to 10x slower when another process competes for the cores;
# passive waiting costs nothing measurable on an idle machine (see docs/benchmarks.md). Only a
# default, and only effective when wfst_asr is imported before torch (run.sh, run_tests.sh and
# the recipes export it too).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# _kaldi first: importing it warns if kaldifst/kaldi_decoder/kaldilm were imported before
# kaldi_hmm_gmm, before anything below could import kaldi_hmm_gmm and hang (see _kaldi.py).
from . import _kaldi, fsa  # noqa: F401
