"""Evaluation over a whole split at full resolution (official eval.py semantics, plus multi-scale).

Each image is evaluated alone (batch 1), padded (127.5 / ignore label) to its own 32k+1 size or to
`eval_crop_size`; predictions are cropped back to the image. With several `eval_scales` and/or
`add_flipped_images`, the softmax probabilities of all scales (and flips) are averaged before the
argmax, resampled exactly as official `predict_labels_multi_scale` (`model/inference.py`).
The confusion matrix skips the ignore label; mIoU, per-class IoU and pixel accuracy come from it.
With `precise_bn_batches` the BN statistics are first recomputed and stored as a new checkpoint
(`precise_bn.py`); otherwise a line warns when the images are much larger than the training crop, and
either way when a BN's moving variance is ~0 for channels active on the first evaluated image.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf

from nas_deeplab.io_utils import atomic_write_text, check_writable_dir
from nas_deeplab.model import inference
from nas_deeplab.training import checkpointing, metrics, precision
from nas_deeplab.training.model_config import ModelConfig

PAD_STRIDE = 32
TRAIN_CONFIG_FILE = "train_config.json"   # written by training/trainer.py next to the checkpoints


@dataclasses.dataclass
class EvalConfig:
    checkpoint_path: str
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    dataset: str | None = None              # None: the training run's (train_config.json), else synthetic
    dataset_dir: str | None = None          # None: the training run's when the data set is its
    eval_split: str | None = None           # None: the descriptor's default eval split
    eval_scales: tuple[float, ...] = (1.0,)
    add_flipped_images: bool = False
    eval_crop_size: tuple[int, int] | None = None
    min_resize_value: int | None = None
    max_resize_value: int | None = None
    resize_factor: int | None = None
    output_dir: str | None = None           # results JSON (+ vis/) go here; None: <run dir>/eval
    vis: bool = False
    max_images: int | None = None           # evaluate only the first N images (quick checks)
    eval_interval_secs: int | None = None   # continuous evaluation of new checkpoints
    max_number_of_evaluations: int = 0      # continuous: stop after this many (0: until timeout)
    eval_timeout_secs: int = 3600           # continuous: stop when no new checkpoint for this long
    precise_bn_batches: int = 0             # >0: recompute BN statistics first (training/precise_bn.py)
    precise_bn_batch_size: int | None = None  # images per precise-BN batch; None: the run's training batch
    mixed_precision: str = "none"           # mixed_bfloat16 / mixed_float16: the network computes in 16 bits

    def validate(self) -> None:
        precision.validate(self.mixed_precision)
        if not self.eval_scales or any(s <= 0 for s in self.eval_scales):
            raise ValueError(f"--eval_scales must be positive numbers, got {list(self.eval_scales)}")
        if self.eval_crop_size is not None and (len(self.eval_crop_size) != 2 or min(self.eval_crop_size) < 17):
            raise ValueError(f"--eval_crop_size needs two sizes >= 17 (h,w), got {list(self.eval_crop_size)}")
        if self.eval_interval_secs is not None and self.eval_interval_secs < 0:
            raise ValueError(f"--eval_interval_secs must be >= 0, got {self.eval_interval_secs}")
        if self.precise_bn_batches < 0:
            raise ValueError(f"--precise_bn_batches must be >= 0, got {self.precise_bn_batches}")
        if self.precise_bn_batch_size is not None and self.precise_bn_batch_size < 2:
            raise ValueError(f"--precise_bn_batch_size must be >= 2 (the image-pooling BN normalises "
                             f"over the batch), got {self.precise_bn_batch_size}")


def make_predict_fn(model, scales, add_flipped_images):
    """A tf.function over [1, None, None, 3] images (one trace for all sizes): (predictions, probs)."""
    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)], reduce_retracing=True)
    def predict(image):
        p = inference.predict_probabilities(model, image, tuple(scales), add_flipped_images)
        return tf.argmax(p, axis=-1, output_type=tf.int32), p
    return predict


def evaluate_model(model, dataset, num_classes: int, ignore_label: int, scales=(1.0,),
                   add_flipped_images=False, max_images=None, on_prediction=None):
    """Confusion matrix over `dataset` (batches of 1 from the eval pipeline) and the image count.

    `on_prediction(filename, prediction [h, w] int, label [h, w] int)` sees each cropped prediction."""
    predict = make_predict_fn(model, scales, add_flipped_images)
    cm = np.zeros((num_classes, num_classes), np.int64)
    n = 0
    for batch in dataset:
        if max_images is not None and n >= max_images:
            break
        pred, _ = predict(tf.cast(batch["image"], tf.float32))
        h, w = int(batch["height"][0]), int(batch["width"][0])
        pred = pred.numpy()[0, :h, :w]
        label = batch["label"].numpy()[0, :h, :w, 0]
        cm += metrics.confusion_matrix_np(label, pred, num_classes, ignore_label)
        if on_prediction is not None:
            fn = batch["filename"].numpy()[0]
            on_prediction(fn.decode("utf-8", "replace") if isinstance(fn, bytes) else str(fn), pred, label)
        n += 1
    return cm, n


def _load_model(cfg: EvalConfig, num_classes: int, prefix: str):
    """Build the eval network (dynamic input size, no strategy) and restore `prefix` into it.

    The architecture recorded with the checkpoint wins when flags did not name one."""
    model_cfg = cfg.model
    meta = checkpointing.read_metadata(os.path.dirname(prefix))
    if meta is not None and model_cfg.architecture is None:
        from nas_deeplab.architecture import Architecture
        arch = Architecture.from_dict(dict(meta["architecture"], name="from_checkpoint"),
                                      source=os.path.join(os.path.dirname(prefix), checkpointing.META_FILE))
        s = meta.get("structure", {})
        rates = s.get("atrous_rates", model_cfg.atrous_rates)
        model_cfg = dataclasses.replace(
            model_cfg, atrous_rates=None if rates is None else tuple(rates),
            output_stride=s.get("output_stride", model_cfg.output_stride),
            decoder_output_stride=s.get("decoder_output_stride", model_cfg.decoder_output_stride),
            aspp_with_separable_conv=s.get("aspp_with_separable_conv", model_cfg.aspp_with_separable_conv),
            decoder_use_separable_conv=s.get("decoder_use_separable_conv",
                                             model_cfg.decoder_use_separable_conv))
        from nas_deeplab.model.deeplab import build_deeplab
        model = build_deeplab(arch, model_cfg.model_options(num_classes))
    else:
        if meta is not None:
            flag_arch = model_cfg.resolve_architecture()
            expected = checkpointing.build_metadata(flag_arch, num_classes, model_cfg.structure(flag_arch))
            checkpointing.compare_metadata(meta, expected, os.path.dirname(prefix))
        model, arch = model_cfg.build(num_classes)
    checkpointing.restore_model_weights(model, prefix)
    return model


def resolve_checkpoint(path: str) -> str:
    """A checkpoint prefix from a prefix or a run folder."""
    if os.path.isdir(path):
        prefix = tf.train.latest_checkpoint(path)
        if not prefix:
            raise FileNotFoundError(f"--checkpoint_path={path}: no checkpoint in this folder")
        return prefix
    if not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(f"--checkpoint_path={path}: no such checkpoint ({path}.index missing)")
    return path


def evaluate(cfg: EvalConfig, stream=None) -> dict:
    """Evaluate one checkpoint (or, with eval_interval_secs, each new one); returns the last results."""
    stream = stream or sys.stdout
    cfg.validate()
    if cfg.eval_interval_secs is None:
        return _evaluate_once(cfg, resolve_checkpoint(cfg.checkpoint_path), stream)
    if not os.path.isdir(cfg.checkpoint_path):
        raise ValueError("continuous evaluation (--eval_interval_secs) needs --checkpoint_path to be a "
                         "training folder")
    results, done, n = {}, set(), 0
    for prefix in tf.train.checkpoints_iterator(cfg.checkpoint_path, min_interval_secs=cfg.eval_interval_secs,
                                                timeout=cfg.eval_timeout_secs):
        if prefix in done:
            continue
        done.add(prefix)
        results = _evaluate_once(cfg, prefix, stream)
        done.add(results["checkpoint"])   # a precise-BN checkpoint it wrote is not evaluated again
        n += 1
        if cfg.max_number_of_evaluations and n >= cfg.max_number_of_evaluations:
            break
    if n == 0:
        print(f"no checkpoint appeared in {cfg.checkpoint_path} within {cfg.eval_timeout_secs} s",
              file=stream, flush=True)
    return results


def run_dataset(run_dir: str) -> tuple[str | None, str | None]:
    """(--dataset, --dataset_dir) a training run in `run_dir` used (its train_config.json), or Nones."""
    path = os.path.join(run_dir, TRAIN_CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
    except FileNotFoundError:
        return None, None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({e}); pass --dataset and --dataset_dir") from None
    return recorded.get("dataset"), recorded.get("dataset_dir")


def _resolve_eval_dataset(cfg: EvalConfig, prefix: str):
    """The data set to evaluate on: the flags', else the training run's; a data set whose class count
    differs from the checkpoint's is refused before anything is built."""
    from nas_deeplab.data.synthetic import resolve_dataset
    run_dir = os.path.dirname(prefix)
    trained_on, trained_dir = run_dataset(run_dir)
    dataset, dataset_dir = cfg.dataset, cfg.dataset_dir
    if dataset is None:
        dataset = trained_on or "synthetic"
        dataset_dir = dataset_dir or (trained_dir if trained_on else None)
    descriptor, dataset_dir = resolve_dataset(dataset, dataset_dir)
    meta = checkpointing.read_metadata(run_dir)
    classes = (meta or {}).get("num_classes")
    if classes is not None and int(classes) != descriptor.num_classes:
        source = f"--dataset={cfg.dataset}" if cfg.dataset else f"the default data set {dataset}"
        raise ValueError(f"{source} has {descriptor.num_classes} classes but the checkpoint in {run_dir} "
                         f"was trained with {classes} (on --dataset={trained_on}); evaluate on that data "
                         "set or one with the same classes")
    return descriptor, dataset_dir


