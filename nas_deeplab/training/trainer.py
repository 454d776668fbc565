"""The DeepLab training loop (official train.py semantics) under tf.distribute.

One compiled step per iteration: forward, valid-pixel mean cross-entropy + slim-equivalent L2
(`model.losses`, scaled per replica), gradients, a finiteness check agreed by all replicas, then SGD
momentum with the poly learning rate, applied only if everything is finite. A non-finite step is
refused and the run stops with `NonFiniteError` naming the step and where it first appeared (the loss,
or the first variable whose gradient is not finite); the checkpoint on disk is the last good one.

Resume: the global step, model, optimizer slots and the checkpoint metadata are restored from the
newest checkpoint in `train_logdir`. The input stream is a pure function of (seed, position), so with
`deterministic=True` the resumed run skips the batches already consumed and continues bit-exactly;
without it, the resumed stream is reseeded (cheap, but a different sequence).
With `precise_bn_batches`, the chief then recomputes the BN statistics (`precise_bn.py`) and stores
them as a new newest checkpoint, which a later resume starts from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

try:  # TF 2.21 no longer pulls tensorboard in; tf.summary.scalar needs it imported
    import tensorboard  # noqa: F401
except ImportError:  # pragma: no cover
    pass

from nas_deeplab.io_utils import atomic_write_text, check_writable_dir
from nas_deeplab.training import checkpointing, distribute, guarded_update, metrics, precision
from nas_deeplab.training.distribute import is_chief, make_strategy
from nas_deeplab.training.losses import valid_pixel_mean_loss
from nas_deeplab.training.model_config import ModelConfig
from nas_deeplab.training.progress import ProgressLine
from nas_deeplab.training.schedules import PolyLearningRate

MIXED_PRECISION = precision.MIXED_PRECISION


class NonFiniteError(RuntimeError):
    """A step produced a non-finite loss or gradient; it was not applied."""

    def __init__(self, step: int, where: str, last_checkpoint: str | None):
        self.step, self.where, self.last_checkpoint = step, where, last_checkpoint
        kept = (f"the last good checkpoint {last_checkpoint} is kept" if last_checkpoint
                else "no checkpoint had been written yet")
        super().__init__(f"non-finite value at training step {step}, first seen in {where}; the step was "
                         f"refused and training stopped ({kept}). Lower --base_learning_rate, check the "
                         "input data, or use float32 if mixed precision is on.")


@dataclasses.dataclass
class TrainConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train_logdir: str = "runs/train"
    dataset: str = "synthetic"
    dataset_dir: str | None = None
    train_split: str | None = None          # None: the descriptor's default train split
    train_batch_size: int = 8               # GLOBAL batch (all replicas, all workers)
    train_crop_size: tuple[int, int] = (65, 65)
    min_scale_factor: float = 0.5
    max_scale_factor: float = 2.0
    scale_factor_step_size: float = 0.25
    min_resize_value: int | None = None
    max_resize_value: int | None = None
    resize_factor: int | None = None
    training_number_of_steps: int = 300
    base_learning_rate: float = 0.05
    learning_power: float = 0.9
    slow_start_step: int = 0
    slow_start_learning_rate: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 4e-5
    drop_path_keep_prob: float = 1.0
    fine_tune_batch_norm: bool = True
    batch_norm_decay: float | None = None   # None: official 0.9997, lowered for short runs (see below)
    tf_initial_checkpoint: str | None = None
    initialize_last_layer: bool = True      # False: official fine-tuning, the last layers start afresh
    last_layers_contain_logits_only: bool = False   # ... and then only the logits are "last layers"
    strategy: str = "mirrored"
    num_cpu_replicas: int = 0               # >1: split the CPU into that many logical devices
    deterministic: bool = False
    seed: int | None = None
    mixed_precision: str = "none"
    save_interval_steps: int = 100
    summary_interval_steps: int = 10
    log_interval_steps: int = 10
    max_to_keep: int = 2
    skip_corrupt_records: bool = False
    precise_bn_batches: int = 0             # >0: precise BN after training (training/precise_bn.py)
    precise_bn_batch_size: int | None = None  # None: train_batch_size

    def validate(self) -> None:
        def bad(flag, msg):
            raise ValueError(f"--{flag}: {msg}")
        if self.train_batch_size < 1:
            bad("train_batch_size", f"must be >= 1, got {self.train_batch_size}")
        if len(self.train_crop_size) != 2 or min(self.train_crop_size) < 17:
            bad("train_crop_size", f"needs two sizes >= 17 (h,w), got {list(self.train_crop_size)}")
        if self.training_number_of_steps < 1:
            bad("training_number_of_steps", f"must be >= 1, got {self.training_number_of_steps}")
        if self.base_learning_rate <= 0:
            bad("base_learning_rate", f"must be positive, got {self.base_learning_rate}")
        if not 0 <= self.slow_start_step < self.training_number_of_steps:
            bad("slow_start_step", f"must be in [0, training_number_of_steps), got {self.slow_start_step}")
        if not 0.0 < self.drop_path_keep_prob <= 1.0:
            bad("drop_path_keep_prob", f"must be in (0, 1], got {self.drop_path_keep_prob}")
        if not 0.0 <= self.momentum < 1.0:
            bad("momentum", f"must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            bad("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not 0 < self.min_scale_factor <= self.max_scale_factor:
            bad("min_scale_factor", f"need 0 < min_scale_factor <= max_scale_factor, got "
                f"{self.min_scale_factor}, {self.max_scale_factor}")
        if self.scale_factor_step_size < 0:
            bad("scale_factor_step_size", f"must be >= 0, got {self.scale_factor_step_size}")
        if self.batch_norm_decay is not None and not 0.0 <= self.batch_norm_decay < 1.0:
            bad("batch_norm_decay", f"must be in [0, 1), got {self.batch_norm_decay}")
        if self.mixed_precision not in MIXED_PRECISION:
            bad("mixed_precision", f"choose one of {list(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        if self.save_interval_steps < 1:
            bad("save_interval_steps", f"must be >= 1, got {self.save_interval_steps}")
        if self.precise_bn_batches < 0:
            bad("precise_bn_batches", f"must be >= 0, got {self.precise_bn_batches}")
        if self.precise_bn_batch_size is not None and self.precise_bn_batch_size < 2:
            bad("precise_bn_batch_size", f"must be >= 2 (the image-pooling BN normalises over the batch), "
                f"got {self.precise_bn_batch_size}")


OFFICIAL_BN_DECAY = 0.9997


def effective_batch_norm_decay(decay: float | None, training_steps: int) -> float:
    """The BN moving-average decay to train with.

    The official 0.9997 averages over ~3,300 steps: in a run of a few hundred steps the moving
    statistics (used at evaluation) would still be near their initial values and evaluation would be
    meaningless. Unless given explicitly, runs shorter than 10 such horizons (33,333 steps) use
    1 - 10 / training_steps instead (at least 0.9); longer runs use the official value."""
    if decay is not None:
        return float(decay)
    return max(0.9, min(OFFICIAL_BN_DECAY, 1.0 - 10.0 / float(training_steps)))


def set_batch_norm_decay(model, decay: float) -> int:
    """Set the moving-average momentum of every BatchNormalization layer; returns how many."""
    n = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(decay)
            n += 1
    return n


@dataclasses.dataclass
class TrainResult:
    train_logdir: str
    step: int
    checkpoint: str | None
    losses: list[tuple[int, float]]         # (step, total loss) of the steps run in this call
    resumed_from: str | None


def seed_everything(seed: int, deterministic: bool) -> bool:
    """Seed Python/NumPy/TF/Keras; with `deterministic` also turn on op determinism. Returns whether
    op determinism was on before (so a library caller's process can be put back)."""
    from tensorflow.python.framework import config as tf_config  # is_/disable_ are not public API
    was_on = bool(getattr(tf_config, "is_op_determinism_enabled", lambda: False)())
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    return was_on


def _restore_op_determinism(was_on: bool) -> None:
    from tensorflow.python.framework import config as tf_config
    if not was_on and hasattr(tf_config, "disable_op_determinism"):
        tf_config.disable_op_determinism()


def train(cfg: TrainConfig, *, dataset_fn: Callable[..., tf.data.Dataset] | None = None,
          stream=None) -> TrainResult:
    """Run (or resume) training as configured; returns the final step and checkpoint.

    `dataset_fn(global_batch_size, seed, num_shards, shard_index)` may replace the TFRecord input
    (tests); it must yield {"image", "label"} batches of the given size, repeated.
    """
    stream = stream or sys.stdout
    cfg.validate()
    seed = cfg.seed if cfg.seed is not None else (0 if cfg.deterministic else
                                                  int.from_bytes(os.urandom(4), "little") >> 1)
    # The strategy first: MultiWorkerMirroredStrategy must configure collectives before anything
    # (seeding included) initialises the TF runtime.
    strategy = make_strategy(cfg.strategy, cfg.num_cpu_replicas)
    determinism_was_on = seed_everything(seed, cfg.deterministic)
    try:
        result = _train_in_strategy(cfg, strategy, seed, dataset_fn, stream)
    finally:
        _restore_op_determinism(determinism_was_on)
    if cfg.precise_bn_batches and result.checkpoint and is_chief(strategy):
        # Outside the strategy and the training precision policy: the model is built as eval.py builds it.
        from nas_deeplab.training.precise_bn import store_precise_checkpoint
        result.checkpoint = store_precise_checkpoint(result.checkpoint, cfg.precise_bn_batches,
                                                     cfg.precise_bn_batch_size, cfg.model, stream=stream)
    return result


def _train_in_strategy(cfg, strategy, seed, dataset_fn, stream):
    replicas = strategy.num_replicas_in_sync
    if cfg.train_batch_size % replicas:
        raise ValueError(f"--train_batch_size={cfg.train_batch_size} must be a multiple of the "
                         f"{replicas} replicas in sync")
    precision.check_trainable_here(cfg.mixed_precision)
    chief = is_chief(strategy)
    num_workers, worker_idx = distribute.worker_info(strategy)
    logdir = os.path.abspath(cfg.train_logdir)
    if chief:
        check_writable_dir(logdir, "--train_logdir")  # fail before any work is done

    from nas_deeplab.data.descriptors import get_descriptor
    if dataset_fn is None:
        from nas_deeplab.data.synthetic import resolve_dataset
        descriptor, dataset_dir = resolve_dataset(cfg.dataset, cfg.dataset_dir)
    else:
        descriptor, dataset_dir = get_descriptor(cfg.dataset), cfg.dataset_dir
    num_classes, ignore = descriptor.num_classes, descriptor.ignore_label
    split = cfg.train_split or descriptor.default_train_split

    with precision.policy(cfg.mixed_precision):
        return _train(cfg, strategy, descriptor, dataset_dir, split, num_classes, ignore, seed, chief,
                      num_workers, worker_idx, logdir, dataset_fn, stream)


def _train(cfg, strategy, descriptor, dataset_dir, split, num_classes, ignore, seed, chief, num_workers,
           worker_idx, logdir, dataset_fn, stream):
    replicas = strategy.num_replicas_in_sync
    total_steps = cfg.training_number_of_steps
    schedule = PolyLearningRate(cfg.base_learning_rate, total_steps, cfg.learning_power,
                                cfg.slow_start_step, cfg.slow_start_learning_rate)
    # fine_tune_batch_norm=False: BN uses its moving statistics and, as in the official code (the
    # backbone's is_training is False then), drop path is off.
    keep_prob = cfg.drop_path_keep_prob if cfg.fine_tune_batch_norm else 1.0
    crop_h, crop_w = (int(c) for c in cfg.train_crop_size)
    with strategy.scope():
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        model, arch = cfg.model.build(
            num_classes, step_variable=step, input_shape=(crop_h, crop_w, 3),
            weight_decay=cfg.weight_decay, drop_path_keep_prob=keep_prob,
            total_training_steps=total_steps, sync_batch_norm=replicas > 1,
            fine_tune_batch_norm=cfg.fine_tune_batch_norm)
        bn_decay = effective_batch_norm_decay(cfg.batch_norm_decay, total_steps)
        if bn_decay != OFFICIAL_BN_DECAY:
            set_batch_norm_decay(model, bn_decay)
            print(f"batch norm decay {bn_decay:.4g} (official 0.9997 is for runs of >= 33,333 steps; "
                  "set --batch_norm_decay to override)", file=stream, flush=True)
        optimizer = keras.optimizers.SGD(learning_rate=lambda: schedule(step), momentum=cfg.momentum)
        loss_scaled = cfg.mixed_precision == "mixed_float16"
        if loss_scaled:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        trainable = model.trainable_variables
        optimizer.build(trainable)

    meta = checkpointing.build_metadata(arch, num_classes, cfg.model.structure(arch),
                                        extra={"dataset": descriptor.name})
    ckpt = checkpointing.ResumableCheckpoint(logdir, meta, max_to_keep=cfg.max_to_keep, is_chief=chief,
                                             worker_id=worker_idx, model=model, optimizer=optimizer,
                                             step=step)
    resumed = ckpt.restore_latest()
    if resumed:
        print(f"resumed from {resumed} (step {int(step.numpy())})", file=stream, flush=True)
    elif cfg.tf_initial_checkpoint:
        initialise_from_checkpoint(model, cfg.tf_initial_checkpoint, stream, cfg.initialize_last_layer,
                                   cfg.last_layers_contain_logits_only)
    start = int(step.numpy())
    if chief:
        atomic_write_text(os.path.join(logdir, "architecture.json"), arch.to_json())
        atomic_write_text(os.path.join(logdir, "train_config.json"),
                          json.dumps(_jsonable(cfg), indent=2, sort_keys=True) + "\n")
    if start >= total_steps:
        print(f"{logdir}: already trained to step {start} (--training_number_of_steps={total_steps})",
              file=stream, flush=True)
        return TrainResult(logdir, start, ckpt.latest, [], resumed)

    data_seed = seed if (cfg.deterministic or start == 0) else seed + 7919 * start
    skipped_counters: list = []  # --skip_corrupt_records: the pipeline's count of dropped records
    dist_ds = _distributed_input(cfg, strategy, descriptor, dataset_dir, split, data_seed,
                                 dataset_fn, skip=start if cfg.deterministic else 0,
                                 counters=skipped_counters)

    names = ["loss"] + [f"the gradient of {v.path}" for v in trainable]

    def replica_step(batch):
        images, labels = batch["image"], batch["label"]
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = valid_pixel_mean_loss(logits, labels, ignore)
            reg = (tf.nn.scale_regularization_loss(tf.add_n([tf.cast(l, tf.float32) for l in model.losses]))
                   if model.losses else tf.constant(0.0))
            total = loss + reg
            target = optimizer.scale_loss(total) if loss_scaled else total
        grads = tape.gradient(target, trainable)
        if loss_scaled:
            # Dynamic loss scaling skips overflowing steps itself; only the loss is guarded here.
            bad = tf.cast(tf.logical_not(tf.math.is_finite(loss)), tf.float32)[None]
            bad = tf.concat([bad, tf.zeros([len(trainable)])], 0)
            optimizer.apply_gradients(zip(grads, trainable))
        else:
            bad = guarded_update.nonfinite_flags([total] + grads)  # one decision for all replicas
            guarded_update.apply_if(tf.equal(tf.reduce_sum(bad), 0.0), grads, trainable, optimizer)
        preds = tf.argmax(logits, axis=-1, output_type=tf.int32)
        cm = metrics.confusion_matrix_tf(labels, preds, num_classes, ignore)
        return {"loss": loss, "total": total, "bad": bad, "cm": cm}

    @tf.function
    def train_step(iterator):
        batch = next(iterator)
        lr = schedule(step)
        out = strategy.run(replica_step, args=(batch,))
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, out["loss"], axis=None)
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, out["total"], axis=None)
        cm = strategy.reduce(tf.distribute.ReduceOp.SUM, out["cm"], axis=None)
        bad = strategy.experimental_local_results(out["bad"])[0]
        if loss_scaled:
            bad = strategy.reduce(tf.distribute.ReduceOp.SUM, out["bad"], axis=None)
        ok = tf.equal(tf.reduce_sum(bad), 0.0)
        step.assign_add(tf.cast(ok, tf.int64))
        return {"loss": loss, "total": total, "lr": lr, "cm": cm, "bad": bad}

    writer = (tf.summary.create_file_writer(os.path.join(logdir, "train")) if chief
              else tf.summary.create_noop_writer())
    progress = ProgressLine(total_steps, start, every=cfg.log_interval_steps, stream=stream)
    iterator = iter(dist_ds)
    losses: list[tuple[int, float]] = []
    cm_acc = np.zeros((num_classes, num_classes), np.int64)
    last_saved = ckpt.latest
    current = start
    t_start = time.monotonic()
    try:
        with writer.as_default():
            while current < total_steps:
                out = train_step(iterator)
                bad = out["bad"].numpy()
                if bad.any():
                    where = names[int(np.flatnonzero(bad)[0])]
                    raise NonFiniteError(current + 1, where, last_saved)
                current += 1
                total_loss = float(out["total"].numpy())
                losses.append((current, total_loss))
                cm_acc += out["cm"].numpy()
                if current % cfg.summary_interval_steps == 0 or current == total_steps:
                    tf.summary.scalar("loss", float(out["loss"].numpy()), step=current)
                    tf.summary.scalar("total_loss", total_loss, step=current)
                    tf.summary.scalar("learning_rate", float(out["lr"].numpy()), step=current)
                    tf.summary.scalar("train_miou", metrics.mean_iou(cm_acc), step=current)
                    if skipped_counters:
                        tf.summary.scalar("skipped_records", _count(skipped_counters), step=current)
                    cm_acc[:] = 0
                progress.update(current, loss=total_loss, lr=float(out["lr"].numpy()))
                if current % cfg.save_interval_steps == 0 or current == total_steps:
                    last_saved = ckpt.save(current) or last_saved
    finally:
        writer.flush()
    print(f"trained steps {start}..{current} in {time.monotonic() - t_start:.1f} s; checkpoint "
          f"{last_saved}", file=stream, flush=True)
    if skipped_counters:
        print(f"skipped {_count(skipped_counters)} corrupt record(s) (--skip_corrupt_records)", file=stream,
              flush=True)
    return TrainResult(logdir, current, last_saved, losses, resumed)


