"""Progress bars that draw only on a terminal.

A tqdm bar redrawn a few times a second is useful on a terminal and a flood of ``\\r`` lines in a
redirected log. :func:`progress` returns a ``tqdm`` bar (on stderr by default) that is disabled
when that stream is not a TTY, or when quiet mode is on: the environment variable
``WFST_ASR_QUIET=1`` (set by ``wfst-asr --quiet`` through :func:`set_quiet`, so worker
processes started afterwards inherit it). A disabled bar still iterates and accepts
``update`` / ``set_postfix``; it just prints nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["QUIET_ENV", "is_quiet", "progress", "progress_enabled", "set_quiet"]

#: The environment variable of quiet mode (any value but "", "0", "false", "no": quiet).
QUIET_ENV = "WFST_ASR_QUIET"


def is_quiet() -> bool:
    """Whether quiet mode is on (``WFST_ASR_QUIET`` set to a true value)."""
    return os.environ.get(QUIET_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_quiet(quiet: bool = True) -> None:
    """Turn quiet mode on or off for this process and the processes it starts later."""
    if quiet:
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


def progress_enabled(file: IO[str] | None = None) -> bool:
    """Whether a bar on ``file`` (default ``sys.stderr``) would draw: a TTY and not quiet."""
    if is_quiet():
        return False
    stream = file if file is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(iterable: Iterable[Any] | None = None, *, disable: bool = False,
             file: IO[str] | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on ``file`` (default stderr), disabled unless
    :func:`progress_enabled` (and not ``disable``)."""
    stream = file if file is not None else sys.stderr
    return tqdm(iterable, disable=disable or not progress_enabled(stream), file=stream,
                **kwargs)
