"""Output-folder errors name the real reason (issue 18): under /proc the system says "No such file or
directory" although /proc exists; the message must say it is not writable, and why.

Real failures where this machine has them (tests run as root, so a chmod alone does not fail: the
permission case drops to user `nobody` in a forked child); a read-only file system and a full disk
are simulated by the errno they raise.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from nas_deeplab import io_utils
from nas_deeplab.io_utils import OutputError

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PROC_DIR = "/proc/nas_deeplab_test_output"
needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a Linux /proc")


@needs_proc
@pytest.mark.parametrize("call", [
    lambda: io_utils.check_writable_dir(PROC_DIR, "--output_dir"),
    lambda: io_utils.check_writable_dir(PROC_DIR + "/deeper/still", "--output_dir"),
    lambda: io_utils.check_writable_dir("/proc", "--output_dir"),
    lambda: io_utils.atomic_write_bytes(PROC_DIR + "/cell.png", b"png"),
    lambda: io_utils.atomic_write_text("/proc/results.json", "{}"),
    lambda: io_utils.atomic_directory(PROC_DIR).__enter__(),
], ids=["folder", "nested_folder", "proc_itself", "file_in_new_folder", "file", "atomic_directory"])
def test_proc_is_reported_as_not_accepting_files_not_as_missing(call):
    with pytest.raises(OutputError) as info:
        call()
    message = str(info.value)
    assert "/proc does not accept new files or folders (proc file system)" in message, message
    assert "No such file" not in message
    assert not os.path.exists(PROC_DIR)


def test_a_file_on_the_way_is_named_as_not_a_folder(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("a file\n")
    for target in (f, f / "run", f / "run" / "deeper"):
        with pytest.raises(OutputError, match=f"--train_logdir {target} is not writable: {f} is a file, not a folder$"):
            io_utils.check_writable_dir(str(target), "--train_logdir")
    with pytest.raises(OutputError, match=f"cannot write {f}/x.json: {f} is a file, not a folder$"):
        io_utils.atomic_write_text(str(f / "x.json"), "{}")
    assert f.read_text() == "a file\n"


def test_a_broken_link_on_the_way_is_named_as_a_missing_parent(tmp_path):
    link = tmp_path / "data_link"
    os.symlink(tmp_path / "gone", link)
    with pytest.raises(OutputError, match=f"{link} is a broken symbolic link \\(to {tmp_path}/gone\\)"):
        io_utils.check_writable_dir(str(link / "run"), "--output_dir")
    assert not os.path.exists(tmp_path / "gone")


def _as_nobody(fn):
    """Run fn() in a forked child as uid/gid 65534 when root (else here); returns its message."""
    if os.getuid() != 0:
        try:
            fn()
        except OutputError as e:
            return str(e)
        return None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest, no TF, only os calls, then _exit
        os.close(r)
        try:
            os.setgid(65534)
            os.setuid(65534)
            fn()
            out = b"\x00none"
        except OutputError as e:
            out = str(e).encode()
        except BaseException as e:  # noqa: BLE001  (report, never return into pytest)
            out = b"\x00" + repr(e).encode()
        os.write(w, out)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    if out.startswith(b"\x00"):
        if b"PermissionError" in out and b"setuid" in out.lower():
            pytest.skip("cannot drop to another user here")
        return None if out == b"\x00none" else pytest.fail(out[1:].decode())
    return out.decode()


@pytest.fixture
def open_tmp():
    """A folder everyone may enter (pytest's tmp_path is private to root)."""
    d = tempfile.mkdtemp(prefix="nas_deeplab_io_")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d)


def test_a_folder_without_write_permission_is_named(open_tmp):
    locked = os.path.join(open_tmp, "locked")
    os.mkdir(locked)
    os.chmod(locked, 0o555)
    message = _as_nobody(lambda: io_utils.check_writable_dir(os.path.join(locked, "run"), "--export_path"))
    assert message == f"--export_path {locked}/run is not writable: no permission to create files in {locked}"
    assert os.listdir(locked) == []


def test_a_folder_that_cannot_be_entered_is_named(open_tmp):
    private = os.path.join(open_tmp, "private")
    os.makedirs(os.path.join(private, "runs"))
    os.chmod(private, 0o700)
    message = _as_nobody(lambda: io_utils.check_writable_dir(os.path.join(private, "runs", "a"), "--output_dir"))
    assert message == f"--output_dir {private}/runs/a is not writable: no permission to enter {private}"


@pytest.mark.parametrize("err,reason", [
    (errno.EROFS, "is on a read-only file system"),
    (errno.ENOSPC, "no space left on the device"),
])
def test_simulated_read_only_file_system_and_full_disk(tmp_path, monkeypatch, err, reason):
    def refuse(*_, **__):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(io_utils.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError) as info:
        io_utils.check_writable_dir(str(tmp_path / "out"), "--output_dir")
    assert str(info.value).startswith(f"--output_dir {tmp_path}/out is not writable: ")
    assert str(info.value).endswith(reason if err == errno.ENOSPC else f"{tmp_path}/out {reason}")


@needs_proc
def test_export_cli_says_why_proc_is_not_writable():
    """The case of the issue, end to end: exit 2, one line with the reason, no traceback. (train.py,
    eval.py and search.py reach the same `check_writable_dir`; one TF start-up is enough here.)"""
    proc = subprocess.run([sys.executable, "export.py", f"--export_path={PROC_DIR}/model", "--allow_random_init",
                           "--num_classes=3"], cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "No such file" not in proc.stdout + proc.stderr
    assert (f"export.py: error: the folder of --export_path {PROC_DIR} is not writable: /proc does not accept "
            "new files or folders (proc file system)") in proc.stderr.splitlines()
    assert not os.path.exists(PROC_DIR)
