"""wfst_asr: speech recognition with Kaldi-style WFSTs and a pure-PyTorch FSA engine."""

__version__ = "0.1.0"

# _kaldi first: importing it warns if kaldifst/kaldi_decoder/kaldilm were imported before
# kaldi_hmm_gmm, before anything below could import kaldi_hmm_gmm and hang (see _kaldi.py).
from . import _kaldi, fsa  # noqa: F401
