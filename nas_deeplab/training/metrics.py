"""Segmentation metrics from a confusion matrix that skips the ignore label.

Rows are ground-truth classes, columns predictions. mIoU follows TF1 `tf.metrics.mean_iou` as used by
DeepLab's eval.py: IoU_c = TP / (TP + FP + FN), averaged over the classes whose denominator is non-zero
(classes absent from both labels and predictions are excluded, not counted as 0 or 1).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def confusion_matrix_tf(labels, predictions, num_classes: int, ignore_label: int):
    """[C, C] int64 confusion matrix of one batch; pixels labelled `ignore_label` are skipped.

    Labels outside 0..C-1 (other than the ignore label) raise InvalidArgumentError rather than
    being silently dropped."""
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int64), [-1])
    valid = tf.not_equal(labels, ignore_label)
    return tf.math.confusion_matrix(tf.boolean_mask(labels, valid), tf.boolean_mask(predictions, valid),
                                    num_classes=num_classes, dtype=tf.int64)


def confusion_matrix_np(labels, predictions, num_classes: int, ignore_label: int) -> np.ndarray:
    """NumPy reference of `confusion_matrix_tf` (also used by the evaluator to accumulate)."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels ({labels.size}) and predictions ({predictions.size}) differ in size")
    valid = labels != ignore_label
    labels, predictions = labels[valid], predictions[valid]
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(f"label value {int(labels[bad][0])} outside 0..{num_classes - 1} and not the "
                         f"ignore label {ignore_label}")
    if ((predictions < 0) | (predictions >= num_classes)).any():
        raise ValueError(f"prediction outside 0..{num_classes - 1}")
    return np.bincount(labels * num_classes + predictions,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_iou(cm) -> np.ndarray:
    """IoU per class; NaN where the class appears in neither labels nor predictions."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)


def mean_iou(cm) -> float:
    """Mean of per-class IoU over classes with a non-zero denominator (TF1 mean_iou); 0 if none."""
    iou = per_class_iou(cm)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else 0.0


def pixel_accuracy(cm) -> float:
    cm = np.asarray(cm, np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else 0.0


def mean_iou_tf(cm):
    """Graph version of `mean_iou` (for TensorBoard summaries inside tf.function)."""
    cm = tf.cast(cm, tf.float64)
    tp = tf.linalg.diag_part(cm)
    denom = tf.reduce_sum(cm, 0) + tf.reduce_sum(cm, 1) - tp
    present = denom > 0
    iou = tf.math.divide_no_nan(tp, denom)
    n = tf.reduce_sum(tf.cast(present, tf.float64))
    return tf.math.divide_no_nan(tf.reduce_sum(iou), n)


def summarize(cm, class_names=None) -> dict:
    """A JSON-ready dict: miou, pixel_accuracy, per-class IoU (null for absent classes), pixel counts."""
    cm = np.asarray(cm, np.int64)
    iou = per_class_iou(cm)
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(len(iou))]
    return {
        "miou": mean_iou(cm),
        "pixel_accuracy": pixel_accuracy(cm),
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
        "num_valid_pixels": int(cm.sum()),
        "confusion_matrix": cm.tolist(),
    }
