"""One cell for any genotype, with the official NASBaseCell semantics (nas_cell.py).

Inputs: `net` (previous cell output, already upsampled by the backbone when the path goes up) and
`prev_layer` (the output before that). `prev_layer` is bilinearly resized (align_corners) to net's
size when they differ, then ReLU -> `prev_1x1` -> `prev_bn` when its channels differ from the cell's
filters; `net` always goes ReLU -> `1x1` -> `beginning_bn`. Block b applies its left/right ops
(stride only on ops reading h0/h1) and adds them; drop path follows every op except skip_connect.
The output is the concat of all block outputs, without ReLU (the next cell starts with one).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from nas_deeplab import resize
from nas_deeplab.model import layers
from nas_deeplab.model import operations as op_table
from nas_deeplab.model.drop_path import ScheduledDropPath, StepRef
from nas_deeplab.model.serialization import options_to_config, register


@register
class Block(layers.Composite):
    """comb_iter_b: left op + right op (scopes `left`, `right`), combined by addition.

    Its config nests the configs of its op and drop-path layers (a Cell rebuilds its blocks from
    the genotype instead)."""

    def __init__(self, left, right, left_drop, right_drop, left_input, right_input, channels,
                 **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.left, self.right = left, right
        self.left_drop, self.right_drop = left_drop, right_drop
        self.left_input, self.right_input = int(left_input), int(right_input)

    def get_config(self):
        nested = {k: None if layer is None else keras.saving.serialize_keras_object(layer)
                  for k, layer in (("left", self.left), ("right", self.right),
                                   ("left_drop", self.left_drop), ("right_drop", self.right_drop))}
        return {**super().get_config(), **nested, "left_input": self.left_input,
                "right_input": self.right_input, "channels": self.channels}

    @classmethod
    def decode_config(cls, config):
        for key in ("left", "right", "left_drop", "right_drop"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return super().decode_config(config)

    def build_children(self, in_channels):
        layers.build_child(self.left, self.channels)     # every state has the cell's filters
        layers.build_child(self.right, self.channels)

    def call(self, states, training=None):
        h1 = self.left(states[self.left_input], training=training)
        if self.left_drop is not None:
            h1 = self.left_drop(h1, training=training)
        h2 = self.right(states[self.right_input], training=training)
        if self.right_drop is not None:
            h2 = self.right_drop(h2, training=training)
        return h1 + h2


@register
class Cell(layers.Composite):
    """Official NASBaseCell for `operations` / `hiddenstate_indices`.

    net_channels / prev_channels: channel counts of the two inputs (known from the architecture,
    so every sublayer exists at construction and the official variable map is static).
    """

    def __init__(self, operations, hiddenstate_indices, filters, stride, net_channels,
                 prev_channels, cell_num, total_num_cells, options=None, step_ref=None, **kwargs):
        super().__init__(**kwargs)
        self.operations = tuple(operations)
        self.hiddenstate_indices = tuple(int(i) for i in hiddenstate_indices)
        self.filters, self.stride = int(filters), int(stride)
        self.cell_num, self.total_num_cells = int(cell_num), int(total_num_cells)
        self.net_channels, self.prev_channels = int(net_channels), int(prev_channels)
        self.options = options
        wd = float(getattr(options, "weight_decay", 0.0))
        keep = float(getattr(options, "drop_path_keep_prob", 1.0))
        if not getattr(options, "fine_tune_batch_norm", True):
            keep = 1.0   # official: hnasnet gets is_training = is_training and fine_tune_batch_norm
        total_steps = int(getattr(options, "total_training_steps", 500000))
        self.step_ref = step_ref or StepRef()

        self.has_prev_1x1 = int(prev_channels) != self.filters
        if self.has_prev_1x1:
            self.prev_1x1 = layers.conv(self.filters, 1, weight_decay=wd, name="prev_1x1")
            self.prev_bn = layers.batch_norm(options, name="prev_bn")
        self.conv_1x1 = layers.conv(self.filters, 1, weight_decay=wd, name="1x1")
        self.beginning_bn = layers.batch_norm(options, name="beginning_bn")

        self.blocks = []
        for b in range(len(self.operations) // 2):
            ops, drops = [], []
            for side, k in (("left", 2 * b), ("right", 2 * b + 1)):
                name, idx = self.operations[k], self.hiddenstate_indices[k]
                op_stride = self.stride if idx < 2 else 1
                ops.append(op_table.make_op(name, self.filters, stride=op_stride,
                                              input_filters=self.filters, weight_decay=wd,
                                              options=options, name=side))
                drops.append(None if name == "skip_connect" else ScheduledDropPath(
                    keep, cell_num, total_num_cells, total_steps, self.step_ref,
                    layer_id=self.cell_num * 64 + k, name=f"{side}_drop_path"))
            self.blocks.append(Block(ops[0], ops[1], drops[0], drops[1],
                                     self.hiddenstate_indices[2 * b],
                                     self.hiddenstate_indices[2 * b + 1], self.filters,
                                     name=f"comb_iter_{b}"))

    def get_config(self):
        return {**super().get_config(), "operations": list(self.operations),
                "hiddenstate_indices": list(self.hiddenstate_indices), "filters": self.filters,
                "stride": self.stride, "net_channels": self.net_channels,
                "prev_channels": self.prev_channels, "cell_num": self.cell_num,
                "total_num_cells": self.total_num_cells, "options": options_to_config(self.options)}

    @property
    def output_channels(self):
        return self.filters * len(self.blocks)

    def build_children(self, in_channels):
        if self.has_prev_1x1:
            layers.build_child(self.prev_1x1, self.prev_channels)
            layers.build_child(self.prev_bn, self.filters)
        layers.build_child(self.conv_1x1, self.net_channels)
        layers.build_child(self.beginning_bn, self.filters)
        for block in self.blocks:
            layers.build_child(block, self.filters)

    def call(self, net, prev_layer, training=None):
        net_hw = tuple(net.shape[1:3])
        prev_hw = tuple(prev_layer.shape[1:3])
        if None in net_hw or None in prev_hw or net_hw != prev_hw:
            # Static sizes that differ (official rule), or unknown sizes: resizing to the same
            # size with align_corners is the identity, so dynamic graphs compute the same values.
            prev_layer = layers.resize_bilinear(prev_layer, resize.spatial_size(net))
        if self.has_prev_1x1:
            prev_layer = self.prev_bn(self.prev_1x1(tf.nn.relu(prev_layer)), training=training)
        h0 = self.beginning_bn(self.conv_1x1(tf.nn.relu(net)), training=training)
        states = [h0, prev_layer]
        for block in self.blocks:
            states.append(block(states, training=training))
        return tf.concat(states[2:], axis=3)
