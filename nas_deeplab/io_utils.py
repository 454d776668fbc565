"""Atomic file output: write under a temporary name in the same folder, then rename.

A crash while writing never leaves a file (or folder) that looks complete, and an existing good file
is only replaced once its successor is whole. Write errors (full disk, read-only folder) surface as
`OutputError` naming the path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


class OutputError(OSError):
    """An output could not be written; the message names the path."""


def _tmp_name(path: str) -> str:
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(path: str, overwrite: bool = False):
    """Yield a temporary folder next to `path`; on success it becomes `path`, on error it vanishes."""
    path = os.path.abspath(path)
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)) and not overwrite:
        raise OutputError(f"{path} exists and is not empty (pass --overwrite to replace it)")
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    except OSError as e:
        raise OutputError(f"cannot write under {parent}: {e.strerror or e}") from e
    try:
        yield tmp
        if os.path.exists(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable_dir(path: str, what: str = "output folder") -> None:
    """Fail before any work starts if `path` cannot be created or written."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OutputError(f"{what} {path} is not writable: {e.strerror or e}") from e