def _evaluate_once(cfg: EvalConfig, prefix: str, stream) -> dict:
    from nas_deeplab.data.pipeline import make_dataset
    descriptor, dataset_dir = _resolve_eval_dataset(cfg, prefix)
    split = cfg.eval_split or descriptor.default_eval_split
    out_dir = os.path.abspath(cfg.output_dir or os.path.join(os.path.dirname(prefix), "eval"))
    check_writable_dir(out_dir, "--output_dir")
    with precision.policy(cfg.mixed_precision):   # layers keep the policy they were built under
        model = _load_model(cfg, descriptor.num_classes, prefix)
    if cfg.precise_bn_batches:
        from nas_deeplab.training import precise_bn
        prefix = precise_bn.update_run_checkpoint(
            model, prefix, cfg.precise_bn_batches, cfg.precise_bn_batch_size, descriptor, dataset_dir,
            same_data_as_run=cfg.dataset in (None, run_dataset(os.path.dirname(prefix))[0]),
            crop_size=tuple(cfg.eval_crop_size) if cfg.eval_crop_size else None,
            min_resize_value=cfg.min_resize_value, max_resize_value=cfg.max_resize_value,
            resize_factor=cfg.resize_factor, stream=stream)
    ds = make_dataset(dataset_dir, split, descriptor, batch_size=1, is_training=False,
                      crop_size=tuple(cfg.eval_crop_size) if cfg.eval_crop_size else None,
                      min_resize_value=cfg.min_resize_value, max_resize_value=cfg.max_resize_value,
                      resize_factor=cfg.resize_factor, eval_pad_stride=PAD_STRIDE, repeat=False)
    vis_writer = None
    if cfg.vis:
        from nas_deeplab.training.vis import PredictionWriter
        vis_writer = PredictionWriter(os.path.join(out_dir, "vis"), descriptor.palette,
                                      descriptor.ignore_label)
    largest = [0, 0]

    def on_prediction(filename, pred, label):
        if pred.size > largest[0] * largest[1]:
            largest[:] = pred.shape
        if vis_writer is not None:
            vis_writer(filename, pred, label)

    precise_info = _warn_about_bn_statistics(model, prefix, ds, stream)
    t0 = time.monotonic()
    cm, n = evaluate_model(model, ds, descriptor.num_classes, descriptor.ignore_label, cfg.eval_scales,
                           cfg.add_flipped_images, cfg.max_images, on_prediction)
    step = _step_of(prefix)
    results = metrics.summarize(cm, descriptor.class_names)
    results.update({"checkpoint": prefix, "global_step": step, "dataset": descriptor.name, "split": split,
                    "num_images": n, "eval_scales": list(cfg.eval_scales),
                    "add_flipped_images": cfg.add_flipped_images, "seconds": round(time.monotonic() - t0, 2),
                    "precise_bn": precise_info,
                    "precision": precision.COMPUTE_DTYPE[cfg.mixed_precision]})
    # results.json is the latest evaluation; each (step, scales, flip) also keeps a file of its own, so
    # train.py's closing single-scale evaluation and a later multi-scale eval.py both stay on disk.
    name = results_file_name(step, cfg.eval_scales, cfg.add_flipped_images, precise_info is not None,
                             cfg.mixed_precision)
    for fname in (name, "results.json"):
        atomic_write_text(os.path.join(out_dir, fname), json.dumps(results, indent=2) + "\n")
    _summaries(out_dir, results, step)
    print(f"eval {descriptor.name}/{split} ({n} images, scales {list(cfg.eval_scales)}"
          f"{', flipped' if cfg.add_flipped_images else ''}"
          f"{'' if cfg.mixed_precision == 'none' else ', ' + cfg.mixed_precision}) checkpoint {os.path.basename(prefix)}: "
          f"miou {results['miou']:.4f} pixel_accuracy {results['pixel_accuracy']:.4f}", file=stream, flush=True)
    for cname, iou in results["per_class_iou"].items():
        print(f"  {cname:>20s}: {'absent' if iou is None else f'{iou:.4f}'}", file=stream)
    if precise_info is None:
        from nas_deeplab.training import precise_bn
        line = precise_bn.crop_warning(precise_bn.train_crop_of_run(os.path.dirname(prefix)), tuple(largest))
        if line:
            print(line, file=stream, flush=True)
    results["results_json"] = os.path.join(out_dir, name)
    return results


