"""The depthwise conv with the rewritten filter gradient equals TF's own op and gradients."""

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import resize
from nas_deeplab.model import depthwise


def _native(x, k, stride, padding):
    return tf.nn.depthwise_conv2d(x, k, [1, stride, stride, 1], padding)


def _assert_same_values_and_gradients(ref_fn, fn, x, k, rng):
    """ref_fn and fn (x, k) -> y agree on y and on the gradients of sum(y * dy) w.r.t. x and k.
    Returns ([y, dx, dk] of fn, the same of ref_fn)."""
    dy = None
    results = []
    for f in (ref_fn, fn):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = f(x, k)
            if dy is None:
                dy = tf.constant(rng.standard_normal(y.shape), tf.float32)
            loss = tf.reduce_sum(y * dy)
        results.append([y] + tape.gradient(loss, [x, k]))
    for ref, got, name in zip(results[0], results[1], ("output", "input grad", "kernel grad")):
        assert ref.shape == got.shape, name
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-4, err_msg=name)
    return results[1], results[0]


@pytest.mark.parametrize("shape,ksize,stride,padding", [
    ((2, 17, 17, 6), 5, 1, "SAME"), ((1, 8, 11, 3), 5, 1, "SAME"), ((2, 9, 9, 4), 3, 1, "SAME"),
    ((2, 7, 10, 3), 3, 2, "SAME"), ((2, 1, 1, 5), 5, 1, "SAME"), ((2, 2, 3, 4), 5, 1, "SAME"),
    ((2, 17, 17, 6), 5, 2, "FIXED"), ((1, 12, 9, 2), 5, 2, "FIXED"), ((2, 2, 2, 3), 5, 2, "FIXED")])
def test_forward_and_gradients_equal_native(shape, ksize, stride, padding):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal(shape), tf.float32)
    k = tf.constant(rng.standard_normal((ksize, ksize, shape[-1], 1)), tf.float32)
    if padding == "FIXED":  # the supernet's strided separable op: fixed padding + VALID
        x = resize.fixed_padding(x, ksize)
        padding = "VALID"
    got, _ = _assert_same_values_and_gradients(lambda x, k: _native(x, k, stride, padding),
                                               lambda x, k: depthwise.depthwise_conv2d(x, k, stride, padding),
                                               x, k, rng)
    assert float(tf.reduce_max(tf.abs(got[2]))) > 0.1  # the kernel gradient is not trivially zero


@pytest.mark.parametrize("shape,groups,repeats,stride,padding", [
    ((2, 9, 9, 6), 2, 3, 1, "SAME"), ((1, 7, 10, 4), 1, 4, 1, "SAME"), ((2, 11, 11, 6), 3, 2, 2, "FIXED"),
    ((2, 1, 1, 4), 2, 2, 1, "SAME")])
def test_repeated_input_equals_native_on_the_tiled_input(shape, groups, repeats, stride, padding):
    """The supernet's form: the input's G channel groups are each repeated Q times inside the op; the
    input gradient must come back summed over the repeats."""
    rng = np.random.default_rng(2)
    n, h, w, gc = shape
    c = gc // groups
    x = tf.constant(rng.standard_normal(shape), tf.float32)
    k = tf.constant(rng.standard_normal((5, 5, gc * repeats, 1)), tf.float32)
    if padding == "FIXED":
        x = resize.fixed_padding(x, 5)
        padding = "VALID"
    ph, pw = int(x.shape[1]), int(x.shape[2])

    def tiled_native(x, k):
        t = tf.tile(tf.reshape(x, [n, ph, pw, groups, 1, c]), [1, 1, 1, 1, repeats, 1])
        return _native(tf.reshape(t, [n, ph, pw, groups * repeats * c]), k, stride, padding)

    def repeated(x, k):
        return depthwise.depthwise_conv2d(x, k, stride, padding, groups=groups, repeats=repeats)

    got, ref = _assert_same_values_and_gradients(tiled_native, repeated, x, k, rng)
    np.testing.assert_array_equal(got[0].numpy(), ref[0].numpy())  # same forward op


def test_refuses_channel_multiplier():
    with pytest.raises(ValueError, match="K, K, C, 1"):
        depthwise.depthwise_conv2d(tf.zeros([1, 5, 5, 2]), tf.zeros([3, 3, 2, 2]))


def test_refuses_mismatched_repeats():
    with pytest.raises(ValueError, match="repeated 3 times"):
        depthwise.depthwise_conv2d(tf.zeros([1, 5, 5, 2]), tf.zeros([3, 3, 4, 1]), repeats=3)


