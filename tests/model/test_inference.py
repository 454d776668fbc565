"""Multi-scale + flip prediction against a NumPy transcription of the official resampling sequence."""

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture
from nas_deeplab import resize
from nas_deeplab.model import inference
from nas_deeplab.model.deeplab import ModelOptions

NUM_CLASSES = 5
WEIGHTS = np.random.RandomState(7).normal(size=(3, NUM_CLASSES)).astype(np.float32) / 60.0


class StrideFourModel:
    """Stands in for DeepLab: logits at stride 4 ((d-1)//4+1 a side) from a per-pixel linear map of
    every 4th pixel, so the expected values are easy to write in NumPy."""

    options = ModelOptions(num_classes=NUM_CLASSES).for_architecture(architecture.published(8))  # decoder 4

    def end_points(self, images, training=False):
        assert training is False
        return {"logits": tf.einsum("nhwc,ck->nhwk", images[:, ::4, ::4, :], WEIGHTS)}

    def __call__(self, images, training=False):
        return resize.resize_bilinear(self.end_points(images, training)["logits"], resize.spatial_size(images))


def np_resize(x, size):
    """Bilinear, align_corners=True, written out per output pixel (TF1 resize_bilinear)."""
    n, h, w, c = x.shape
    oh, ow = size
    out = np.zeros((n, oh, ow, c), np.float64)
    for i in range(oh):
        sy = i * (h - 1) / (oh - 1) if oh > 1 else 0.0
        y0 = int(np.floor(sy)); y1 = min(y0 + 1, h - 1); fy = sy - y0
        for j in range(ow):
            sx = j * (w - 1) / (ow - 1) if ow > 1 else 0.0
            x0 = int(np.floor(sx)); x1 = min(x0 + 1, w - 1); fx = sx - x0
            top = x[:, y0, x0] * (1 - fx) + x[:, y0, x1] * fx
            bottom = x[:, y1, x0] * (1 - fx) + x[:, y1, x1] * fx
            out[:, i, j] = top * (1 - fy) + bottom * fy
    return out


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def official_probabilities(image, scales, flips):
    """research/deeplab predict_labels_multi_scale, step by step."""
    _, h, w, _ = image.shape
    dim = lambda d, s: int((d - 1) * s + 1)  # noqa: E731  official scale_dimension
    passes = []
    for s in scales:
        for flip in ((False, True) if flips else (False,)):
            x = image[:, :, ::-1] if flip else image
            if s != 1.0:
                x = np_resize(x, (dim(h, s), dim(w, s)))
            logits = x[:, ::4, ::4, :] @ WEIGHTS.astype(np.float64)
            grid = max(1.0, s) / 4
            logits = np_resize(logits, (dim(h, grid), dim(w, grid)))
            if flip:
                logits = logits[:, :, ::-1]
            passes.append(np_softmax(np_resize(logits, (h, w))))
    return np.mean(passes, axis=0)


@pytest.fixture(scope="module")
def image():
    return np.random.RandomState(0).uniform(0, 255, (1, 33, 45, 3)).astype(np.float32)


@pytest.mark.parametrize("scales,flips", [((0.5, 0.75, 1.25), False), ((0.75, 1.0), True), ((1.0,), True)])
def test_multi_scale_matches_the_official_sequence(image, scales, flips):
    got = inference.predict_probabilities(StrideFourModel(), tf.constant(image), scales, flips).numpy()
    want = official_probabilities(image.astype(np.float64), scales, flips)
    assert got.shape == (1, 33, 45, NUM_CLASSES)
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_logits_of_a_downscaled_pass_go_through_the_full_size_logits_grid(image):
    """Resizing a 0.5-scale pass straight to H x W (skipping the logits grid) is measurably different,
    so the test above would catch that shortcut."""
    model = StrideFourModel()
    x = tf.constant(image)
    small = resize.resize_bilinear(x, (17, 23))
    direct = resize.resize_bilinear(model.end_points(small)["logits"], (33, 45)).numpy()
    official = inference.pass_logits(model, x, 0.5).numpy()
    assert np.abs(direct - official).max() > 1e-3


def test_single_scale_is_the_model_output(image):
    model, x = StrideFourModel(), tf.constant(image)
    got = inference.predict_probabilities(model, x).numpy()
    np.testing.assert_allclose(got, tf.nn.softmax(model(x)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(got, official_probabilities(image.astype(np.float64), (1.0,), False), atol=2e-6)
    assert inference.is_single_scale([1.0], False) and not inference.is_single_scale([1.0, 1.0], False)
    no_decoder = ModelOptions(num_classes=2, decoder_output_stride=None)
    assert inference.logits_output_stride(no_decoder.for_architecture(architecture.published(8))) == 8
