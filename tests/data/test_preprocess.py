"""Official preprocessing: scale set, sizes, padding values, crop/flip applied to image and label alike."""

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab.data import preprocess


def _seed(i):
    return tf.constant([7, i], tf.int64)


def test_random_scale_values_are_the_official_set():
    got = {round(float(preprocess.get_random_scale(_seed(i), 0.5, 2.0, 0.25)), 4) for i in range(80)}
    assert got == {0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0}
    u = [float(preprocess.get_random_scale(_seed(i), 0.5, 2.0, 0)) for i in range(20)]
    assert all(0.5 <= x < 2.0 for x in u) and len(set(u)) == 20
    assert float(preprocess.get_random_scale(_seed(0), 1.0, 1.0, 0.25)) == 1.0
    with pytest.raises(ValueError):
        preprocess.get_random_scale(_seed(0), 2.0, 1.0, 0.25)


def test_randomly_scale_size_is_int_h_times_s():
    im = tf.zeros([15, 19, 3])
    lb = tf.zeros([15, 19, 1], tf.int32)
    out, lout = preprocess.randomly_scale(im, lb, tf.constant(0.75))
    assert out.shape.as_list() == [11, 14, 3] and lout.shape.as_list() == [11, 14, 1]


def test_resize_to_range_official_arithmetic():
    im = tf.zeros([100, 200, 3])
    assert preprocess.resize_to_range(im, None, 50, 80)[0].shape.as_list() == [40, 80, 3]
    assert preprocess.resize_to_range(im, None, 30, 80)[0].shape.as_list() == [30, 60, 3]
    # factor 8: max 80 -> 73; 36x73 -> sides rounded up to 8k+1: 41x73.
    assert preprocess.resize_to_range(im, None, 50, 80, 8)[0].shape.as_list() == [41, 73, 3]


def _scene():
    """Image whose channel 0 encodes the label and channel 1 the column; values avoid 127.5."""
    h, w = 12, 18
    lab = (np.arange(h)[:, None] // 4 + np.arange(w)[None, :] // 6) % 3
    img = np.stack([lab * 40 + 10, np.arange(w)[None, :].repeat(h, 0) * 5, np.full((h, w), 3)], -1)
    return tf.constant(img, tf.uint8), tf.constant(lab[..., None], tf.uint8)


def test_train_crop_flip_pad_consistent_between_image_and_label():
    img, lab = _scene()
    flipped = unflipped = 0
    for i in range(16):
        im, lb = preprocess.preprocess_for_train(img, lab, _seed(i), crop_size=(16, 16), ignore_label=255,
                                                 min_scale_factor=1.0, max_scale_factor=1.0)
        im, lb = im.numpy(), lb.numpy()[..., 0]
        assert im.shape == (16, 16, 3) and lb.shape == (16, 16)
        pad = lb == 255
        assert pad.any()  # 12 < 16 rows: bottom padding is always inside the crop
        assert np.all(im[pad] == 127.5) and not np.any(im[~pad] == 127.5)
        np.testing.assert_array_equal(im[~pad][:, 0], lb[~pad] * 40 + 10)  # same crop + flip for both
        cols = im[0, :, 1][~pad[0]]
        d = np.diff(cols)
        flipped += bool(np.all(d < 0))
        unflipped += bool(np.all(d > 0))
    assert flipped + unflipped == 16 and flipped >= 3 and unflipped >= 3


def test_train_scaled_labels_stay_in_label_set():
    img, lab = _scene()
    for i in range(10):
        im, lb = preprocess.preprocess_for_train(img, lab, _seed(i), crop_size=(9, 13), ignore_label=255)
        assert set(np.unique(lb.numpy())) <= {0, 1, 2, 255}
        assert im.shape == (9, 13, 3) and lb.dtype == tf.int32 and im.dtype == tf.float32


def test_train_same_seed_same_output():
    img, lab = _scene()
    a = preprocess.preprocess_for_train(img, lab, _seed(3), crop_size=(9, 9), ignore_label=255)
    b = preprocess.preprocess_for_train(img, lab, _seed(3), crop_size=(9, 9), ignore_label=255)
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())


def test_eval_pads_only():
    img, lab = _scene()
    im, lb = preprocess.preprocess_for_eval(img, lab, ignore_label=255, crop_size=(13, 20))
    assert im.shape.as_list() == [13, 20, 3]
    np.testing.assert_array_equal(im.numpy()[:12, :18], img.numpy().astype(np.float32))
    np.testing.assert_array_equal(lb.numpy()[:12, :18], lab.numpy())
    assert np.all(im.numpy()[12:] == 127.5) and np.all(lb.numpy()[:, 18:] == 255)
    im, _ = preprocess.preprocess_for_eval(img, lab, ignore_label=255, pad_stride=8)
    assert im.shape.as_list() == [17, 25, 3]
    im, _ = preprocess.preprocess_for_eval(img, lab, ignore_label=255, crop_size=(5, 5))
    assert im.shape.as_list() == [12, 18, 3]  # larger than the eval crop: kept, never cropped
