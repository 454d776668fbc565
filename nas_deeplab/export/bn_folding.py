"""Fold every inference BatchNorm into the convolution before it (export only).

Every BN of the network directly follows a convolution in the same layer (official order ReLU -> conv
-> BN in the cells, conv -> BN -> ReLU in the stem and heads): with the fused kernel's inference
formula y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta, and s = gamma / sqrt(var + eps)
per output channel,

    y = conv_{w * s}(x) + (beta - mean * s)

so the kernel is scaled along its output channels (a separable conv's pointwise kernel; a head's
depthwise kernel [K, K, C, 1] along C) and the BN becomes a bias add. `eps` is the epsilon the fused
kernel really uses (TF clamps it to >= 1.001e-5, so the heads' 1e-5 counts as 1.001e-5).

The values are computed in float64 from the float32 weights and can be applied to a copy of the
model built under another dtype policy (`apply`), so a 16-bit export rounds the folded kernel once
instead of rounding gamma, the variance and the kernel separately.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from nas_deeplab.model import layers

# tf.compat.v1.nn.fused_batch_norm: `min_epsilon = 1.001e-5; epsilon = max(epsilon, min_epsilon)`.
FUSED_MIN_EPSILON = 1.001e-5


class FoldingError(ValueError):
    """The model has a BatchNorm that does not directly follow a convolution of its layer."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """One conv -> BN pair: the kernel variable and the axis of its output channels."""

    kernel: object          # keras.Variable
    channel_axis: int       # 3 for conv / pointwise kernels [K,K,C,O]; 2 for depthwise [K,K,C,1]
    bn: layers.BatchNorm


def conv_bn_pairs(model) -> list[Pair]:
    """Every (conv kernel, BN) pair of a DeepLab model, in layer order; FoldingError if some BN of the
    model is not in one (a structure this module does not know: nothing may be folded then)."""
    from nas_deeplab.model import backbone, cell, heads, operations  # noqa: PLC0415
    pairs = []

    def add(conv, bn):
        if isinstance(conv, layers.SeparableConv2D):
            pairs.append(Pair(conv.pointwise_kernel, 3, bn))
        elif isinstance(conv, layers.DepthwiseConv2D):
            pairs.append(Pair(conv.depthwise_kernel, 2, bn))
        elif isinstance(conv, layers.Conv2D) and not conv.use_bias:
            pairs.append(Pair(conv.kernel, 3, bn))
        else:
            raise FoldingError(f"cannot fold {bn.path} into {conv.path} ({type(conv).__name__})")

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, backbone.HNASNet):
            for conv, bn in ((layer.conv0, layer.conv0_bn), (layer.conv1, layer.conv1_bn),
                             (layer.conv2, layer.conv2_bn)):
                add(conv, bn)
        elif isinstance(layer, cell.Cell):
            if layer.has_prev_1x1:
                add(layer.prev_1x1, layer.prev_bn)
            add(layer.conv_1x1, layer.beginning_bn)
        elif isinstance(layer, operations.SeparableOp):
            for conv, bn in zip(layer.convs, layer.bns):
                add(conv, bn)
        elif isinstance(layer, (operations.AtrousOp, heads.ConvBNReLU, heads.DepthwiseBNReLU)):
            add(layer.conv, layer.bn)
        elif isinstance(layer, operations._ProjectingOp) and layer.project:
            add(layer.conv, layer.bn)
    all_bns = [l for l in model._flatten_layers(include_self=False, recursive=True)
               if isinstance(l, layers.BatchNorm)]
    paired = {id(p.bn) for p in pairs}
    if len(paired) != len(pairs):
        raise FoldingError("a BatchNorm was paired twice")
    unpaired = [bn.path for bn in all_bns if id(bn) not in paired]
    if unpaired:
        raise FoldingError(f"{len(unpaired)} BatchNorm layers follow no known conv ({unpaired[:3]}); "
                           "export with --nofold_batch_norm")
    return pairs


@dataclasses.dataclass
class FoldedValues:
    """The folded weights of a model: {kernel path: kernel}, {BN path: bias}, both float32 numpy."""

    kernels: dict
    biases: dict

    def __len__(self):
        return len(self.biases)


def folded_values(model) -> FoldedValues:
    """The folded kernels and biases of `model` (its current float32 weights; nothing assigned)."""
    kernels, biases = {}, {}
    for p in conv_bn_pairs(model):
        bn = p.bn
        if bn.folded:
            raise FoldingError(f"{bn.path} is folded already")
        gamma = np.asarray(bn.gamma.numpy(), np.float64)
        beta = np.asarray(bn.beta.numpy(), np.float64)
        mean = np.asarray(bn.moving_mean.numpy(), np.float64)
        var = np.asarray(bn.moving_variance.numpy(), np.float64)
        eps = max(float(bn.epsilon), FUSED_MIN_EPSILON)
        scale = gamma / np.sqrt(var + eps)
        kernel = np.asarray(p.kernel.numpy(), np.float64)
        shape = [1] * kernel.ndim
        shape[p.channel_axis] = -1
        if kernel.shape[p.channel_axis] != scale.shape[0]:
            raise FoldingError(f"{p.kernel.path}: {kernel.shape[p.channel_axis]} channels, "
                               f"{bn.path}: {scale.shape[0]}")
        kernels[p.kernel.path] = (kernel * scale.reshape(shape)).astype(np.float32)
        biases[bn.path] = (beta - mean * scale).astype(np.float32)
    return FoldedValues(kernels, biases)


def apply(model, values: FoldedValues) -> int:
    """Assign folded values to `model` (same structure and paths as the model they were computed
    from; any dtype policy: the values are cast to each variable's dtype) and turn its BNs into bias
    adds (`BatchNorm.folded`: the bias is stored in `beta`). Returns the number of BNs folded."""
    pairs = conv_bn_pairs(model)
    if {p.bn.path for p in pairs} != set(values.biases):
        raise FoldingError("the folded values were computed for another model")
    for p in pairs:
        p.kernel.assign(tf.cast(values.kernels[p.kernel.path], p.kernel.dtype))
        p.bn.beta.assign(tf.cast(values.biases[p.bn.path], p.bn.beta.dtype))
        p.bn.folded = True
    return len(pairs)


def fold(model) -> int:
    """Fold `model`'s BNs in place (see the module docstring); returns how many."""
    return apply(model, folded_values(model))


def unused_variables(model) -> list:
    """The variables a folded model no longer reads: gamma and the moving statistics of its folded BNs."""
    return [v for p in conv_bn_pairs(model) if p.bn.folded
            for v in (p.bn.gamma, p.bn.moving_mean, p.bn.moving_variance)]
