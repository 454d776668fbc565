"""Atomic file output: write under a temporary name in the same folder, then rename.

A crash while writing never leaves a file (or folder) that looks complete, and an existing good file
is only replaced once its successor is whole. Write errors surface as `OutputError` naming the path
and the real reason (`why_not_writable`): the errno alone misleads (anything under /proc says "No
such file or directory").
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile


class OutputError(OSError):
    """An output could not be written; the message names the path."""


def _fs_type(path: str) -> str | None:
    """The file system type of the mount holding `path` (Linux /proc/self/mounts), else None."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) > 2]
    except OSError:
        return None
    best = None
    for point, kind in mounts:
        point = point.replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and (
                best is None or len(point) > len(best[0])):
            best = (point, kind)
    return best and best[1]


def why_not_writable(folder: str, err: OSError) -> str:
    """Why nothing could be created in `folder` (or on the way to it), judged from the deepest part
    of the path that exists: not a folder, a broken link, a read-only file system, no permission, a
    file system that takes no new files (/proc, /sys), a full disk; else the system's own words."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device" if err.errno == errno.ENOSPC else "disk quota exceeded"
    folder = os.path.abspath(folder)
    base, denied = folder, False
    while os.path.dirname(base) != base:
        try:
            os.lstat(base)
            break
        except OSError as e:  # missing, under a file, or under a folder we may not enter
            denied = denied or isinstance(e, PermissionError)
            base = os.path.dirname(base)
    if denied:
        return f"no permission to enter {base}"
    if os.path.islink(base) and not os.path.exists(base):
        return f"{base} is a broken symbolic link (to {os.readlink(base)}), so its parent folder is missing"
    if not os.path.isdir(base):
        return f"{base} is a file, not a folder"
    try:
        read_only = bool(os.statvfs(base).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only or err.errno == errno.EROFS:
        return f"{base} is on a read-only file system"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"no permission to create files in {base}"
    if err.errno in (errno.ENOENT, errno.EACCES, errno.EPERM):  # the modes allow it, the file system not
        fs = _fs_type(os.path.realpath(base))
        return f"{base} does not accept new files or folders" + (f" ({fs} file system)" if fs else "")
    return err.strerror or str(err)


def _tmp_name(path: str) -> str:
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = _tmp_name(path)
    try:
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OutputError(f"cannot write {path}: {why_not_writable(os.path.dirname(tmp), e)}") from e


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
        raise OutputError(f"cannot write under {parent}: {why_not_writable(parent, e)}") from e
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
        raise OutputError(f"{what} {path} is not writable: {why_not_writable(path, e)}") from e
