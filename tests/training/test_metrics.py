import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab.training import metrics


def _reference_miou(labels, preds, n, ignore):
    """Straight-from-the-definition reference: loops over classes."""
    keep = labels != ignore
    l, p = labels[keep], preds[keep]
    ious = []
    for c in range(n):
        inter = np.sum((l == c) & (p == c))
        union = np.sum((l == c) | (p == c))
        if union:
            ious.append(inter / union)
    return float(np.mean(ious)), float(np.mean(l == p))


def test_miou_equals_numpy_reference_on_random_data():
    rng = np.random.RandomState(0)
    n = 7
    labels = rng.randint(0, n, size=(3, 17, 19))
    labels[rng.rand(*labels.shape) < 0.2] = 255
    labels[labels == 5] = 2  # class 5 absent from labels ...
    preds = rng.randint(0, n, size=labels.shape)
    preds[preds == 6] = 0
    labels[labels == 6] = 0  # ... and class 6 absent from both: must be excluded, not count as 0
    cm_tf = metrics.confusion_matrix_tf(tf.constant(labels), tf.constant(preds), n, 255).numpy()
    cm_np = metrics.confusion_matrix_np(labels, preds, n, 255)
    np.testing.assert_array_equal(cm_tf, cm_np)
    assert cm_np.sum() == np.sum(labels != 255)
    want_miou, want_acc = _reference_miou(labels, preds, n, 255)
    assert metrics.mean_iou(cm_np) == pytest.approx(want_miou, abs=1e-12)
    assert float(metrics.mean_iou_tf(cm_tf)) == pytest.approx(want_miou, abs=1e-12)
    assert metrics.pixel_accuracy(cm_np) == pytest.approx(want_acc, abs=1e-12)
    iou = metrics.per_class_iou(cm_np)
    assert np.isnan(iou[6]) and iou[5] == 0.0
    summary = metrics.summarize(cm_np, [f"c{i}" for i in range(n)])
    assert summary["per_class_iou"]["c6"] is None
    assert summary["miou"] == pytest.approx(want_miou)


def test_ignore_label_pixels_never_counted():
    labels = np.array([[0, 1, 255, 255]])
    a = metrics.confusion_matrix_np(labels, np.array([[0, 1, 0, 0]]), 2, 255)
    b = metrics.confusion_matrix_np(labels, np.array([[0, 1, 1, 1]]), 2, 255)
    np.testing.assert_array_equal(a, b)
    assert metrics.mean_iou(a) == 1.0


def test_out_of_range_label_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix_np(np.array([3]), np.array([0]), 2, 255)
