"""DeepLab's loss: softmax cross-entropy averaged over valid (non-ignore) pixels of the global batch.

Functional on purpose: Keras loss objects rescale by the replica count under a strategy. Here each
replica divides its summed loss by the number of valid pixels over *all* replicas, so the SUM
all-reduce of gradients done by the optimiser yields exactly the global mean.
"""

from __future__ import annotations

import tensorflow as tf


def pixel_cross_entropy(logits, labels, ignore_label):
    """Per-pixel loss and validity mask; logits [N,H,W,C] (any float dtype), labels [N,H,W] or [N,H,W,1]."""
    labels = tf.cast(labels, tf.int32)
    if labels.shape.rank == 4:
        labels = tf.squeeze(labels, axis=-1)
    valid = tf.not_equal(labels, ignore_label)
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    per_px = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=tf.cast(logits, tf.float32))
    valid_f = tf.cast(valid, tf.float32)
    return per_px * valid_f, valid_f


def global_valid_count(valid_f):
    """Number of valid pixels summed over every replica (a no-op without a strategy)."""
    count = tf.reduce_sum(valid_f)
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and tf.distribute.has_strategy():
        count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
    return count


def valid_pixel_mean_loss(logits, labels, ignore_label):
    """Mean cross-entropy over the valid pixels of the global batch (call inside `strategy.run`)."""
    per_px, valid_f = pixel_cross_entropy(logits, labels, ignore_label)
    return tf.reduce_sum(per_px) / tf.maximum(global_valid_count(valid_f), 1.0)
