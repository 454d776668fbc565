"""ScheduledDropPath exactly as the official `NASBaseCell._apply_drop_path` (nas_cell.py).

keep = 1 - (cell_num + 1) / total_num_cells * (1 - p)         (deeper cells drop more)
ratio = min(1, global_step / total_training_steps)           (ramp in over training)
keep = 1 - ratio * (1 - keep)
net = net * (1 / keep) * floor(keep + U[0, 1))               (one mask per example, [B,1,1,1])

Only when training and p < 1. The official code draws from a stateful `tf.random_uniform`; here
the mask is a stateless draw seeded by (global step, a per-layer id, the replica id), because
Keras' seed generators are mirrored variables that would give every replica the same masks
under tf.distribute. The caller's step variable must therefore advance every step.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from nas_deeplab.model.serialization import register


def drop_path_keep_prob(p, cell_num, total_cells, step, total_steps):
    """The official keep probability at `cell_num` (0-based) and `step`; Python floats in,
    Python float out (tensors in, float32 tensor out)."""
    layer_keep = 1.0 - (cell_num + 1) / float(total_cells) * (1.0 - p)
    if isinstance(step, (tf.Tensor, tf.Variable)):
        ratio = tf.minimum(1.0, tf.cast(step, tf.float32) / float(total_steps))
        return 1.0 - ratio * (1.0 - layer_keep)
    ratio = min(1.0, float(step) / float(total_steps))
    return 1.0 - ratio * (1.0 - layer_keep)


def replica_id():
    """The replica index inside strategy.run (0 outside a strategy / in cross-replica context)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        return tf.constant(0, tf.int64)
    return tf.cast(ctx.replica_id_in_sync_group, tf.int64)


def stateless_seed(step, layer_id):
    """[2] int64 seed: (step, layer_id * 2**16 + replica): independent per step, layer and replica."""
    step = tf.cast(tf.convert_to_tensor(step), tf.int64)
    return tf.stack([step, tf.constant(int(layer_id) * 65536, tf.int64) + replica_id()])


class StepRef:
    """Holds the global-step variable without making it a tracked weight of every layer."""

    def __init__(self, variable=None):
        self.variable = variable if variable is not None else tf.Variable(
            0, dtype=tf.int64, trainable=False, name="global_step")


@register
class ScheduledDropPath(keras.layers.Layer):
    """Drop a whole op output per example with the official schedule (no variables).

    The step variable is not part of the config: a deserialised layer reads a fresh one at 0
    (see serialization.py)."""

    def __init__(self, keep_prob, cell_num, total_num_cells, total_training_steps, step_ref,
                 layer_id, **kwargs):
        super().__init__(**kwargs)
        self.keep_prob = float(keep_prob)
        self.cell_num, self.total_num_cells = int(cell_num), int(total_num_cells)
        self.total_training_steps = int(total_training_steps)
        self.step_ref = step_ref
        self.layer_id = int(layer_id)

    def get_config(self):
        return {**super().get_config(), "keep_prob": self.keep_prob, "cell_num": self.cell_num,
                "total_num_cells": self.total_num_cells,
                "total_training_steps": self.total_training_steps, "layer_id": self.layer_id}

    @classmethod
    def from_config(cls, config):
        return super().from_config({**config, "step_ref": StepRef()})

    def build(self, *args, **kwargs):
        pass   # no variables; skip Keras 3's symbolic build-by-run

    def call(self, x, training=None):
        if not training or self.keep_prob >= 1.0:
            return x
        step = self.step_ref.variable
        keep = drop_path_keep_prob(self.keep_prob, self.cell_num, self.total_num_cells,
                                   tf.convert_to_tensor(step), self.total_training_steps)
        u = tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1],
                                        seed=stateless_seed(tf.convert_to_tensor(step),
                                                            self.layer_id),
                                        dtype=tf.float32)
        mask = tf.cast(tf.floor(keep + u), x.dtype)
        return x * tf.cast(1.0 / keep, x.dtype) * mask
