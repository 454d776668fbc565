"""Depthwise convolution with a faster filter gradient on CPU.

TF 2.21's oneDNN kernel for DepthwiseConv2dNativeBackpropFilter is slow: in the search's weight step it
took 39% of all op time (2.8 s of thread time per step at crop 65, paper-size supernet). The same
gradient is itself a depthwise convolution, with the batch folded into the channels:

    dK[a, b, c] = sum_{n, i, j} xp[n, s*i + a, s*j + b, c] * dy[n, i, j, c]
                = DepthwiseConv(xp as [1, Hp, Wp, N*C], dy as [h, w, N*C, 1], dilation s)[0, a, b, (n, c)]
                  summed over n,

which oneDNN runs 1.2-3.6x faster (per call, over the supernet's shapes). The forward pass and the input
gradient are TF's own ops, so only the filter gradient's summation order changes (float32 round-off,
checked against the native gradient in tests/model/test_depthwise.py).

The input may also be given un-repeated (`repeats`): the supernet runs every consumer's separable
kernels on one cell state as one depthwise conv over Q copies of its channels. Taking the copy inside
the op keeps the Q-times larger tensor out of the saved activations (13% of them at crop 321) and lets
the gradient pad and transpose the small input instead of the large one.
"""

from __future__ import annotations

import tensorflow as tf


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's SAME padding (before, after) for one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _sum_copies(g, groups: int, repeats: int):
    """[..., G*Q*C] -> [..., G*C]: the gradient of `repeat_channels`, a sum over the Q copies."""
    lead = [int(d) for d in g.shape[:-1]]
    c = int(g.shape[-1]) // (groups * repeats)
    return tf.reshape(tf.reduce_sum(tf.reshape(g, lead + [groups, repeats, c]), axis=-2),
                      lead + [groups * c])


def repeat_channels(x, groups: int, repeats: int):
    """[..., G*C] -> [..., G*Q*C]: each of the G channel groups repeated Q times in place. Its gradient
    is one sum over the copies (TF's generic TileGrad builds about ten dynamic-shape ops)."""
    if repeats == 1:
        return x
    lead = [int(d) for d in x.shape[:-1]]
    c = int(x.shape[-1]) // groups

    @tf.custom_gradient
    def repeat(x):
        def grad(g):
            return _sum_copies(g, groups, repeats)
        t = tf.tile(tf.reshape(x, lead + [groups, 1, c]), [1] * len(lead) + [1, repeats, 1])
        return tf.reshape(t, lead + [groups * repeats * c]), grad

    return repeat(x)


def _filter_gradient(x, dy, kernel_size, stride, padding, groups, repeats):
    """x is the un-repeated input: it is padded and transposed at its own (Q times smaller) size and
    repeated only then, in the layout the gradient conv reads."""
    n, h, w, _ = (int(d) for d in x.shape)
    c = int(dy.shape[-1])
    if padding == "SAME":
        ph, pw = _same_padding(h, kernel_size, stride), _same_padding(w, kernel_size, stride)
        x = tf.pad(x, [[0, 0], ph, pw, [0, 0]])
        h, w = h + sum(ph), w + sum(pw)
    oh, ow = int(dy.shape[1]), int(dy.shape[2])
    xt = repeat_channels(tf.transpose(x, [1, 2, 0, 3]), groups, repeats)
    xt = tf.reshape(xt, [1, h, w, n * c])
    dyt = tf.reshape(tf.transpose(dy, [1, 2, 0, 3]), [oh, ow, n * c, 1])
    # With a 1x1 "filter" the dilation is irrelevant (and TF refuses rate > 1 with a size-1 filter).
    rate = [stride, stride] if (oh > 1 or ow > 1) else [1, 1]
    g = tf.nn.depthwise_conv2d(xt, dyt, [1, 1, 1, 1], "VALID", dilations=rate)
    g = g[:, :kernel_size, :kernel_size, :]
    return tf.reduce_sum(tf.reshape(g, [kernel_size, kernel_size, n, c]), axis=2)[..., None]


