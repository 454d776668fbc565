"""Shared helpers of the reliability tests: a tiny data set and architecture, CLI subprocesses with
timeouts, free ports, checkpoint comparison and partial-file detection."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NUM_CLASSES = 3

# The smallest network train.py accepts quickly: one block per cell, three layers, F=4, one ASPP rate.
TINY_ARCH = {"format": "nas_deeplab.architecture", "version": 1, "name": "tiny",
             "operations": ["separable_3x3_2", "skip_connect"], "hiddenstate_indices": [1, 0],
             "backbone": [0, 1, 1], "filter_multiplier": 4}


def png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def scene(h, w, seed=0, num_classes=NUM_CLASSES, ignore=255):
    rs = np.random.RandomState(seed)
    image = rs.randint(0, 256, size=(h, w, 3)).astype(np.uint8)
    label = rs.randint(0, num_classes, size=(h, w)).astype(np.uint8)
    label[: h // 4, : w // 4] = ignore
    return image, label


def write_tiny_dataset(folder: str, num_classes: int = NUM_CLASSES, name: str = "tiny") -> str:
    """8 train + 2 val scenes of 36x36 in official-format shards, plus a JSON descriptor; returns the
    descriptor path (the --dataset flag; --dataset_dir is `folder`)."""
    from nas_deeplab.data.tfrecord import ShardWriter, encode_example
    os.makedirs(folder, exist_ok=True)
    for split, n, base in (("train", 8, 0), ("val", 2, 100)):
        with ShardWriter(folder, split, 2 if split == "train" else 1, n) as w:
            for i in range(n):
                image, label = scene(36, 36, seed=base + i, num_classes=num_classes)
                w.write(encode_example(png(image), f"{split}{i}", 36, 36, png(label)))
    desc = os.path.join(folder, f"{name}.json")
    with open(desc, "w") as f:
        json.dump({"name": name, "num_classes": num_classes, "ignore_label": 255,
                   "splits_to_sizes": {"train": 8, "val": 2}}, f)
    return desc


def write_arch(path: str, **changes) -> str:
    with open(path, "w") as f:
        json.dump(dict(TINY_ARCH, **changes), f)
    return path


def env(**extra) -> dict:
    # CPU only: the tiny runs are compared bit for bit, and several share the machine at once.
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
             TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    e.pop("TF_CONFIG", None)
    e.update(extra)
    return e


def train_args(logdir: str, desc: str, arch: str, steps: int = 6, *extra: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "train.py"), f"--train_logdir={logdir}",
            f"--dataset={desc}", f"--dataset_dir={os.path.dirname(desc)}", f"--architecture={arch}",
            "--train_crop_size=33,33", "--train_batch_size=2", f"--training_number_of_steps={steps}",
            "--save_interval_steps=1", "--deterministic", "--eval_after_training=false",
            "--atrous_rates=1", "--decoder_output_stride=none", "--log_steps=1", *extra]
# No decoder: these runs compare processes and strategies bit-near (1e-4), and the stride-4 decoder's
# float rounding differs more between strategies (tests/training/test_replica_equivalence.py covers it).


def search_args(out, desc):
    return [sys.executable, os.path.join(ROOT, "search.py"), f"--output_dir={out}", f"--dataset={desc}",
            f"--dataset_dir={os.path.dirname(desc)}", "--epochs=2", "--steps_per_epoch=2",
            "--arch_start_epoch=0", "--crop_size=33", "--batch_size=2", "--filter_multiplier=2",
            "--num_layers=2", "--num_blocks=1", "--val_steps=0", "--deterministic", "--checkpoint_every=1",
            "--log_every=1"]


class Proc:
    """A CLI subprocess whose stdout/stderr go to files (no pipe can fill up and block it)."""

    def __init__(self, args, log_prefix, timeout=300, **env_extra):
        self.args, self.timeout = args, timeout
        self.out_path, self.err_path = log_prefix + ".out", log_prefix + ".err"
        self._out, self._err = open(self.out_path, "w"), open(self.err_path, "w")
        self.t0 = time.monotonic()
        self.popen = subprocess.Popen(args, cwd=ROOT, env=env(**env_extra), stdout=self._out,
                                      stderr=self._err, stdin=subprocess.DEVNULL)
        self.wall_s = None

    def poll(self):
        rc = self.popen.poll()
        if rc is not None and self.wall_s is None:
            self.wall_s = time.monotonic() - self.t0
        return rc

    def kill(self):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        return self.wait(30)

    def wait(self, timeout=None):
        left = self.timeout - (time.monotonic() - self.t0) if timeout is None else timeout
        try:
            self.popen.wait(max(1.0, left))
        except subprocess.TimeoutExpired:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()
            self._close()
            raise AssertionError(f"timed out after {self.timeout} s (hang?): {' '.join(self.args)}\n"
                                 f"{self.tail()}") from None
        self.poll()
        self._close()
        return self.popen.returncode

    def _close(self):
        for f in (self._out, self._err):
            if not f.closed:
                f.close()

    @property
    def stdout(self) -> str:
        with open(self.out_path, errors="replace") as f:
            return f.read()

    @property
    def stderr(self) -> str:
        with open(self.err_path, errors="replace") as f:
            return f.read()

    def tail(self, n=3000) -> str:
        return f"--- stdout ---\n{self.stdout[-n:]}\n--- stderr ---\n{self.stderr[-n:]}"


def run(args, log_prefix, timeout=300, **env_extra) -> Proc:
    p = Proc(args, log_prefix, timeout, **env_extra)
    p.wait()
    return p


def wait_all(procs, timeout=None):
    """Wait for every process (each under its own timeout); kill the rest if one hangs."""
    try:
        for p in procs:
            p.wait(timeout)
    finally:
        for p in procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGKILL)
                p.popen.wait()
            p._close()


def latest_step(logdir: str) -> int:
    """Step of the checkpoint TF's state file names (-1: none), read without TensorFlow."""
    try:
        with open(os.path.join(logdir, "checkpoint")) as f:
            m = re.search(r'^model_checkpoint_path: "(?:.*/)?ckpt-(\d+)"', f.read(), re.M)
    except OSError:
        return -1
    return int(m.group(1)) if m else -1


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def checkpoint_values(prefix: str) -> dict[str, np.ndarray]:
    import tensorflow as tf
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def assert_checkpoints_equal(a: str, b: str, rtol=None, atol=None, only=None):
    """Same variable names; values bit-identical (rtol None) or within tolerance."""
    va, vb = checkpoint_values(a), checkpoint_values(b)
    if only is not None:
        va = {k: v for k, v in va.items() if only(k)}
        vb = {k: v for k, v in vb.items() if only(k)}
    assert sorted(va) == sorted(vb), f"{a} vs {b}: variables differ: {sorted(set(va) ^ set(vb))[:10]}"
    assert va, f"{a}: no variables compared"
    bad = []
    for k in sorted(va):
        x, y = va[k], vb[k]
        if rtol is None or x.dtype.kind not in "fc":
            same = x.shape == y.shape and (np.array_equal(x, y) if x.dtype.kind != "f" else
                                           x.tobytes() == y.tobytes())
        else:
            same = x.shape == y.shape and np.allclose(x, y, rtol=rtol, atol=atol)
        if not same:
            diff = (float(np.max(np.abs(x.astype(np.float64) - y))) if x.shape == y.shape and
                    x.dtype.kind in "fiu" else "shape/type")
            bad.append(f"{k}: max |diff| {diff}")
    assert not bad, f"{a} vs {b}: {len(bad)} of {len(va)} variables differ:\n  " + "\n  ".join(bad[:15])
    return len(va)


