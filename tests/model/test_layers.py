"""Leaf layers: the fused BatchNorm matches slim's semantics."""

import keras
import numpy as np
import tensorflow as tf

from nas_deeplab.model import layers


def _pair(**kw):
    x = tf.random.stateless_normal((4, 5, 6, 3), seed=[1, 2]) * 2.0 + 1.0
    ours = layers.BatchNorm(momentum=0.5, **kw)
    ref = keras.layers.BatchNormalization(momentum=0.5, epsilon=1e-3)
    for bn in (ours, ref):
        bn.build(x.shape)
        bn.moving_mean.assign([0.1, 0.2, 0.3])
        bn.moving_variance.assign([1.5, 0.5, 2.0])
        bn.gamma.assign([1.1, 0.9, 1.3])
        bn.beta.assign([0.1, -0.2, 0.0])
    return x, ours, ref


def test_fused_batch_norm_outputs_and_moving_statistics():
    x, ours, ref = _pair()
    np.testing.assert_allclose(ours(x, training=False), ref(x, training=False), atol=1e-5)
    np.testing.assert_allclose(ours(x, training=True), ref(x, training=True), atol=1e-5)
    np.testing.assert_allclose(ours.moving_mean, ref.moving_mean, atol=1e-6)
    # slim's fused BN averages the Bessel-corrected batch variance (n / (n - 1), n = 4*5*6).
    n = 4 * 5 * 6
    var = np.var(x.numpy(), axis=(0, 1, 2))
    np.testing.assert_allclose(ours.moving_variance, 0.5 * np.array([1.5, 0.5, 2.0])
                               + 0.5 * var * n / (n - 1), rtol=1e-5)


def test_frozen_batch_norm_ignores_training():
    x, ours, _ = _pair(use_batch_stats=False)
    before = ours.moving_mean.numpy().copy()
    np.testing.assert_allclose(ours(x, training=True), ours(x, training=False), atol=1e-6)
    np.testing.assert_array_equal(ours.moving_mean.numpy(), before)
    assert len(ours.trainable_variables) == 2   # gamma and beta still train, as in the official graph
