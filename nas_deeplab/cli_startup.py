"""A quiet TensorFlow start-up for the CLIs: the known start-up chatter goes, every other line stays.

TF 2.21 writes its start-up notices straight to file descriptor 2 before its own log settings apply
(`TF_CPP_MIN_LOG_LEVEL` does not reach them): the oneDNN notice, "Could not find cuda drivers", and on
a machine without an NVIDIA driver an *error* line "failed call to cuInit" that alarms people although
nothing is wrong. `import_tensorflow()` captures fd 2 while TF loads and finds its devices, drops
exactly those lines (the cuInit one only when TF also said there is no CUDA driver), passes every
other line on unchanged, and says in one plain line when there is no GPU.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

_NOISE = (
    re.compile(r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"),
    re.compile(r"port\.cc:\d+\] oneDNN custom operations are on"),
    re.compile(r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine"),
)
_NO_DRIVER = re.compile(r"Could not find cuda drivers on your machine")
_CUINIT = re.compile(r"failed call to cuInit")


def filter_startup_lines(lines: list[str]) -> tuple[list[str], bool]:
    """(the lines to show, whether TF said it found no CUDA driver)."""
    no_driver = any(_NO_DRIVER.search(line) for line in lines)
    kept = [line for line in lines
            if not any(p.search(line) for p in _NOISE) and not (no_driver and _CUINIT.search(line))]
    return kept, no_driver


def import_tensorflow(stream=None):
    """Import TensorFlow and list its devices with the start-up chatter filtered; returns the module.
    A no-op filter when TF is already imported (tests, a second call)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    stream = stream or sys.stderr
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf
            gpus = tf.config.list_physical_devices("GPU")   # cuInit runs here
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        lines = capture.read().decode("utf-8", "replace").splitlines(keepends=True)
    kept, no_driver = filter_startup_lines(lines)
    for line in kept:
        stream.write(line)
    if no_driver and not gpus:
        stream.write("no GPU driver found: running on the CPU\n")
    stream.flush()
    from absl import logging
    logging.set_verbosity(logging.WARNING)   # absl/TF Python INFO lines (strategy, saver) stay hidden
    return tf