def results_file_name(step: int | None, scales, add_flipped_images: bool, precise_bn: bool = False,
                      mixed_precision: str = "none") -> str:
    """results_step<N>_scales<s1-s2..>[_flip][_precise_bn][_bfloat16|_float16].json: one file per
    evaluation setting of a checkpoint (`precise_bn`: its precise-BN copy, see training/precise_bn.py)."""
    tag = "scales" + "-".join(f"{float(s):g}" for s in scales) + ("_flip" if add_flipped_images else "")
    tag += "_precise_bn" if precise_bn else ""
    tag += "" if mixed_precision == "none" else f"_{precision.COMPUTE_DTYPE[mixed_precision]}"
    return f"results{'' if step is None else f'_step{step}'}_{tag}.json"


def _warn_about_bn_statistics(model, prefix, ds, stream):
    """The checkpoint's precise-BN record (None: moving statistics of training); warns, naming the
    layers, when BN moving variances are ~0 for channels active on the first evaluated image."""
    from nas_deeplab.training import precise_bn
    info = precise_bn.read_info(prefix)
    for batch in ds.take(1):
        line = precise_bn.degenerate_warning(precise_bn.degenerate_channels(model, batch["image"]),
                                             precise=info is not None)
        if line:
            print(line, file=stream, flush=True)
    return info


def _step_of(prefix: str) -> int | None:
    tail = prefix.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _summaries(out_dir, results, step):
    try:
        import tensorboard  # noqa: F401  (tf.summary needs it with TF 2.21)
    except ImportError:
        return
    writer = tf.summary.create_file_writer(out_dir)
    with writer.as_default():
        tf.summary.scalar("miou", results["miou"], step=step or 0)
        tf.summary.scalar("pixel_accuracy", results["pixel_accuracy"], step=step or 0)
    writer.flush()
