"""Precise BN: replace every BN's moving statistics by population statistics of the frozen network.

Why: the moving averages are gathered on training crops while the weights still change. Evaluated
on full-size images (larger maps for the ASPP's large-rate branches and the image pooling), the
statistics differ, and channels whose training variance was ~0 blow up. As detectron2's PreciseBN
(fvcore `update_bn_stats`) and pycls' `compute_precise_bn_stats`: with the weights frozen, run N
batches; every BN that trains with batch statistics normalises with the statistics of its batch, as in
training. Its new moving mean / variance are the POPULATION statistics of everything it saw: the mean
and the (Bessel-corrected) variance of all its input values over the N batches, pooled from the
per-batch moments (fvcore's `_PopulationVarianceEstimator`; Wu & Johnson, "Rethinking 'Batch' in
BatchNorm", 2021). Not the mean of the per-batch variances (fvcore's default estimator): that one
misses the variance between batches, so it depends on the batch size.
The batch size matters anyway: every BN normalises with its batch's statistics during the pass, and
the image-pooling BN sees one value per image, so batches smaller than training's change what every
later layer sees. The default is therefore the run's training batch size. Measured (published F=8,
trained at batch 8 on synthetic_context, val mIoU): moving statistics 0.369; precise BN at batch 2
(4 batches) 0.225 with the mean of batch variances, 0.234 pooled; at batch 8 (12 batches) 0.377 and
0.379. Drop path and dropout are off (the model is called with
training=False; only the BN layers are switched to batch statistics).

Conventions, chosen to match what evaluation computes and what the layer stores in training:
- the batches are preprocessed as for evaluation (full size, padded with 127.5 / ignore to 32k+1),
  and the statistics INCLUDE the padded area: the evaluated forward pass normalises those positions
  too (as training-mode BN does with the padded parts of its crops);
- the variance is Bessel-corrected (N / (N - 1), N = every value pooled), as the layer's moving
  variance in training is (the fused kernel and the synchronised path of `model/layers.py` both fold
  n / (n - 1) of the batch into it);
- layers that do not use batch statistics in training (`use_batch_stats=False`, i.e.
  --fine_tune_batch_norm=false, or non-trainable) keep their statistics and normalise with them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
from contextlib import contextmanager
from typing import Iterable

import keras
import numpy as np
import tensorflow as tf

INFO_KEY = "precise_bn"   # the entry of checkpoint info (checkpointing.write_derived_checkpoint)
DEGENERATE_RELATIVE_VARIANCE = 1e-6
CROP_AREA_RATIO_WARNING = 4.0


def batch_norm_layers(model) -> list:
    """Every BatchNormalization layer of `model` (backbone and heads), in a fixed order."""
    found = [l for l in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(l, keras.layers.BatchNormalization)]
    return sorted(found, key=lambda l: l.moving_mean.path)


def uses_batch_statistics(layer) -> bool:
    """Whether the layer normalises with batch statistics in training (so its moving ones are
    averages that precise BN recomputes)."""
    return bool(getattr(layer, "use_batch_stats", True)) and bool(layer.trainable)


@contextmanager
def _replaced_calls(layers, make_call):
    """Temporarily give each layer an instance-level `call` (Keras looks `self.call` up per call)."""
    for i, layer in enumerate(layers):
        object.__setattr__(layer, "call", types.MethodType(make_call(i), layer))
    try:
        yield
    finally:
        for layer in layers:
            object.__delattr__(layer, "call")


def _moment_count(x):
    shape = tf.shape(x)
    return tf.reduce_prod(shape[:-1])


@dataclasses.dataclass
class PreciseBNResult:
    num_batches: int
    num_images: int
    updated: list[str]        # layer paths whose moving statistics were replaced
    kept: list[str]           # layers that do not train with batch statistics (left alone)

    def summary(self) -> str:
        kept = f", {len(self.kept)} kept (no batch statistics in training)" if self.kept else ""
        return (f"precise BN: moving statistics of {len(self.updated)} BN layers recomputed over "
                f"{self.num_batches} batches ({self.num_images} images){kept}")


def recompute_bn_statistics(model, batches: Iterable, num_batches: int | None = None) -> PreciseBNResult:
    """Set every batch-statistics BN's moving_mean / moving_variance to the mean / variance of all its
    input values over `batches` (pooled from per-batch moments), with the network frozen (see the
    module docstring).

    `batches`: image tensors [B, H, W, 3] (float 0..255, padded as for evaluation) or dicts with an
    "image" entry; the first `num_batches` are used (all when None). B must be >= 2: the image-pooling
    BN sees one value per image, so a single image has no variance."""
    bns = batch_norm_layers(model)
    active = [l for l in bns if uses_batch_statistics(l)]
    kept = [l.path for l in bns if not uses_batch_statistics(l)]
    if not active:
        raise ValueError("precise BN: the model has no BN layer that trains with batch statistics")
    captured: dict = {}

    def make_call(i):

        def call(self, inputs, training=None, mask=None):
            if len(inputs.shape) != 4:
                raise ValueError(f"precise BN supports 4-D BN inputs only ({self.path}: {inputs.shape})")
            x = tf.cast(inputs, tf.float32)
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32),
                epsilon=self.epsilon, is_training=True)
            n = _moment_count(x)
            if i in captured:
                raise RuntimeError(f"precise BN: {self.path} is called twice in one forward pass")
            captured[i] = (mean, variance, n)
            return tf.cast(y, self.compute_dtype)
        return call

    with _replaced_calls(active, make_call):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
                     reduce_retracing=True)
        def forward(images):
            captured.clear()
            model(images, training=False)
            return dict(captured)

        # Per layer: sum of values, sum of squared deviations plus n * mean^2 (= sum of squares), count.
        sums_mean = [np.zeros(int(l.moving_mean.shape[0]), np.float64) for l in active]
        sums_sq = [np.zeros_like(s) for s in sums_mean]
        counts = [0] * len(active)
        count = images_seen = 0
        for batch in batches:
            if num_batches is not None and count >= num_batches:
                break
            images = batch["image"] if isinstance(batch, dict) else batch
            images = tf.cast(images, tf.float32)
            stats = forward(images)
            if len(stats) != len(active):
                missing = [active[i].path for i in range(len(active)) if i not in stats]
                raise RuntimeError(f"precise BN: BN layers not reached by the forward pass: {missing[:5]}")
            for i, (mean, variance, n) in stats.items():
                if int(n) < 2:
                    raise ValueError(
                        f"precise BN: {active[i].path} sees one value per channel in a batch of "
                        f"{int(images.shape[0])} image(s) (the image-pooling BN normalises over the "
                        "batch); use batches of >= 2 images")
                n, m = int(n), mean.numpy().astype(np.float64)
                sums_mean[i] += n * m
                sums_sq[i] += (n - 1) * variance.numpy().astype(np.float64) + n * m * m
                counts[i] += n
            count += 1
            images_seen += int(images.shape[0])
    if count == 0:
        raise ValueError("precise BN: no batch to compute statistics on (empty split?)")
    for layer, s_mean, s_sq, n in zip(active, sums_mean, sums_sq, counts):
        mean = s_mean / n
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(np.maximum((s_sq - n * mean * mean) / (n - 1), 0.0).astype(np.float32))
    return PreciseBNResult(count, images_seen, [l.path for l in active], kept)


# -- diagnostics -----------------------------------------------------------------------------------

def degenerate_channels(model, images, relative=DEGENERATE_RELATIVE_VARIANCE) -> list[tuple[str, int, int]]:
    """(layer path, degenerate channels, channels) of the BNs whose moving variance is < `relative` x
    the variance their input has on `images` (the network run as evaluated, moving statistics),
    counting only channels active there (input variance above the layer's epsilon, so normalising by
    the moving variance amplifies them). Runs eagerly (no extra graph trace)."""
    bns = batch_norm_layers(model)
    seen: dict = {}

    def make_call(i):
        cls_call = type(bns[i]).call

        def call(self, inputs, training=None, mask=None):
            axes = list(range(len(inputs.shape) - 1))
            _, variance = tf.nn.moments(tf.cast(inputs, tf.float32), axes=axes)
            seen[i] = variance.numpy()
            return cls_call(self, inputs, training=training, mask=mask)
        return call

    with _replaced_calls(bns, make_call):
        model(tf.cast(images, tf.float32), training=False)
    out = []
    for i, layer in enumerate(bns):
        if i not in seen:
            continue
        moving = layer.moving_variance.numpy().astype(np.float64)
        active = seen[i] > float(layer.epsilon)
        bad = active & (moving < relative * seen[i])
        if bad.any():
            out.append((layer.path, int(bad.sum()), int(bad.size)))
    return out


def degenerate_warning(found, limit=3, precise: bool = False) -> str | None:
    """One line naming the layers with degenerate moving variance, or None. `precise`: the statistics
    already are precise-BN ones (then more batches, not precise BN itself, is the advice)."""
    if not found:
        return None
    names = ", ".join(f"{p} ({n}/{c} channels)" for p, n, c in found[:limit])
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    advice = ("these are precise-BN statistics: channels ~constant on the images they were computed on; "
              "use more or more varied --precise_bn_batches" if precise else
              "recompute the statistics with --precise_bn_batches=N (eval.py / export.py / train.py)")
    return (f"warning: BN moving variance ~0 (< {DEGENERATE_RELATIVE_VARIANCE:g} x the evaluated input "
            f"variance) for active channels of {names}{more}: evaluation amplifies them (outputs can "
            f"blow up); {advice}")


def crop_warning(train_crop, eval_size) -> str | None:
    """One line when the evaluated images are much larger than the training crop, else None."""
    if not train_crop or not eval_size:
        return None
    crop_area = float(train_crop[0]) * float(train_crop[1])
    area = float(eval_size[0]) * float(eval_size[1])
    if area <= CROP_AREA_RATIO_WARNING * crop_area:
        return None
    return (f"warning: the evaluated images (up to {eval_size[0]}x{eval_size[1]}) are "
            f"{area / crop_area:.0f}x the area of the training crop {train_crop[0]}x{train_crop[1]} "
            "(--train_crop_size): BN moving statistics gathered on crops may not fit them; recompute them "
            "with --precise_bn_batches=N (eval.py / export.py / train.py)")


# -- a run's checkpoint ----------------------------------------------------------------------------

def read_info(prefix: str) -> dict | None:
    """The precise-BN record stored in checkpoint `prefix`, or None (moving statistics of training)."""
    from nas_deeplab.training import checkpointing
    return (checkpointing.read_checkpoint_info(prefix) or {}).get(INFO_KEY)


def _train_config(run_dir: str) -> dict:
    from nas_deeplab.training.evaluator import TRAIN_CONFIG_FILE
    path = os.path.join(run_dir, TRAIN_CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({e})") from None


def train_crop_of_run(run_dir: str):
    """The run's --train_crop_size (train_config.json next to the checkpoint), or None."""
    crop = _train_config(run_dir).get("train_crop_size")
    return tuple(int(c) for c in crop) if crop else None


