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


_STATE = {"no_driver": False, "gpus": None, "announced": False}


def import_tensorflow(stream=None, announce: bool = True):
    """Import TensorFlow and list its devices with the start-up chatter filtered; returns the module.

    `import nas_deeplab` calls it with announce=False; a CLI calls it again (then a no-op import)
    to print "no GPU driver found" once and to keep absl/TF Python INFO lines hidden."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    stream = stream or sys.stderr
    if "tensorflow" not in sys.modules:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile(mode="w+b") as capture:
            os.dup2(capture.fileno(), 2)
            try:
                import tensorflow as tf
                _STATE["gpus"] = tf.config.list_physical_devices("GPU")   # cuInit runs here
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines(keepends=True)
        kept, _STATE["no_driver"] = filter_startup_lines(lines)
        for line in kept:
            sys.stderr.write(line)
        sys.stderr.flush()
    tf = sys.modules["tensorflow"]
    if announce and not _STATE["announced"]:
        _STATE["announced"] = True
        if _STATE["no_driver"] and not _STATE["gpus"]:
            stream.write("no GPU driver found: running on the CPU\n")
            stream.flush()
        from absl import logging
        logging.set_verbosity(logging.WARNING)   # absl/TF Python INFO lines (strategy, saver) stay hidden
    return tf
