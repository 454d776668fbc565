"""16-bit dilated convs with a float32 filter gradient, at shapes where TF 2.21's own bf16 filter
gradient kills the process (SIGSEGV in oneDNN): equal to the float32 gradients to bfloat16 rounding,
inside a graph as the supernet and the trainer run them."""

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab.model import dilated_conv, layers


@pytest.mark.parametrize("size,cin,kernel_shape,rate", [
    (33, 4, (5, 5, 2, 4), 2),      # grouped (2 groups): the supernet's atrous ops, crop >= 113
    (97, 40, (3, 3, 40, 40), 2),   # Auto-DeepLab-S's stride-8 atrous ops at crop 769
])
def test_bfloat16_gradients_follow_float32_at_shapes_that_crashed_onednn(size, cin, kernel_shape, rate):
    rng = np.random.default_rng(5)
    x32 = tf.constant(rng.standard_normal((2, size, size, cin)), tf.float32)
    k32 = tf.constant(rng.standard_normal(kernel_shape) / np.sqrt(np.prod(kernel_shape[:3])), tf.float32)
    dy32 = tf.constant(rng.standard_normal((2, size, size, kernel_shape[3])), tf.float32)

    def value_and_grads(conv, x, k, dy):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = conv(x, k)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * dy)
        return [y] + tape.gradient(loss, [x, k])

    ref = tf.function(value_and_grads)(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME", dilations=rate),
                                       x32, k32, dy32)
    bf = tf.bfloat16
    got = tf.function(value_and_grads)(lambda x, k: dilated_conv.conv2d(x, k, rate), tf.cast(x32, bf),
                                       tf.cast(k32, bf), dy32)
    assert [t.dtype for t in got] == [bf] * 3
    for r, g, name in zip(ref, got, ("output", "input grad", "kernel grad")):
        r, g = r.numpy().astype(np.float64), g.numpy().astype(np.float64)
        np.testing.assert_allclose(g, r, rtol=0, atol=0.02 * np.abs(r).max(), err_msg=name)


def test_only_16bit_dilated_convs_take_the_path():
    x16, x32 = tf.zeros([1, 5, 5, 2], tf.bfloat16), tf.zeros([1, 5, 5, 2])
    assert dilated_conv.needs_float32_filter_gradient(x16, 2)
    assert not dilated_conv.needs_float32_filter_gradient(x16, 1)
    assert not dilated_conv.needs_float32_filter_gradient(x32, 2)
    # The network's conv layers use it under a 16-bit policy (same values as TF's op there).
    k = tf.random.stateless_normal([3, 3, 2, 3], seed=[1, 2], dtype=tf.bfloat16)
    x = tf.random.stateless_normal([1, 9, 9, 2], seed=[3, 4], dtype=tf.bfloat16)
    np.testing.assert_array_equal(layers.conv2d_same(x, k, 1, 2).numpy().astype(np.float32),
                                  tf.nn.conv2d(x, k, 1, "SAME", dilations=2).numpy().astype(np.float32))
