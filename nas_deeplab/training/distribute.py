"""`--strategy` -> tf.distribute strategy, and the two-CPU-device harness used by tests and CI."""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("mirrored", "one_device", "multi_worker")


def configure_logical_cpus(n: int) -> None:
    """Split the host CPU into n logical devices (before TF initialises) so MirroredStrategy has
    several replicas on machines with no GPU."""
    cpus = tf.config.list_physical_devices("CPU")
    existing = tf.config.get_logical_device_configuration(cpus[0])
    if existing and len(existing) == n:
        return
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])


_STRATEGIES: dict = {}


def make_strategy(name: str = "mirrored", num_cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """The process's strategy for `name` (created once, then reused; see `_make_strategy`).

    Two MirroredStrategy objects in one process number their replica-context collectives from the
    same keys, so the second one's all-reduce (sync BN, valid-pixel counts) collides with the
    first's: "Shape mismatch in the collective instance 100" (TF 2.21). One strategy per device set
    per process avoids it, e.g. when train.py evaluates after training or tests run in one process.
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy={name!r}: choose one of {list(STRATEGIES)}")
    if num_cpu_replicas > 1:
        configure_logical_cpus(num_cpu_replicas)
    # Listing devices starts the TF runtime, which must wait for the multi-worker strategy.
    key = (name,) if name == "multi_worker" else (
        name, tuple(d.name for d in tf.config.list_logical_devices()))
    if key not in _STRATEGIES:
        _STRATEGIES[key] = _make_strategy(name)
    return _STRATEGIES[key]


def _make_strategy(name: str) -> tf.distribute.Strategy:
    """mirrored: all visible GPUs, else the CPU (or `num_cpu_replicas` logical CPUs);
    one_device: the first GPU or the CPU; multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG."""
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                             "(cluster spec and this worker's task), see README")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as e:
            raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    # (listing devices initialises the TF runtime, which must not happen before the multi-worker
    # strategy has configured its collectives, hence after that branch)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if gpus:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    cpus = tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in cpus])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes checkpoints and summaries under multi-worker training."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())
