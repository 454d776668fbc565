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


def worker_info(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(num_workers, this worker's index) of a multi-worker strategy; (1, 0) otherwise."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return 1, 0
    spec = resolver.cluster_spec().as_dict()
    workers = len(spec.get("worker", [])) + len(spec.get("chief", []))
    idx = resolver.task_id + (1 if resolver.task_type == "worker" and "chief" in spec else 0)
    return max(workers, 1), idx


def distribute_per_worker(strategy: tf.distribute.Strategy, build, global_batch: int):
    """Distribute `build(batch_size, num_shards, shard_index) -> batched tf.data.Dataset`.

    One worker: the global batch, split over its replicas (TF's auto-sharding off: the pipeline
    shards itself). Several: each worker builds its slice of every global batch, so N workers train
    on exactly what N replicas of one process would.
    """
    num_workers, _ = worker_info(strategy)
    if num_workers > 1:
        def fn(ctx: tf.distribute.InputContext):
            per_worker = global_batch // ctx.num_input_pipelines
            ds = build(per_worker, ctx.num_input_pipelines, ctx.input_pipeline_id)
            return ds.unbatch().batch(ctx.get_per_replica_batch_size(global_batch), drop_remainder=True)
        return strategy.distribute_datasets_from_function(fn)
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return strategy.experimental_distribute_dataset(build(global_batch, 1, 0).with_options(opts))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes checkpoints and summaries under multi-worker training."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())