def _count(counters) -> int:
    return int(sum(int(c.numpy()) for c in counters))


def _distributed_input(cfg, strategy, descriptor, dataset_dir, split, seed, dataset_fn, skip, counters):
    global_batch = cfg.train_batch_size

    def build(batch_size, num_shards, shard_index):
        if dataset_fn is not None:
            ds = dataset_fn(batch_size, seed, num_shards, shard_index)
        else:
            from nas_deeplab.data.pipeline import make_dataset
            ds = make_dataset(dataset_dir, split, descriptor, batch_size=batch_size, is_training=True,
                              crop_size=tuple(cfg.train_crop_size), min_scale_factor=cfg.min_scale_factor,
                              max_scale_factor=cfg.max_scale_factor,
                              scale_factor_step_size=cfg.scale_factor_step_size,
                              min_resize_value=cfg.min_resize_value, max_resize_value=cfg.max_resize_value,
                              resize_factor=cfg.resize_factor, seed=seed, deterministic=cfg.deterministic,
                              repeat=True, num_shards=num_shards, shard_index=shard_index,
                              skip_corrupt_records=cfg.skip_corrupt_records)
            if getattr(ds, "skipped_records", None) is not None:
                counters.append(ds.skipped_records)
        ds = ds.map(lambda b: {"image": b["image"], "label": b["label"]})
        if skip:
            ds = ds.skip(skip)  # the batches consumed before the resumed step (pure function of seed)
        return ds

    return distribute.distribute_per_worker(strategy, build, global_batch)


def initialise_from_checkpoint(model, path: str, stream=None, initialize_last_layer: bool = True,
                               last_layers_contain_logits_only: bool = False):
    """--tf_initial_checkpoint: a TF2 checkpoint of ours (weights only) or an official TF1 one, restored
    completely except, with initialize_last_layer=False, official DeepLab's last layers (the logits,
    and unless last_layers_contain_logits_only the ASPP and decoder too). Returns the RestoreInfo;
    a checkpoint that does not fit raises CheckpointError naming what differs."""
    from nas_deeplab.official import names, restore
    stream = stream or sys.stdout
    exclude = () if initialize_last_layer else names.last_layer_scopes(last_layers_contain_logits_only)
    info = restore.restore_weights(model, path, exclude_scopes=exclude)
    print(f"initialised from --tf_initial_checkpoint: {info.summary()}", file=stream, flush=True)
    return info


def _jsonable(obj) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(x) for x in obj]
    return obj