def test_repeat_channels_and_its_gradient_equal_tf_tile():
    x = tf.constant(np.random.default_rng(3).standard_normal((2, 3, 4, 6)), tf.float32)
    g = tf.constant(np.random.default_rng(4).standard_normal((2, 3, 4, 18)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        got = depthwise.repeat_channels(x, 2, 3)
        ref = tf.reshape(tf.tile(tf.reshape(x, [2, 3, 4, 2, 1, 3]), [1, 1, 1, 1, 3, 1]), [2, 3, 4, 18])
    np.testing.assert_array_equal(got.numpy(), ref.numpy())
    np.testing.assert_allclose(tape.gradient(got, x, output_gradients=g).numpy(),
                               tape.gradient(ref, x, output_gradients=g).numpy(), rtol=1e-6)


@pytest.mark.parametrize("groups,repeats,stride", [(1, 1, 1), (2, 3, 1), (1, 2, 2)])
def test_bfloat16_values_and_gradients_follow_the_float32_ones(groups, repeats, stride):
    """The 16-bit search runs this op in bfloat16: outputs and both gradients in bfloat16, equal to
    the float32 ones to bfloat16 rounding (8 mantissa bits, sums of 25-150 products)."""
    rng = np.random.default_rng(3)
    x32 = tf.constant(rng.standard_normal((2, 11, 11, 2 * groups)), tf.float32)
    k32 = tf.constant(rng.standard_normal((5, 5, 2 * groups * repeats, 1)), tf.float32)
    out, dy32 = {}, None
    for dtype in (tf.float32, tf.bfloat16):
        x, k = tf.cast(x32, dtype), tf.cast(k32, dtype)
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = depthwise.depthwise_conv2d(x, k, stride, "SAME", groups, repeats)
            dy = tf.cast(tf.constant(rng.standard_normal(y.shape)) if dtype == tf.float32 else dy32, dtype)
            dy32 = dy
            loss = tf.reduce_sum(y * dy)
        grads = tape.gradient(loss, [x, k])
        assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
        out[dtype] = [t.numpy().astype(np.float64) for t in [y] + grads]
    for ref, got, name in zip(out[tf.float32], out[tf.bfloat16], ("output", "input grad", "kernel grad")):
        scale = np.abs(ref).max()
        assert scale > 0.1, name
        np.testing.assert_allclose(got, ref, rtol=0, atol=0.02 * scale, err_msg=name)


@pytest.mark.parametrize("dtype,groups,repeats,pointwise_groups,stride,padding", [
    (tf.float32, 1, 1, 1, 1, "SAME"), (tf.float32, 2, 3, 6, 1, "SAME"), (tf.float32, 1, 2, 2, 2, "VALID"),
    (tf.bfloat16, 2, 2, 4, 1, "SAME")])
def test_separable_conv2d_recomputes_the_depthwise_output_and_equals_the_pair(
        dtype, groups, repeats, pointwise_groups, stride, padding):
    """separable_conv2d = depthwise_conv2d then a (grouped) 1x1 conv, values and all three gradients,
    although its backward pass rebuilds the depthwise output instead of keeping it: the same ops on
    the same values, so bit-equal in float32 and bfloat16 alike."""
    rng = np.random.default_rng(5)
    c_in = 2 * groups
    x = tf.cast(tf.constant(rng.standard_normal((2, 9, 9, c_in)), tf.float32), dtype)
    dk = tf.cast(tf.constant(rng.standard_normal((3, 3, c_in * repeats, 1)), tf.float32), dtype)
    pk = tf.cast(tf.constant(rng.standard_normal((1, 1, c_in * repeats // pointwise_groups, 12)),
                             tf.float32), dtype)
    results = []
    for fn in (lambda: tf.nn.conv2d(depthwise.depthwise_conv2d(x, dk, stride, padding, groups, repeats),
                                    pk, 1, "SAME"),
               lambda: depthwise.separable_conv2d(x, dk, pk, stride, padding, groups, repeats)):
        with tf.GradientTape() as tape:
            tape.watch([x, dk, pk])
            y = fn()
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.constant(
                np.random.default_rng(6).standard_normal(y.shape), tf.float32))
        results.append([y] + tape.gradient(loss, [x, dk, pk]))
    for ref, got, name in zip(*results, ("output", "input grad", "depthwise grad", "pointwise grad")):
        assert got.dtype == dtype and float(tf.reduce_max(tf.abs(tf.cast(ref, tf.float32)))) > 0.1, name
        np.testing.assert_array_equal(tf.cast(got, tf.float32).numpy(), tf.cast(ref, tf.float32).numpy(),
                                      err_msg=name)
