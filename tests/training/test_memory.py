"""glibc heap settings: the arena cap really caps the arenas, the trim really returns freed pages.

Each check runs in a child process: the settings are process-wide, and the test process's own
arenas and heap are not a clean slate."""

import io
import subprocess
import sys
import textwrap

import pytest

from nas_deeplab.training import memory

needs_glibc = pytest.mark.skipif(memory._glibc() is None, reason="the C library is not glibc")


def _child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          check=True, timeout=120)


# Four threads allocate at the same time and hold their blocks (100 KB: below glibc's mmap threshold,
# so from an arena); malloc_stats() then lists one "Arena N:" block per arena on stderr.
_ARENAS = """
    import ctypes, importlib.util, sys, threading
    spec = importlib.util.spec_from_file_location("memory", {path!r})
    memory = importlib.util.module_from_spec(spec); spec.loader.exec_module(memory)
    if {limit}:
        assert memory.limit_malloc_arenas({limit})
    barrier, held = threading.Barrier(4), []
    def work():
        barrier.wait()
        held.append([bytearray(100_000) for _ in range(20)])
        barrier.wait()
    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]; [t.join() for t in threads]
    ctypes.CDLL(None).malloc_stats()
"""


@needs_glibc
def test_arena_cap_limits_the_arenas_threads_get():
    # memory.py is loaded from its file: importing the package would start TensorFlow's threads first.
    arenas = {limit: _child(_ARENAS.format(path=memory.__file__, limit=limit)).stderr.count("Arena ")
              for limit in (0, 1)}
    assert arenas[1] == 1          # every thread shares the main arena
    assert arenas[0] >= 3          # glibc's default: threads get arenas of their own


# 200 MB of 100 KB blocks from the main heap, all freed but the last (it pins the heap's top, so
# free() alone cannot give the pages back); RSS before and after release_free_heap().
_TRIM = """
    import importlib.util
    spec = importlib.util.spec_from_file_location("memory", {path!r})
    memory = importlib.util.module_from_spec(spec); spec.loader.exec_module(memory)
    def rss():
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
    blocks = [bytearray(100_000) for _ in range(2000)]
    pin = blocks[-1]
    del blocks[:-1]
    before = rss()
    assert memory.release_free_heap()
    print(before, rss())
"""


@needs_glibc
def test_release_free_heap_returns_freed_pages():
    before, after = map(float, _child(_TRIM.format(path=memory.__file__)).stdout.split())
    assert before - after > 150   # MiB: most of the 190 MiB freed


def test_arena_count_from_the_environment_is_checked():
    err = io.StringIO()
    assert memory.limit_malloc_arenas_from_env({}, err) is False
    assert memory.limit_malloc_arenas_from_env({memory.ARENAS_ENV: "0"}, err) is False
    assert err.getvalue() == ""   # unset and 0 mean glibc's default, silently
    for bad in ("two", "-1", "1.5"):
        err = io.StringIO()
        assert memory.limit_malloc_arenas_from_env({memory.ARENAS_ENV: bad}, err) is False
        line = err.getvalue()
        assert line.count("\n") == 1 and memory.ARENAS_ENV in line and repr(bad) in line
    with pytest.raises(ValueError, match="not a positive count"):
        memory.limit_malloc_arenas(0)


@needs_glibc
def test_importing_the_package_applies_the_arena_cap_before_tensorflow_starts():
    # search.py sets the variable to the core count before its first nas_deeplab import; here 1, so
    # that TF's inter- and intra-op threads, which allocate while a matmul runs, all share one arena.
    out = _child("""
        import ctypes, os
        os.environ["NAS_DEEPLAB_MALLOC_ARENAS"] = "1"
        import nas_deeplab, tensorflow as tf
        x = tf.random.uniform([256, 256])
        for _ in range(20):
            x = tf.nn.relu(x @ x / 256.0)
        x.numpy()
        from nas_deeplab.training import memory
        print(memory.describe_heap_settings())
        ctypes.CDLL(None).malloc_stats()
    """)
    assert out.stderr.count("Arena ") == 1
    assert "heap: at most 1 malloc arenas ($NAS_DEEPLAB_MALLOC_ARENAS)" in out.stdout   # the CLI's log line
