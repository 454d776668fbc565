"""The hnasnet backbone for any Architecture (official nas_network.py `_build_nas_base`).

Stem: conv0 (3x3/2, 64, explicit padding) -> BN -> ReLU -> conv1 (3x3, 64) -> BN [= cell_outputs[0]]
-> ReLU -> conv2 (3x3/2, 128, explicit padding) -> BN [= `Stem`]. Then one cell per backbone level:
a level one up strides (ops on h0/h1 stride 2, filters x2); one down upsamples `net` bilinearly to
(d-1)*2+1 BEFORE the cell (filters /2). Cell filters are F * 2**level. The output is ReLU(last cell).

Works with unknown (None) H/W: every size is taken from the tensor when not static, so a SavedModel
accepts any image size; at sizes known statically the graph is the official one.
"""

from __future__ import annotations

import tensorflow as tf

from nas_deeplab.architecture import Architecture
from nas_deeplab.model import layers
from nas_deeplab.model.cell import Cell
from nas_deeplab.model.drop_path import StepRef
from nas_deeplab.model.serialization import (arch_from_config, arch_to_config, options_to_config,
                                             register)

STEM_FILTERS = (64, 64, 128)


def layer_transitions(arch: Architecture):
    """[(stride, upsample_before)] per layer, the official per-cell rule."""
    out = []
    for i, level in enumerate(arch.backbone):
        prev = 0 if i == 0 else arch.backbone[i - 1]
        out.append((2 if level == prev + 1 else 1, level == prev - 1))
    return out


@register
class HNASNet(layers.Composite):
    """Backbone layer. Input: images already normalised to [-1, 1]. Output: end-point dict
    {'Stem', 'Cell_0'..'Cell_{L-1}' (pre-ReLU), 'features' (ReLU of the last cell)}."""

    def __init__(self, arch: Architecture, options=None, step_ref: StepRef | None = None,
                 name="hnasnet", **kwargs):
        super().__init__(name=name, **kwargs)
        self.arch, self.options = arch, options
        wd = float(getattr(options, "weight_decay", 0.0))
        self.step_ref = step_ref or StepRef()
        self.conv0 = layers.conv(STEM_FILTERS[0], 3, stride=2, weight_decay=wd, name="conv0")
        self.conv0_bn = layers.batch_norm(options, name="conv0_bn")
        self.conv1 = layers.conv(STEM_FILTERS[1], 3, stride=1, weight_decay=wd, name="conv1")
        self.conv1_bn = layers.batch_norm(options, name="conv1_bn")
        self.conv2 = layers.conv(STEM_FILTERS[2], 3, stride=2, weight_decay=wd, name="conv2")
        self.conv2_bn = layers.batch_norm(options, name="conv2_bn")

        self.transitions = layer_transitions(arch)
        channels = [STEM_FILTERS[1], STEM_FILTERS[2]]   # cell_outputs[-2], cell_outputs[-1]
        self.cells = []
        for i in range(arch.num_layers):
            stride, _ = self.transitions[i]
            cell = Cell(arch.operations, arch.hiddenstate_indices, arch.cell_filters(i), stride,
                        net_channels=channels[-1], prev_channels=channels[-2], cell_num=i,
                        total_num_cells=arch.num_layers, options=options, step_ref=self.step_ref,
                        name=f"cell_{i}")
            self.cells.append(cell)
            channels.append(cell.output_channels)
        self.output_channels = channels[-1]

    def get_config(self):
        return {**super().get_config(), "arch": arch_to_config(self.arch),
                "options": options_to_config(self.options)}

    @classmethod
    def decode_config(cls, config):
        config["arch"] = arch_from_config(config["arch"])
        return super().decode_config(config)

    def build_children(self, in_channels):
        c = 3
        for conv, bn in ((self.conv0, self.conv0_bn), (self.conv1, self.conv1_bn),
                         (self.conv2, self.conv2_bn)):
            layers.build_child(conv, c)
            layers.build_child(bn, conv.filters)
            c = conv.filters
        for cell in self.cells:
            layers.build_child(cell, cell.net_channels)

    def end_point_channels(self):
        """{'Stem': 128, 'Cell_i': ..., 'features': ...} without building anything."""
        out = {"Stem": STEM_FILTERS[2]}
        for i, cell in enumerate(self.cells):
            out[f"Cell_{i}"] = cell.output_channels
        out["features"] = self.output_channels
        return out

    def call(self, x, training=None):
        end_points = {}
        net = tf.nn.relu(self.conv0_bn(self.conv0(x), training=training))
        net = self.conv1_bn(self.conv1(net), training=training)
        cell_outputs = [net]
        net = self.conv2_bn(self.conv2(tf.nn.relu(net)), training=training)
        cell_outputs.append(net)
        end_points["Stem"] = net
        for i, cell in enumerate(self.cells):
            _, upsample = self.transitions[i]
            if upsample:
                net = layers.upsample_2x(net)
            net = cell(net, cell_outputs[-2], training=training)
            cell_outputs.append(net)
            end_points[f"Cell_{i}"] = net
        end_points["features"] = tf.nn.relu(net)
        return end_points
