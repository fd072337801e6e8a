"""The one place that imports the compiled Kaldi packages, in a safe order.

Importing ``kaldifst``, ``kaldi_decoder`` or ``kaldilm`` *before* ``kaldi_hmm_gmm``
hangs the process forever. Checked by hand on this machine (Python 3.11, kaldifst 1.8.3,
kaldi_decoder 0.3.2, kaldilm 1.15.5, kaldi-hmm-gmm 1.1.4)::

    timeout 60 .venv/bin/python -c "import kaldifst, kaldi_hmm_gmm"      # rc=124 after 60 s
    timeout 60 .venv/bin/python -c "import kaldi_decoder, kaldi_hmm_gmm" # rc=124 after 60 s
    timeout 30 .venv/bin/python -c "import kaldilm, kaldi_hmm_gmm"       # rc=124 after 30 s
    timeout 60 .venv/bin/python -c "import kaldi_hmm_gmm, kaldifst, kaldi_decoder"  # ok, 0.04 s

While hung, the process sits at 0 % CPU waiting on a futex, inside the import of
``kaldi_hmm_gmm`` (``python -X importtime`` shows kaldifst fully imported): a deadlock.
It probably happens while the shared libraries bundled with kaldi_hmm_gmm (its own copies of
OpenFst/Kaldi) initialise after another package's copy has loaded. ``kaldialign``,
``kaldi_native_fbank``, ``sentencepiece``, ``lhotse`` and ``torch`` are safe in any order.

So code in wfst_asr never writes ``import kaldifst``; it calls ``_kaldi.kaldifst()``.
Each accessor imports ``kaldi_hmm_gmm`` first and returns the module (Python caches it).
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

#: Packages that must be imported only after ``kaldi_hmm_gmm``.
ORDER_SENSITIVE = ("kaldifst", "kaldi_decoder", "kaldilm")


def _load(name: str) -> ModuleType:
    """Import ``kaldi_hmm_gmm`` first, then ``name``, and return ``name``'s module."""
    importlib.import_module("kaldi_hmm_gmm")
    return importlib.import_module(name)


def kaldi_hmm_gmm() -> ModuleType:
    """Return the ``kaldi_hmm_gmm`` module (HMM topologies, GMMs, Kaldi decoders)."""
    return _load("kaldi_hmm_gmm")


def kaldifst() -> ModuleType:
    """Return the ``kaldifst`` module (OpenFst bindings), imported after kaldi_hmm_gmm."""
    return _load("kaldifst")


def kaldi_decoder() -> ModuleType:
    """Return the ``kaldi_decoder`` module, imported after kaldi_hmm_gmm."""
    return _load("kaldi_decoder")


def kaldilm() -> ModuleType:
    """Return the ``kaldilm`` module (ARPA to FST), imported after kaldi_hmm_gmm."""
    return _load("kaldilm")


def bad_order_imported() -> list[str]:
    """Return the order-sensitive packages already imported without ``kaldi_hmm_gmm``."""
    if "kaldi_hmm_gmm" in sys.modules:
        return []
    return [name for name in ORDER_SENSITIVE if name in sys.modules]


def warn_if_bad_order() -> None:
    """Warn if a later ``import kaldi_hmm_gmm`` would hang this process."""
    bad = bad_order_imported()
    if bad:
        warnings.warn(
            f"{', '.join(bad)} was imported before kaldi_hmm_gmm: importing kaldi_hmm_gmm "
            "now (directly or through wfst_asr._kaldi) will hang this process forever. "
            "Import kaldi_hmm_gmm first, or use wfst_asr._kaldi.kaldifst() etc. instead.",
            RuntimeWarning,
            stacklevel=3,
        )


def versions() -> dict[str, str]:
    """Return the versions of the Kaldi packages, importing them in the safe order."""
    modules = {
        "kaldi_hmm_gmm": kaldi_hmm_gmm(),
        "kaldifst": kaldifst(),
        "kaldi_decoder": kaldi_decoder(),
        "kaldilm": kaldilm(),
        "kaldialign": importlib.import_module("kaldialign"),
        "kaldi_native_fbank": importlib.import_module("kaldi_native_fbank"),
    }
    out = {}
    for name, module in modules.items():
        version = getattr(module, "__version__", None)
        if version is None:
            from importlib.metadata import PackageNotFoundError
            from importlib.metadata import version as dist_version

            try:
                version = dist_version(name)
            except PackageNotFoundError:
                version = "unknown"
        out[name] = str(version)
    return out


# At import (wfst_asr/__init__.py imports this module first): warn about a bad order now.
warn_if_bad_order()
