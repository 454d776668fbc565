"""Dilated convolutions in 16 bits whose filter gradient is computed in float32.

TF 2.21's oneDNN `Conv2DBackpropFilter` for DILATED bfloat16 convolutions crashes the process
(SIGSEGV in a JIT kernel, no Python error) on some shapes, found so far (batch 2, SAME, stride 1):
- grouped: [33, 33, 4] input, [5, 5, 2, 4] kernel, rate 2 (maps of ~29x29 and more);
- regular: [81, 81, 40] -> 40, 3x3, rates 6 / 12 / 24, and [97, 97, 40] -> 40, 3x3, rate 2 (the
  stride-8 atrous ops of Auto-DeepLab-S at crop 769), while [81, 81, 40] at rate 2, [49, 49, 400] at
  rates 12 / 18 and [193, 193, 20] at rate 2 run.
No rule in the shapes was evident, so every 16-bit dilated conv takes this path: the forward pass and
the input gradient are TF's own 16-bit kernels, the filter gradient runs in float32 from the same
16-bit values and is cast back. float32 convolutions never come here (their results are unchanged).
"""

from __future__ import annotations

import tensorflow as tf


def needs_float32_filter_gradient(x, rate: int) -> bool:
    return int(rate) > 1 and x.dtype in (tf.bfloat16, tf.float16)


def conv2d(x, kernel, rate: int):
    """tf.nn.conv2d(x, kernel, 1, "SAME", dilations=rate) for 16-bit x; `kernel` may be grouped
    (input channels = G x its in-channels)."""
    dilations = [1, rate, rate, 1]
    # A tensor, not the layer's variable: a custom gradient that reads variables must also return
    # their gradients separately (eager Keras calls pass the variable itself).
    kernel = tf.cast(tf.convert_to_tensor(kernel), x.dtype)

    @tf.custom_gradient
    def conv(x, k):
        y = tf.nn.conv2d(x, k, strides=1, padding="SAME", dilations=rate)

        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=k, out_backprop=dy,
                                                strides=[1, 1, 1, 1], padding="SAME", dilations=dilations)
            dk = tf.raw_ops.Conv2DBackpropFilter(input=tf.cast(x, tf.float32), filter_sizes=tf.shape(k),
                                                 out_backprop=tf.cast(dy, tf.float32), strides=[1, 1, 1, 1],
                                                 padding="SAME", dilations=dilations)
            return dx, tf.cast(dk, k.dtype)
        return y, grad
    return conv(x, kernel)
