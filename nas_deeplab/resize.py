"""DeepLab's resampling conventions (TF1 `resize_bilinear(align_corners=True)`, sizes (d-1)*s+1).

TF2's `tf.image.resize` uses half-pixel centres; the official graph does not, so every resize in
this project goes through these helpers to stay numerically identical to research/deeplab.
"""

from __future__ import annotations

import tensorflow as tf


def scale_dimension(dim, scale):
    """Official `scale_dimension`: int((dim - 1) * scale + 1), for ints or scalar tensors."""
    if isinstance(dim, tf.Tensor):
        return tf.cast((tf.cast(dim, tf.float32) - 1.0) * scale + 1.0, tf.int32)
    return int((float(dim) - 1.0) * scale + 1.0)


def resize_bilinear(images, size):
    """Bilinear resize with align_corners=True (TF1 semantics); `size` may hold tensors."""
    return tf.raw_ops.ResizeBilinear(images=images, size=tf.cast(tf.stack(size), tf.int32)
                                     if not isinstance(size, tf.Tensor) else tf.cast(size, tf.int32),
                                     align_corners=True, half_pixel_centers=False)


def resize_nearest(images, size):
    """Nearest-neighbour resize with align_corners=True (labels, as in the official pipeline)."""
    return tf.raw_ops.ResizeNearestNeighbor(images=images, size=tf.cast(tf.stack(size), tf.int32)
                                            if not isinstance(size, tf.Tensor) else tf.cast(size, tf.int32),
                                            align_corners=True, half_pixel_centers=False)


def spatial_size(x):
    """(H, W) of an NHWC tensor: static ints where known, scalar tensors otherwise."""
    static = x.shape[1:3]
    dynamic = tf.shape(x)[1:3]
    return tuple(static[i] if static[i] is not None else dynamic[i] for i in range(2))


def upsample_2x(x):
    """The official inter-cell upsampling: bilinear to (d-1)*2+1 in each spatial dimension."""
    h, w = spatial_size(x)
    return resize_bilinear(x, (scale_dimension(h, 2.0), scale_dimension(w, 2.0)))


def fixed_padding(x, kernel_size, rate=1):
    """Explicit padding for strided convs (slim `conv2d_same` / xception `fixed_padding`)."""
    k_eff = kernel_size + (kernel_size - 1) * (rate - 1)
    pad_total = k_eff - 1
    beg = pad_total // 2
    end = pad_total - beg
    return tf.pad(x, [[0, 0], [beg, end], [beg, end], [0, 0]])
