"""Process memory: the peak resident size, and the two glibc heap settings the search runs with.

Why the heap settings: TF allocates tensors of 4 KiB and more from its own pool, but the traced graphs
and TF's instantiation of each compiled step (Grappler, executors, kernels) are ordinary malloc
memory. In a paper-size search (crop 321, bfloat16, --recompute_levels=0,1; 2-core AMD EPYC, /proc
smaps) that was 1.5 GiB of main heap and 1.0 GiB of per-thread arenas out of a 4.35 GiB peak.
glibc gives threads their own 64 MiB arenas, up to 8 per core, and keeps freed memory for reuse, so
the garbage of an instantiation stays resident under the activations of the next step.
`limit_malloc_arenas` (before TF starts its threads) and `release_free_heap` (after a step's first
run) lowered that peak to 3.97 GiB, with no measurable change in step time. Both are no-ops that
return False where the C library is not glibc. (The traced graphs themselves are let go once the
steps are compiled: training/compiled_step.py.)
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import sys

# The environment variable `nas_deeplab/__init__.py` reads before TensorFlow starts: search.py sets it
# to the core count unless the user already did; any other program may set it too.
ARENAS_ENV = "NAS_DEEPLAB_MALLOC_ARENAS"
_M_ARENA_MAX = -8   # mallopt parameter number in glibc's malloc.h
_STATE = {"arenas": None}   # the cap this process applied, for the log line


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def resident_mib() -> float:
    """Resident memory of this process now, MiB (Linux /proc; NaN where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return float("nan")


@functools.cache
def _glibc():
    """The process's C library if it is glibc (mallopt and malloc_trim exist), else None; looked up
    once, as the search trims after every first run and validation."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    return libc


def limit_malloc_arenas(count: int) -> bool:
    """At most `count` malloc arenas from now on (threads beyond them share). Call it before the
    threads that matter exist: a thread keeps the arena it first allocated from."""
    if count < 1:
        raise ValueError(f"malloc arenas: {count} is not a positive count")
    libc = _glibc()
    applied = bool(libc and libc.mallopt(_M_ARENA_MAX, int(count)) == 1)
    if applied:
        _STATE["arenas"] = int(count)
    return applied


def limit_malloc_arenas_from_env(environ=None, stream=None) -> bool:
    """`limit_malloc_arenas($NAS_DEEPLAB_MALLOC_ARENAS)` if it is set and not 0 (0: glibc's default);
    a value that is not a count is reported in one line and not applied."""
    environ = os.environ if environ is None else environ
    text = environ.get(ARENAS_ENV, "").strip()
    try:
        count = int(text or "0")
        if count < 0:
            raise ValueError
    except ValueError:
        print(f"{ARENAS_ENV}={text!r} is not a count of malloc arenas (0: glibc's default): not applied",
              file=stream or sys.stderr, flush=True)
        return False
    return limit_malloc_arenas(count) if count else False


def release_free_heap() -> bool:
    """Hand the heap's free pages back to the system (glibc malloc_trim: ~20 ms at 1.5 GiB of heap);
    True if some were."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0) == 1)


def describe_heap_settings() -> str:
    """One line for a CLI's log: what this process does with the malloc heap."""
    if _glibc() is None:
        return "heap: not glibc, the C library's default allocator"
    arenas = (f"at most {_STATE['arenas']} malloc arenas" if _STATE["arenas"]
              else "glibc's default malloc arenas")
    return f"heap: {arenas} (${ARENAS_ENV}), freed heap returned after each compiled step's first run"
