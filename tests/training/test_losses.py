import numpy as np
import tensorflow as tf

from nas_deeplab.training.losses import valid_pixel_mean_loss


def test_loss_ignores_255_pixels_in_value_and_gradient():
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 4, size=(2, 5, 6, 1)).astype(np.int32)
    labels[0, :2] = 255
    labels[1, :, :3] = 255
    ignored = np.repeat(labels == 255, 4, axis=-1)
    logits_a = rng.randn(2, 5, 6, 4).astype(np.float32)
    logits_b = np.where(ignored, 50.0 * rng.randn(*logits_a.shape), logits_a).astype(np.float32)

    def loss_and_grad(logits):
        x = tf.Variable(logits)
        with tf.GradientTape() as tape:
            loss = valid_pixel_mean_loss(x, tf.constant(labels), 255)
        return loss.numpy(), tape.gradient(loss, x).numpy()

    la, ga = loss_and_grad(logits_a)
    lb, gb = loss_and_grad(logits_b)
    assert la == lb
    np.testing.assert_array_equal(ga, gb)
    assert np.all(ga[ignored] == 0)
    # The mean is over valid pixels only (not all pixels).
    valid = labels[..., 0] != 255
    logp = logits_a - np.log(np.exp(logits_a).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, np.where(valid, labels[..., 0], 0)[..., None], -1)[..., 0]
    np.testing.assert_allclose(la, ce[valid].mean(), rtol=1e-5)
