"""An exclusive lock on an experiment directory: one training run writes into it at a time.

::

    with ExpDirLock("exp/ctc_blstm"):      # ExpDirLockedError at once if another run holds it
        trainer.fit()

The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``EXP/.lock``; the file holds the holder's
``pid``, ``host`` and ``since`` (JSON), so a second run names them in its error. The kernel
releases a flock when its process ends however it ends (exit, exception, ``kill -9``), so a
lock is never stale on a local disk; a lock file left behind is just reused. (On a network file
system without flock, ``flock`` may fail: the error says so.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["LOCK_NAME", "ExpDirLock", "ExpDirLockedError"]

LOCK_NAME = ".lock"

#: realpath of a lock file this process holds -> [descriptor, holders]
_HELD: dict[str, list[int]] = {}


class ExpDirLockedError(RuntimeError):
    """The experiment directory is locked by another run (the message names it)."""


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return (f"pid {info['pid']} on host {info['host']} since {info['since']}"
                + (f" ({info['what']})" if info.get("what") else ""))
    except (ValueError, KeyError, TypeError):
        return "another process (no holder recorded)"


class ExpDirLock:
    """Exclusive lock on ``exp_dir`` (created if needed); a context manager, or
    :meth:`acquire` / :meth:`release`. ``what`` is recorded with the holder (e.g. the command)."""

    def __init__(self, exp_dir: str | os.PathLike, what: str = "") -> None:
        self.dir = Path(exp_dir)
        self.path = self.dir / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`ExpDirLockedError` naming the holder (at once).
        Re-entrant within a process: a directory this process already holds (through another
        :class:`ExpDirLock`, e.g. the command line's around ``Trainer.fit``'s) is shared."""
        if self._fd is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            self._fd = _HELD[key][0]
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            finally:
                os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ExpDirLockedError(
                    f"{self.dir} is in use by another run: {_holder(text)} holds {self.path}; "
                    "wait for it to finish, stop it, or use another experiment directory"
                ) from None
            raise ExpDirLockedError(f"{self.path}: cannot lock it ({e.strerror}; a file "
                                    "system without flock?)") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S %z"), "what": self.what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        self._fd = fd
        _HELD[key] = [fd, 1]

    def release(self) -> None:
        """Clear the holder and unlock (the file stays: removing it could race a waiter)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key][1] -= 1
            if _HELD[key][1] > 0:
                return
            del _HELD[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        # LOCK_UN, not just close: forked children (data loader workers) share the descriptor
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
