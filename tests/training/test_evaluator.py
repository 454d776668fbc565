import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab.training import evaluator, metrics
from nas_deeplab.training.vis import colorize


def _pointwise_model(c=5):
    """A per-pixel model: flipping the input flips the output exactly."""
    inp = keras.Input((None, None, 3))
    out = keras.layers.Conv2D(c, 1, kernel_initializer=keras.initializers.RandomNormal(seed=1))(inp / 255.0)
    return keras.Model(inp, out)


def _image(h=33, w=41, seed=0):
    return tf.constant(np.random.RandomState(seed).uniform(0, 255, (1, h, w, 3)).astype(np.float32))


def test_predict_fn_single_scale_is_the_softmax_of_the_model_output():
    """(The multi-scale resampling itself is tested in tests/model/test_inference.py.)"""
    model, x = _pointwise_model(), _image()
    pred, probs = evaluator.make_predict_fn(model, (1.0,), False)(x)
    np.testing.assert_allclose(probs.numpy(), tf.nn.softmax(model(x)).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(pred.numpy(), np.argmax(model(x).numpy(), -1))
    assert probs.shape == (1, 33, 41, 5)


def test_predictions_are_cropped_to_the_image_before_scoring():
    model = _pointwise_model(3)
    x = _image(33, 33, seed=2)
    pred = tf.argmax(model(x), -1).numpy()[0]
    label = np.where(np.random.RandomState(3).rand(33, 33) < 0.5, pred, (pred + 1) % 3).astype(np.int32)
    h, w = 20, 25  # the real image; the rest is padding with a label that would count if not cropped
    padded_label = label.copy()
    padded_label[h:, :] = 1
    padded_label[:, w:] = 1
    ds = tf.data.Dataset.from_tensors({"image": x, "label": tf.constant(padded_label[None, ..., None]),
                                       "height": tf.constant([h]), "width": tf.constant([w]),
                                       "filename": tf.constant([b"a"])})
    seen = []
    cm, n = evaluator.evaluate_model(model, ds, 3, 255, on_prediction=lambda f, p, l: seen.append((f, p.shape)))
    np.testing.assert_array_equal(cm, metrics.confusion_matrix_np(label[:h, :w], pred[:h, :w], 3, 255))
    assert n == 1 and seen == [("a", (h, w))]


def test_colorize_uses_palette_and_marks_ignore_white():
    pal = np.array([[0, 0, 0], [10, 20, 30]], np.uint8)
    rgb = colorize(np.array([[0, 1, 255]]), pal, 255)
    assert rgb.tolist() == [[[0, 0, 0], [10, 20, 30], [255, 255, 255]]]


def test_evaluate_checkpoint_writes_results_and_vis(tmp_path, trained_run, synthetic_dir):
    out = tmp_path / "eval"
    res = evaluator.evaluate(evaluator.EvalConfig(checkpoint_path=trained_run.train_logdir,
                                                  dataset_dir=synthetic_dir, output_dir=str(out), vis=True))
    on_disk = json.load(open(out / "results.json"))
    assert on_disk["num_images"] == 3 and on_disk["global_step"] == 6 and on_disk["split"] == "val"
    cm = np.array(on_disk["confusion_matrix"])
    assert on_disk["miou"] == pytest.approx(metrics.mean_iou(cm))
    assert 0.0 <= res["miou"] <= 1.0 and cm.sum() > 3 * 97 * 97 * 0.5
    assert len([f for f in os.listdir(out / "vis") if f.endswith("_prediction.png")]) == 3
    # The multi-scale path with scales [1.0, 1.0] (no flip) gives the single-scale result; run in
    # continuous mode, which evaluates the newest checkpoint and stops after one evaluation.
    res2 = evaluator.evaluate(evaluator.EvalConfig(checkpoint_path=trained_run.train_logdir,
                                                   dataset_dir=synthetic_dir, output_dir=str(tmp_path / "e2"),
                                                   eval_scales=(1.0, 1.0), eval_interval_secs=0,
                                                   max_number_of_evaluations=1, eval_timeout_secs=5))
    assert res2["confusion_matrix"] == on_disk["confusion_matrix"] and res2["global_step"] == 6


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluator.evaluate(evaluator.EvalConfig(checkpoint_path=str(tmp_path)))
