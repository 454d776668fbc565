"""3x3 max pool whose gradient runs on oneDNN even across function boundaries.

TF's graph rewrite turns MaxPoolGrad into oneDNN's kernel only when the forward MaxPool sits in the same
graph (oneDNN's backward needs the forward's workspace). In the supernet every node is its own function
and its gradient another, so TF falls back to the Eigen MaxPoolGrad: at crop 321 that was 1.0 s of
thread time per weight step, about 10x the oneDNN kernel on the same [2, 81, 81, 16] input
(bench figures in the README).

The gradient here recomputes the (cheap) forward pool inside the gradient graph and feeds it to
MaxPoolGrad, so the rewrite applies. The values are TF's own kernels' (tests/model/test_max_pool.py
checks equality with the native gradient), and the pool output need not be kept for the backward pass.
"""

from __future__ import annotations

import tensorflow as tf


def max_pool_3x3(x, stride: int = 1):
    """tf.nn.max_pool2d(x, 3, stride, "SAME") with the gradient described in the module docstring."""
    ksize, strides = [1, 3, 3, 1], [1, stride, stride, 1]

    @tf.custom_gradient
    def pool(x):
        def grad(dy):
            y = tf.nn.max_pool2d(x, ksize, strides, "SAME")
            return tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=y, grad=dy, ksize=ksize,
                                          strides=strides, padding="SAME")
        return tf.nn.max_pool2d(x, ksize, strides, "SAME"), grad

    return pool(x)