TEMP_NAME = re.compile(r"(^\.|\.tmp|_temp|tmp-|\.part$)")


def temp_names(folder: str) -> list[str]:
    """Paths under `folder` that look like unfinished writes (temp names of ours or of TF)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            if TEMP_NAME.search(n):
                out.append(os.path.relpath(os.path.join(dirpath, n), folder))
    return sorted(out)


def assert_outputs_whole(folder: str):
    """Every final-named output parses: JSON files load, architecture.json is an Architecture, the
    state file's checkpoints load."""
    import tensorflow as tf
    from nas_deeplab.architecture import Architecture
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not TEMP_NAME.search(d)]  # debris of a crash, not output
        for n in filenames:
            p = os.path.join(dirpath, n)
            if TEMP_NAME.search(n):
                continue
            if n.endswith(".json"):
                with open(p) as f:
                    json.load(f)
            if n == "architecture.json":
                Architecture.load(p)
            if n.endswith(".npy"):
                np.load(p)
    for d in [dp for dp, _, fns in os.walk(folder) if "checkpoint" in fns and not TEMP_NAME.search(dp)]:
        prefix = tf.train.latest_checkpoint(d)
        assert prefix, f"{d}/checkpoint names no existing checkpoint"
        tf.train.load_checkpoint(prefix)


def run_once(tmp_path_factory, name: str, fn):
    """fn(work_folder) -> JSON-able result, computed ONCE per test session even under pytest-xdist
    (CI runs `-n 2`, where each worker has its own session fixtures): the first worker computes it
    under a file lock in the shared base temp folder, the others read the stored result."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    result_path = root / f"reliability_{name}.json"
    with open(root / f"reliability_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if result_path.exists():
            return json.loads(result_path.read_text())
        work = pathlib.Path(tempfile.mkdtemp(prefix=f"reliability_{name}_", dir=root))  # fresh per try
        result = fn(work)
        result_path.write_text(json.dumps(result))
        return result


def outcome(p: Proc) -> dict:
    """What the tests need of a finished Proc, as JSON."""
    return {"rc": p.popen.returncode, "stdout": p.stdout, "stderr": p.stderr, "args": p.args}


def tail(o: dict, n=3000) -> str:
    return f"--- stdout ---\n{o['stdout'][-n:]}\n--- stderr ---\n{o['stderr'][-n:]}"
