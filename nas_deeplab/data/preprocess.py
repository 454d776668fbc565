"""Official DeepLab preprocessing (`input_preprocess.preprocess_image_and_label`) with stateless RNG.

Training: optional resize_to_range -> random scale from {min, min+step, ..., max} -> pad bottom/right
to the crop size with 127.5 / ignore -> random crop -> left-right flip with p=0.5. Evaluation: optional
resize_to_range -> pad only. Every random choice is a `tf.random.stateless_*` op keyed by a per-example
`seed` ([2] int), so a run with a fixed seed sees exactly the same crops on every machine and every run.
Resizes use align_corners=True (TF1 semantics, via nas_deeplab.resize) as the official code does.
"""

from __future__ import annotations

import tensorflow as tf

from nas_deeplab import resize

MEAN_PIXEL = 127.5  # official mean_pixel() for NAS variants: padding value of images


def get_random_scale(seed, min_scale_factor: float, max_scale_factor: float, step_size: float):
    """Official `get_random_scale`: one of linspace(min, max, int((max-min)/step+1)); step 0 -> uniform."""
    if min_scale_factor < 0 or min_scale_factor > max_scale_factor:
        raise ValueError(f"unexpected scale factors: min {min_scale_factor}, max {max_scale_factor}")
    if min_scale_factor == max_scale_factor:
        return tf.constant(float(min_scale_factor), tf.float32)
    if step_size == 0:
        return tf.random.stateless_uniform([], seed, minval=min_scale_factor, maxval=max_scale_factor)
    num_steps = int((max_scale_factor - min_scale_factor) / step_size + 1)
    scales = tf.linspace(float(min_scale_factor), float(max_scale_factor), num_steps)
    idx = tf.random.stateless_uniform([], seed, minval=0, maxval=num_steps, dtype=tf.int32)
    return tf.cast(scales[idx], tf.float32)


def resize_to_range(image, label=None, min_size=None, max_size=None, factor=None):
    """Official `preprocess_utils.resize_to_range` (keep aspect ratio, align_corners=True).

    The short side becomes `min_size` unless the long side would then exceed `max_size` (then the long
    side becomes `max_size`); with `factor`, both sides are rounded up to factor*k+1 (max_size first
    reduced to such a value).
    """
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    if max_size is not None and factor is not None:
        max_size = max_size - (max_size - 1) % factor
    if min_size is not None:
        s = float(min_size) / tf.minimum(h, w)
        large = tf.stack([tf.cast(tf.floor(h * s), tf.int32), tf.cast(tf.floor(w * s), tf.int32)])
    else:
        large = tf.stack([shape[0], shape[1]])
    new_size = large
    if max_size is not None:
        s = float(max_size) / tf.maximum(h, w)
        small = tf.stack([tf.cast(tf.floor(h * s), tf.int32), tf.cast(tf.floor(w * s), tf.int32)])
        new_size = tf.cond(tf.cast(tf.reduce_max(large), tf.float32) > float(max_size),
                           lambda: small, lambda: large)
    if factor is not None:
        new_size += (factor - (new_size - 1) % factor) % factor
    image = resize.resize_bilinear(image[None], new_size)[0]
    if label is not None:
        label = resize.resize_nearest(label[None], new_size)[0]
    return image, label


def randomly_scale(image, label, scale):
    """Official `randomly_scale_image_and_label`: new size int(H*s), int(W*s)."""
    shape = tf.shape(image)
    new_dim = tf.cast(tf.cast(shape[:2], tf.float32) * scale, tf.int32)
    image = resize.resize_bilinear(image[None], new_dim)[0]
    label = resize.resize_nearest(label[None], new_dim)[0]
    return image, label


def pad_to_at_least(image, label, height, width, ignore_label):
    """Pad bottom/right (offset 0, 0) to >= (height, width): image with 127.5, label with ignore."""
    shape = tf.shape(image)
    ph = tf.maximum(height - shape[0], 0)
    pw = tf.maximum(width - shape[1], 0)
    pads = [[0, ph], [0, pw], [0, 0]]
    image = tf.pad(image, pads, constant_values=MEAN_PIXEL)
    label = tf.pad(label, pads, constant_values=ignore_label)
    return image, label


def _seeds(seed, n):
    """n independent stateless seeds from one [2] seed."""
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=n)


def preprocess_for_train(image, label, seed, *, crop_size, ignore_label, min_scale_factor=0.5,
                         max_scale_factor=2.0, scale_factor_step_size=0.25, min_resize_value=None,
                         max_resize_value=None, resize_factor=None):
    """uint8 image [H,W,3] / label [H,W,1] -> float32 [ch,cw,3] (0..255) / int32 [ch,cw,1]."""
    crop_h, crop_w = crop_size
    image = tf.cast(image, tf.float32)
    label = tf.cast(label, tf.int32)
    if min_resize_value or max_resize_value:
        image, label = resize_to_range(image, label, min_resize_value, max_resize_value, resize_factor)
    s_scale, s_crop_h, s_crop_w, s_flip = tf.unstack(_seeds(seed, 4))
    scale = get_random_scale(s_scale, min_scale_factor, max_scale_factor, scale_factor_step_size)
    image, label = randomly_scale(image, label, scale)
    image, label = pad_to_at_least(image, label, crop_h, crop_w, ignore_label)
    shape = tf.shape(image)
    oh = tf.random.stateless_uniform([], s_crop_h, minval=0, maxval=shape[0] - crop_h + 1, dtype=tf.int32)
    ow = tf.random.stateless_uniform([], s_crop_w, minval=0, maxval=shape[1] - crop_w + 1, dtype=tf.int32)
    image = tf.slice(image, [oh, ow, 0], [crop_h, crop_w, 3])
    label = tf.slice(label, [oh, ow, 0], [crop_h, crop_w, 1])
    flip = tf.random.stateless_uniform([], s_flip) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)
    image.set_shape([crop_h, crop_w, 3])
    label.set_shape([crop_h, crop_w, 1])
    return image, label


def next_stride_size(d, stride: int):
    """Smallest stride*k+1 >= d (the sizes for which every DeepLab feature map aligns)."""
    return ((d - 2) // stride + 1) * stride + 1 if stride else d


def preprocess_for_eval(image, label, *, ignore_label, crop_size=None, pad_stride=None,
                        min_resize_value=None, max_resize_value=None, resize_factor=None):
    """Official eval preprocessing: optional resize_to_range, then pad only (no crop, no flip).

    Pads to `crop_size` (official eval_crop_size; an image larger than it keeps its size) and/or to the
    next stride*k+1 size when `pad_stride` is given.
    """
    image = tf.cast(image, tf.float32)
    label = tf.cast(label, tf.int32)
    if min_resize_value or max_resize_value:
        image, label = resize_to_range(image, label, min_resize_value, max_resize_value, resize_factor)
    shape = tf.shape(image)
    th, tw = shape[0], shape[1]
    if pad_stride:
        th, tw = next_stride_size(th, pad_stride), next_stride_size(tw, pad_stride)
    if crop_size is not None:
        th, tw = tf.maximum(th, crop_size[0]), tf.maximum(tw, crop_size[1])
    return pad_to_at_least(image, label, th, tw, ignore_label)
