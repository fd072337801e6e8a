"""Atomic file output: write to a temporary name in the same folder, then rename; and UTF-8 text
input whose decoding errors name the file and line.

A crash or an error leaves either the old file or the new one, never a half-written file, and
no temporary file. A full disk is an ``OSError(ENOSPC, "no space left on DEVICE while writing
FILE")`` whatever the writer raised (torch's ``RuntimeError: unexpected pos``, ...).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["atomic_output", "atomic_write_text", "check_utf8", "iter_text_lines", "out_of_space",
           "read_text", "utf8_error"]

#: free space below which a failed write (a RuntimeError or an OSError without errno, as torch
#: and kaldifst report them) is taken for a full disk.
LOW_SPACE_BYTES = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _device(folder: str) -> str:
    """``DEVICE (mounted on MOUNT)`` of the file system holding ``folder`` (best effort)."""
    mount = os.path.abspath(folder)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            devices = [line.split()[0] for line in f if line.split()[1:2] == [mount]]
    except OSError:
        devices = []
    return f"{devices[-1]} (mounted on {mount})" if devices else mount


def out_of_space(e: BaseException, folder: str) -> bool:
    """Whether ``e``, raised while writing into ``folder``, means that its disk is full: ENOSPC
    or EDQUOT, or a RuntimeError / an OSError without errno or with EIO (how torch and kaldifst
    report a failed write) while ``os.statvfs`` shows (almost) no free space or no free inode
    left."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(e, OSError) and e.errno not in (None, errno.EIO):
        return False
    if not isinstance(e, (OSError, RuntimeError)):
        return False
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_SPACE_BYTES or (st.f_files > 0 and st.f_favail == 0)


def _fsync(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _writable_folder(path: str) -> str:
    """The folder of ``path``; FileNotFoundError / NotADirectoryError / IsADirectoryError naming
    ``path`` when it cannot hold a file there."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            raise NotADirectoryError(errno.ENOTDIR, f"{folder} is not a directory", path)
        raise FileNotFoundError(errno.ENOENT, f"no such directory {folder}", path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    return folder


@contextmanager
def atomic_output(path: str | os.PathLike, fsync: bool = True) -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it over ``path`` when the block succeeds.

    The temporary file exists (empty) when the block starts; writers may replace it. It gets
    the permissions of a newly created file (0666 minus the umask), not mkstemp's 0600, and
    (``fsync``) is flushed to the disk before the rename, the folder after it (best effort). On
    an exception the temporary file is removed and ``path`` is left untouched; a full disk
    (:func:`out_of_space`) becomes ``OSError(ENOSPC, "no space left on DEVICE while writing
    PATH", PATH)``. A missing folder, or one that cannot be written, is an OSError naming
    ``path`` before the block runs.
    """
    path = os.fspath(path)
    folder = _writable_folder(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-",
                                   suffix="-" + os.path.basename(path))
    except OSError as e:
        if out_of_space(e, folder):
            raise OSError(errno.ENOSPC, f"no space left on {_device(folder)} while writing "
                          f"{path}", path) from e
        raise OSError(e.errno, e.strerror, path) from e
    os.close(fd)
    try:
        try:
            yield tmp
            if fsync:
                _fsync(tmp)
        except (OSError, RuntimeError) as e:
            if out_of_space(e, folder):
                raise OSError(errno.ENOSPC, f"no space left on {_device(folder)} while writing "
                              f"{path}", path) from e
            raise
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    if fsync:
        try:
            _fsync(folder, directory=True)
        except OSError:
            pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


# ---------------------------------------------------------------------- UTF-8 text input
def utf8_error(path: str | os.PathLike, data: bytes, e: UnicodeDecodeError,
               first_line: int = 1) -> ValueError:
    """A ValueError ``PATH:LINE: not valid UTF-8 ...`` for ``e``, raised decoding ``data`` (the
    file's bytes from line ``first_line`` on)."""
    line = first_line + data.count(b"\n", 0, e.start)
    col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    return ValueError(f"{os.fspath(path)}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} "
                      f"at column {col}: {e.reason})")


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of ``path`` with universal newlines (as ``open(path, encoding="utf-8")
    .read()``); bytes that are not UTF-8 are a ValueError naming the file and line."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise utf8_error(path, data, e) from None
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def check_utf8(path: str | os.PathLike) -> None:
    """Raise the ValueError of :func:`read_text` (naming the file and line) when ``path`` is
    not UTF-8; for a decoding error met by a reader that does not name the file."""
    read_text(path)


def iter_text_lines(path: str | os.PathLike) -> Iterator[str]:
    """The lines of ``path`` (UTF-8, ending with their ``\\n``), read lazily; bytes that are
    not UTF-8 are a ValueError naming the file and line."""
    with open(path, "rb") as f:
        for no, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise utf8_error(path, raw, e, no) from None
