"""The max pool with the recomputing gradient equals TF's own pool and gradient, bit for bit."""

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab.model import max_pool


def _native(x, stride):
    return tf.nn.max_pool2d(x, 3, stride, "SAME")


@pytest.mark.parametrize("shape,stride", [((2, 9, 9, 4), 1), ((2, 9, 9, 4), 2), ((1, 8, 11, 3), 2),
                                          ((2, 1, 1, 5), 1), ((1, 6, 7, 2), 1)])
@pytest.mark.parametrize("in_function", [False, True])
def test_equals_native(shape, stride, in_function):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal(shape), tf.float32)
    dy = tf.constant(rng.standard_normal(_native(x, stride).shape), tf.float32)

    def value_and_grad(fn, x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x, stride)
        return y, tape.gradient(y, x, output_gradients=dy)

    if in_function:  # the supernet's setting: forward and gradient in different graphs
        value_and_grad = tf.function(value_and_grad, autograph=False)
    ref = value_and_grad(_native, x, dy)
    got = value_and_grad(max_pool.max_pool_3x3, x, dy)
    for r, g, name in zip(ref, got, ("output", "input grad")):
        np.testing.assert_array_equal(g.numpy(), r.numpy(), err_msg=name)
    assert float(tf.reduce_sum(tf.abs(got[1]))) > 0  # routes something


def test_ties_go_to_one_input_like_native():
    x = tf.zeros([1, 4, 4, 1])  # every window ties: each output's gradient goes to exactly one input
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ys = [_native(x, 1), max_pool.max_pool_3x3(x, 1)]
    grads = [tape.gradient(y, x) for y in ys]
    np.testing.assert_array_equal(grads[1].numpy(), grads[0].numpy())
    assert float(tf.reduce_sum(grads[1])) == 16.0


@pytest.mark.parametrize("stride", [1, 2])
def test_bfloat16_equals_native_bfloat16(stride):
    """The 16-bit search runs the pool in bfloat16: the same values and routing as TF's own kernels."""
    rng = np.random.default_rng(4)
    x = tf.constant(rng.standard_normal((2, 9, 9, 4)), tf.bfloat16)
    dy = tf.constant(rng.standard_normal(_native(x, stride).shape), tf.bfloat16)

    @tf.function(autograph=False)
    def value_and_grad(fn, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x, stride)
        return y, tape.gradient(y, x, output_gradients=dy)

    ref, got = value_and_grad(_native, x), value_and_grad(max_pool.max_pool_3x3, x)
    assert got[0].dtype == got[1].dtype == tf.bfloat16
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(g.numpy().astype(np.float32), r.numpy().astype(np.float32))
    assert float(tf.reduce_sum(tf.abs(tf.cast(got[1], tf.float32)))) > 0