def eval_batches(descriptor, dataset_dir, split, batch_size, crop_size=None, min_resize_value=None,
                 max_resize_value=None, resize_factor=None):
    """Batches of `split` preprocessed as evaluation preprocesses them (file order, each image padded
    to its 32k+1 size, a batch padded to its largest image), repeated if the split is short."""
    from nas_deeplab.data.pipeline import make_dataset
    from nas_deeplab.training.evaluator import PAD_STRIDE
    return make_dataset(dataset_dir, split, descriptor, batch_size=batch_size, is_training=False,
                        crop_size=crop_size, min_resize_value=min_resize_value,
                        max_resize_value=max_resize_value, resize_factor=resize_factor,
                        eval_pad_stride=PAD_STRIDE, repeat=True, drop_remainder=True)


def resolve_batch_size(batch_size: int | None, run_dir: str) -> int:
    """--precise_bn_batch_size, or when unset the run's training batch size (train_config.json), or 2."""
    if batch_size is not None:
        return int(batch_size)
    return max(2, int(_train_config(run_dir).get("train_batch_size") or 2))


def update_run_checkpoint(model, prefix: str, num_batches: int, batch_size: int | None, descriptor, dataset_dir,
                          same_data_as_run: bool = True, crop_size=None, min_resize_value=None,
                          max_resize_value=None, resize_factor=None, stream=None) -> str:
    """Recompute `model`'s BN statistics (model restored from the training checkpoint `prefix`) on
    `num_batches` batches of the training split, and store them next to `prefix` as a new checkpoint
    (`checkpointing.write_derived_checkpoint`, the newest when `prefix` was). Returns its prefix."""
    from nas_deeplab.training import checkpointing
    stream = stream or sys.stdout
    batch_size = resolve_batch_size(batch_size, os.path.dirname(prefix))
    if num_batches < 1 or batch_size < 2:
        raise ValueError(f"--precise_bn_batches must be >= 1 and --precise_bn_batch_size >= 2, got "
                         f"{num_batches} and {batch_size}")
    run_dir = os.path.dirname(prefix)
    recorded = _train_config(run_dir)
    if recorded.get("fine_tune_batch_norm") is False:
        raise ValueError("--precise_bn_batches: the run trained with --fine_tune_batch_norm=false, so its "
                         "BN statistics are the frozen ones its weights were trained with; nothing to "
                         "recompute")
    split = (recorded.get("train_split") if same_data_as_run else None) or descriptor.default_train_split
    batches = eval_batches(descriptor, dataset_dir, split, batch_size, crop_size, min_resize_value,
                           max_resize_value, resize_factor)
    result = recompute_bn_statistics(model, batches, num_batches)
    info = {"num_batches": result.num_batches, "batch_size": int(batch_size),
            "num_images": result.num_images, "dataset": descriptor.name, "split": split,
            "source_checkpoint": os.path.basename(prefix), "layers": len(result.updated),
            "padding_included": True}
    new_prefix = checkpointing.write_derived_checkpoint(
        prefix, f"{checkpointing.CHECKPOINT_NAME}_precise_bn", model, changed=_statistic_variables(model),
        info={INFO_KEY: info})
    print(f"{result.summary()} of {descriptor.name}/{split} (batch {batch_size}, eval preprocessing); "
          f"stored as {new_prefix}", file=stream, flush=True)
    return new_prefix


def store_precise_checkpoint(prefix: str, num_batches: int, batch_size: int | None, model_config=None,
                             stream=None) -> str:
    """`update_run_checkpoint` for a run's checkpoint alone (train.py after training, export.py): the
    model is built as eval.py builds it, the data and resize options are the run's. Returns the new
    checkpoint's prefix."""
    from nas_deeplab.training import evaluator
    from nas_deeplab.training.model_config import ModelConfig
    cfg = evaluator.EvalConfig(checkpoint_path=prefix, model=model_config or ModelConfig())
    descriptor, dataset_dir = evaluator._resolve_eval_dataset(cfg, prefix)
    model = evaluator._load_model(cfg, descriptor.num_classes, prefix)
    recorded = _train_config(os.path.dirname(prefix))
    return update_run_checkpoint(model, prefix, num_batches, batch_size, descriptor, dataset_dir,
                                 min_resize_value=recorded.get("min_resize_value"),
                                 max_resize_value=recorded.get("max_resize_value"),
                                 resize_factor=recorded.get("resize_factor"), stream=stream)


def _statistic_variables(model):
    return [v for l in batch_norm_layers(model) if uses_batch_statistics(l)
            for v in (l.moving_mean, l.moving_variance)]