def _check(x, kernel, groups, repeats):
    if int(kernel.shape[-1]) != 1 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"depthwise_conv2d: need a square [K, K, C, 1] kernel, got {kernel.shape}")
    if int(x.shape[-1]) * repeats != int(kernel.shape[2]) or int(x.shape[-1]) % groups:
        raise ValueError(f"depthwise_conv2d: {x.shape[-1]} input channels in {groups} groups, "
                         f"repeated {repeats} times, do not match the kernel's {kernel.shape[2]}")


def _depthwise_gradients(x, kernel, dy, stride, padding, groups, repeats):
    """(dx, dkernel) of depthwise_conv2d(x, kernel, ...) for the output gradient dy."""
    strides = [1, stride, stride, 1]
    shape = [int(d) for d in x.shape[:-1]] + [int(kernel.shape[2])]
    dx = tf.nn.depthwise_conv2d_backprop_input(shape, kernel, dy, strides, padding)
    if repeats > 1:
        dx = _sum_copies(dx, groups, repeats)
    return dx, _filter_gradient(x, dy, int(kernel.shape[0]), stride, padding, groups, repeats)


def depthwise_conv2d(x, kernel, stride: int = 1, padding: str = "SAME", groups: int = 1,
                     repeats: int = 1):
    """tf.nn.depthwise_conv2d (channel multiplier 1, rate 1) of `repeat_channels(x, groups, repeats)`,
    whose kernel gradient is computed as a depthwise convolution (see module).

    x [N, H, W, G*C] with static shape, kernel [K, K, G*Q*C, 1]. The repeated input is not kept for
    the backward pass (it is rebuilt there, after the transpose the gradient needs), and its input
    gradient is summed over the repeats: the supernet feeds one cell state to every consumer's
    separable kernels this way."""
    _check(x, kernel, groups, repeats)
    strides = [1, stride, stride, 1]

    @tf.custom_gradient
    def conv(x, kernel):
        y = tf.nn.depthwise_conv2d(repeat_channels(x, groups, repeats), kernel, strides, padding)

        def grad(dy):
            return _depthwise_gradients(x, kernel, dy, stride, padding, groups, repeats)

        return y, grad

    return conv(x, kernel)


def separable_conv2d(x, depthwise_kernel, pointwise_kernel, stride: int = 1, padding: str = "SAME",
                     groups: int = 1, repeats: int = 1):
    """tf.nn.conv2d(depthwise_conv2d(x, depthwise_kernel, ...), pointwise_kernel, 1, "SAME") (a 1x1
    conv, grouped if the kernel has fewer input channels) whose backward pass RECOMPUTES the depthwise
    output instead of keeping it.

    The depthwise output is needed only by the pointwise kernel's gradient, and it is the largest
    tensor a separable layer keeps (a quarter of the supernet's saved activations at crop 321), while
    its input is kept anyway (the depthwise filter gradient, a ReLU's gradient). Recomputing costs one
    depthwise pass. The recomputed values are the forward's own (same kernel, same inputs), and the
    gradients are TF's Conv2D gradient ops, so the results equal the unfused pair's."""
    _check(x, depthwise_kernel, groups, repeats)
    strides = [1, stride, stride, 1]

    def depthwise_output(x, dk):
        return tf.nn.depthwise_conv2d(repeat_channels(x, groups, repeats), dk, strides, padding)

    @tf.custom_gradient
    def conv(x, dk, pk):
        y = depthwise_output(x, dk)
        y_shape = [int(d) for d in y.shape]  # static: the tensor itself must not be kept
        z = tf.nn.conv2d(y, pk, 1, "SAME")

        def grad(dz):
            dy = tf.raw_ops.Conv2DBackpropInput(input_sizes=y_shape, filter=pk, out_backprop=dz,
                                                strides=[1, 1, 1, 1], padding="SAME")
            dpk = tf.raw_ops.Conv2DBackpropFilter(input=depthwise_output(x, dk), filter_sizes=tf.shape(pk),
                                                  out_backprop=dz, strides=[1, 1, 1, 1], padding="SAME")
            dx, ddk = _depthwise_gradients(x, dk, dy, stride, padding, groups, repeats)
            return dx, ddk, dpk

        return z, grad

    return conv(x, depthwise_kernel, pointwise_kernel)
