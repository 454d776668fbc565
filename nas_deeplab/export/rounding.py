"""Mean-preserving rounding of a 16-bit export's weights (`export.py --weight_rounding`).

Rounding each weight to the nearest 16-bit value leaves, per output channel, a constant shift
sum_j (q_j - w_j) * E[x_j]: the conv's inputs are mostly ReLU outputs with positive means, so the
errors do not average out over pixels; every pixel of that channel moves the same way, and the shifts
of ~250 layers add up to a coherent change of the logits. Measured on trained models
(`bench/export_precision_agreement.py`), that weight rounding is most of what a bfloat16 export
changes, and the mIoU change then depends on which way it fell (up to 1.7 points).

`mean_preserving` keeps each weight at one of its two neighbouring 16-bit values, but per output
channel it rounds the other way those weights closest to a midpoint (the cheapest in squared error)
whose flip moves the shift toward zero, as many as bring it closest to zero. The folded bias (the
BN's `beta - mean * s`) takes part as a weight on a constant input 1. E[x] per kernel tap comes from
a calibration pass of the float32 model over training images (`input_means`; per tap, not per
channel: near the borders a tap reads zero padding); a separable conv's pointwise kernel sees the
depthwise output, whose channel means are measured as well.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from nas_deeplab import resize
from nas_deeplab.model import layers

ROUNDINGS = ("nearest", "mean_preserving")
_TF_DTYPES = {"bfloat16": tf.bfloat16, "float16": tf.float16}


def neighbours(values, precision: str):
    """(nearest, other): float64 arrays of values exactly representable in `precision`; `nearest` is
    round-to-nearest-even (as tf.cast), `other` the neighbour on the other side of the value (equal to
    `nearest` where the value is representable)."""
    w = np.asarray(values, np.float32)
    nearest = tf.cast(tf.cast(w, _TF_DTYPES[precision]), tf.float32).numpy()
    if precision == "bfloat16":   # bfloat16 is the top 16 bits of float32 (sign and magnitude)
        bits = w.view(np.uint32) & np.uint32(0xFFFF0000)
        toward_zero = bits.view(np.float32)
        away = (bits + np.uint32(0x10000)).view(np.float32)
        other = np.where(nearest == toward_zero, away, toward_zero)
    else:
        n16 = nearest.astype(np.float16)
        direction = np.where(nearest > w, -np.inf, np.inf).astype(np.float16)
        other = np.nextafter(n16, direction).astype(np.float32)
    other = np.where(nearest == w, nearest, other)
    return nearest.astype(np.float64), other.astype(np.float64)


def balance(weights, input_means, precision: str, bias=None):
    """Round `weights` [J, O] (J inputs, O outputs) to `precision` so that each output's mean shift
    sum_j (q - w)[j, o] * input_means[j, o] (+ the bias' own rounding error) is as close to zero as
    flipping the cheapest eligible weights in order gets it. `input_means` broadcasts to [J, O]; `bias`
    [O] or None. Returns (float32 weights, float32 bias or None), every value exactly representable."""
    w = np.asarray(weights, np.float64)
    a = np.broadcast_to(np.asarray(input_means, np.float64), w.shape)
    if bias is not None:
        w = np.concatenate([w, np.asarray(bias, np.float64)[None, :]])
        a = np.concatenate([a, np.ones((1, w.shape[1]))])
    near, other = neighbours(w, precision)
    shift = ((near - w) * a).sum(0)                              # [O]
    effect = (other - near) * a                                  # change of the shift if j flips
    cost = (other - w) ** 2 - (near - w) ** 2                    # extra squared error if j flips
    eligible = (np.sign(effect) == -np.sign(shift)[None, :]) & (effect != 0)
    order = np.argsort(np.where(eligible, cost, np.inf), axis=0, kind="stable")
    gains = np.take_along_axis(np.where(eligible, effect, 0.0), order, axis=0)
    residual = np.abs(shift[None, :] + np.concatenate([np.zeros((1, w.shape[1])), np.cumsum(gains, 0)]))
    flips = np.argmin(residual, axis=0)                          # how many of the cheapest to flip
    flip = np.zeros(w.shape, bool)
    np.put_along_axis(flip, order, np.arange(w.shape[0])[:, None] < flips[None, :], axis=0)
    q = np.where(flip, other, near).astype(np.float32)
    return (q[:-1], q[-1]) if bias is not None else (q, None)


def tap_means(x, kernel_size: int, stride: int = 1, rate: int = 1):
    """[K, K, C] float64: the mean over output pixels of the input each kernel tap reads, zero padding
    included, for the layers' convs (padded as `resize.fixed_padding`, which is also what SAME pads at
    stride 1): near the borders a tap reads padding, so this is not the channel mean."""
    k_eff = kernel_size + (kernel_size - 1) * (rate - 1)
    xp = resize.fixed_padding(tf.cast(x, tf.float64), kernel_size, rate)
    h_out = (int(xp.shape[1]) - k_eff) // stride + 1
    w_out = (int(xp.shape[2]) - k_eff) // stride + 1
    rows = []
    for dy in range(kernel_size):
        row = []
        for dx in range(kernel_size):
            y0, x0 = dy * rate, dx * rate
            window = xp[:, y0:y0 + stride * (h_out - 1) + 1:stride, x0:x0 + stride * (w_out - 1) + 1:stride, :]
            row.append(tf.reduce_mean(window, [0, 1, 2]))
        rows.append(tf.stack(row))
    return tf.stack(rows).numpy()


def input_means(model, images) -> dict:
    """{layer path: {"taps": [K, K, C] tap means (`tap_means`), and for a separable conv "depthwise":
    [C] means of its depthwise output}} averaged over `images` (float32 [1, H, W, 3] batches), the
    float32 model run eagerly."""
    sums = {}

    def add(key, sub, value):
        s = sums.setdefault(key, {}).setdefault(sub, [0.0, 0])
        s[0] = s[0] + value
        s[1] += 1

    def observe(layer, x):
        if isinstance(layer, layers.SeparableConv2D):
            add(layer.path, "taps", tap_means(x, layer.kernel_size, layer.stride, layer.rate))
            c = int(x.shape[-1])
            dw = layers.separable_conv2d_same(x, tf.cast(layer.depthwise_kernel, x.dtype),
                                              tf.eye(c, dtype=x.dtype)[None, None], layer.stride, layer.rate)
            add(layer.path, "depthwise", tf.reduce_mean(tf.cast(dw, tf.float64), [0, 1, 2]).numpy())
        elif isinstance(layer, layers.DepthwiseConv2D):
            add(layer.path, "taps", tap_means(x, layer.kernel_size, 1, layer.rate))
        else:
            add(layer.path, "taps", tap_means(x, int(layer.kernel.shape[0]), layer.stride, layer.rate))

    with layers.observe_inputs(observe):
        for image in images:
            model(image, training=False)
    return {path: {k: v[0] / v[1] for k, v in subs.items()} for path, subs in sums.items()}


def mean_preserving_values(model, means: dict, precision: str, folded=None, float32_layers=()) -> dict:
    """{variable path: float32 value representable in `precision`} for every conv kernel of the float32
    `model` and each folded bias (`folded`: bn_folding.FoldedValues or None; its kernels replace the
    model's), except the layers named in `float32_layers` (those the 16-bit copy computes in float32,
    e.g. the logits). Layers whose inputs the calibration never saw are refused."""
    from nas_deeplab.export import bn_folding  # noqa: PLC0415
    pairs = {p.kernel.path: p for p in bn_folding.conv_bn_pairs(model)} if folded is not None else {}
    out = {}

    def kernel_and_bias(var):
        p = pairs.get(var.path)
        if p is None:
            return np.asarray(var.numpy(), np.float64), None, None
        return (np.asarray(folded.kernels[var.path], np.float64), np.asarray(folded.biases[p.bn.path]),
                p.bn.beta.path)

    def put(var, rounded, bias, bias_path):
        out[var.path] = rounded
        if bias_path is not None:
            out[bias_path] = bias

    def depthwise(var, taps):    # [K, K, C, 1]: channel c's output reads taps[:, :, c]
        k, b, bp = kernel_and_bias(var)
        kk, c = k.shape[0] * k.shape[1], k.shape[2]
        q, qb = balance(k.reshape(kk, c), taps.reshape(kk, c), precision, b)
        put(var, q.reshape(k.shape), qb, bp)

    for layer in model._flatten_layers(include_self=False, recursive=True):  # noqa: SLF001
        if not isinstance(layer, (layers.Conv2D, layers.SeparableConv2D, layers.DepthwiseConv2D)):
            continue
        if layer.path in float32_layers:
            continue
        if layer.path not in means:
            raise ValueError(f"{layer.path}: the calibration images never reached this layer")
        m = means[layer.path]
        if isinstance(layer, layers.SeparableConv2D):
            depthwise(layer.depthwise_kernel, m["taps"])
            k, b, bp = kernel_and_bias(layer.pointwise_kernel)
            q, qb = balance(k[0, 0], m["depthwise"][:, None], precision, b)
            put(layer.pointwise_kernel, q[None, None], qb, bp)
        elif isinstance(layer, layers.DepthwiseConv2D):
            depthwise(layer.depthwise_kernel, m["taps"])
        else:   # [K, K, C, O]: input j = (tap row, tap column, channel), as the kernel is laid out
            k, b, bp = kernel_and_bias(layer.kernel)
            q, qb = balance(k.reshape(-1, k.shape[3]), m["taps"].reshape(-1, 1), precision, b)
            put(layer.kernel, q.reshape(k.shape), qb, bp)
    return out


def float32_conv_layers(model) -> set:
    """Paths of the conv layers of `model` (a 16-bit copy) that compute in float32 (heads.Logits)."""
    return {l.path for l in model._flatten_layers(include_self=False, recursive=True)  # noqa: SLF001
            if isinstance(l, (layers.Conv2D, layers.SeparableConv2D, layers.DepthwiseConv2D))
            and l.compute_dtype == "float32"}
