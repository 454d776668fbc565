"""Single- and multi-scale (+ flip) prediction, resampled exactly as the official DeepLab does.

Shared by evaluation (`training/evaluator.py`) and the serving SavedModel (`export/saved_model.py`),
so the numbers a user measures with one are the numbers the other serves.

Official sequence (research/deeplab model.py `predict_labels` / `predict_labels_multi_scale`, with
`multi_scale_logits(image_pyramid=[s])` for each scale s), for images [N, H, W, 3] already padded:

* single scale (scales == (1.0,), no flip): logits at the logits stride (decoder_output_stride, or
  output_stride without a decoder), bilinearly resized (align_corners) to H x W; this is the model's
  own output (`DeepLab.call`).
* otherwise, for each scale s (and the left-right flipped image when asked): resize the image to
  `scale_dimension(H, s)`; its logits are resized to the logits grid of the image at max(1, s),
  `scale_dimension(H, max(1, s) / stride)`, then (flipped back and) resized to H x W; the softmax
  probabilities of all passes are averaged.

Going through the logits grid is not a detour we may skip: for s < 1 it is the grid of the
unscaled image, so resizing straight to H x W would interpolate differently (and cost a full-size
resize more per pass than needed only by accident of our model returning upsampled logits).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from nas_deeplab import resize


def logits_output_stride(options) -> int:
    """Stride of the logits: the decoder's when there is one (official `logits_output_stride`).
    `options` are a model's resolved options (`DeepLab.options`), whose strides follow its path."""
    return int(options.decoder_output_stride or options.output_stride)


def is_single_scale(scales: Sequence[float], add_flipped_images: bool) -> bool:
    """True when the official code takes the plain `predict_labels` path."""
    return tuple(float(s) for s in scales) == (1.0,) and not add_flipped_images


def pass_logits(model, images, scale: float, flipped: bool = False):
    """One multi-scale pass: logits [N, H, W, C] (float32) of `images` [N, H, W, 3] seen at `scale`
    (and flipped left-right, then flipped back), on the H x W grid of `images`.

    `model` is a `DeepLab` (it needs `end_points(...)["logits"]` at the logits stride and `options`)."""
    h, w = resize.spatial_size(images)
    x = tf.reverse(images, axis=[2]) if flipped else images  # flip first, as the official graph
    if scale != 1.0:
        x = resize.resize_bilinear(x, (resize.scale_dimension(h, scale), resize.scale_dimension(w, scale)))
    logits = tf.cast(model.end_points(x, training=False)["logits"], tf.float32)
    grid = max(1.0, float(scale)) / logits_output_stride(model.options)
    logits = resize.resize_bilinear(logits, (resize.scale_dimension(h, grid), resize.scale_dimension(w, grid)))
    if flipped:
        logits = tf.reverse(logits, axis=[2])
    return resize.resize_bilinear(logits, (h, w))


def predict_probabilities(model, images, scales: Sequence[float] = (1.0,), add_flipped_images: bool = False):
    """Softmax probabilities [N, H, W, C] of padded float images [N, H, W, 3] (0..255), averaged over
    the scales (and flips) as the official `predict_labels_multi_scale` does."""
    if is_single_scale(scales, add_flipped_images):
        return tf.nn.softmax(tf.cast(model(images, training=False), tf.float32), axis=-1)
    probs = [tf.nn.softmax(pass_logits(model, images, float(s), flipped), axis=-1)
             for s in scales for flipped in ((False, True) if add_flipped_images else (False,))]
    return tf.add_n(probs) / float(len(probs))
