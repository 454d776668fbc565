"""Thread-pool policies reach TF (checked in fresh processes: pools are fixed once TF starts)."""

import os
import subprocess
import sys

import pytest

from nas_deeplab.training import threads

_PROBE = """
import sys
from nas_deeplab.training import threads
line = threads.configure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), prefer=sys.argv[4])
import tensorflow as tf
tf.constant(1.0) + 1.0  # start the runtime
print(tf.config.threading.get_inter_op_parallelism_threads(), tf.config.threading.get_intra_op_parallelism_threads())
print(line)
"""


def _probe(policy, inter=0, intra=0, prefer="op_parallel"):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", _PROBE, policy, str(inter), str(intra), prefer],
                         capture_output=True, text=True, env=env, check=True).stdout.splitlines()
    inter_got, intra_got = map(int, out[-2].split())
    return inter_got, intra_got, out[-1]


def test_op_parallel_uses_one_thread_per_op_and_all_cores_for_ops():
    inter, intra, line = _probe("op_parallel")
    assert (inter, intra) == (os.cpu_count(), 1)
    assert "op_parallel" in line


def test_default_leaves_tf_alone_and_auto_follows_the_program_preference_without_gpu():
    assert _probe("default")[:2] == (0, 0)
    assert _probe("auto", prefer="default")[:2] == (0, 0)
    assert _probe("auto", prefer="op_parallel")[:2] == (os.cpu_count(), 1)


def test_explicit_counts_override_the_policy():
    assert _probe("op_parallel", inter=3, intra=2)[:2] == (3, 2)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="thread policy 'fast'"):
        threads.configure("fast")


def test_a_started_runtime_is_reported_not_crashed():
    import tensorflow as tf
    tf.constant(0.0).numpy()  # the test process runtime is up (conftest made logical CPUs)
    current = tf.config.threading.get_inter_op_parallelism_threads()
    assert threads.configure("op_parallel", inter_op=current + 3).startswith("threads: unchanged")
    assert tf.config.threading.get_inter_op_parallelism_threads() == current
