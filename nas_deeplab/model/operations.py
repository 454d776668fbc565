"""THE candidate-operation table, shared by the final network and the search supernet.

What is searched is what is trained: `OPS[name]` builds the Keras layer for every name of
`architecture.OP_VOCABULARY` except `zero` with the official `NASBaseCell._apply_conv_operation`
semantics (research/deeplab/core/nas_cell.py):

* `separable_KxK_2`: two stacked [ReLU -> SeparableConv(K) -> BN], the stride on the first only;
  scopes `separable_KxK_{1,2}` / `bn_sep_KxK_{1,2}`.
* `atrous_KxK`: ReLU -> (stride 2: bilinear align_corners resize to scale_dimension(d, 0.5), then a
  KxK conv rate 1 | stride 1: KxK conv dilation 2, SAME) -> BN; scopes `atrous_KxK` / `bn_atr_KxK`.
* `avg_pool_3x3` / `max_pool_3x3`: 3x3 pool, SAME, with the stride; 1x1 conv `1x1` + BN `bn_1` only
  when the channel count changes (no ReLU first).
* `skip_connect` (official `none`): identity, or ReLU -> 1x1 conv (with the stride) `1x1` -> BN `bn_1`
  when it must stride or change channels.

Drop path is NOT part of an op: the cell applies it after every op except `skip_connect`.

Stateless primitives (the exact math of the layers, for the vectorised supernet; no ReLU, no BN):

* `separable_conv(x, depthwise_kernel, pointwise_kernel, stride)`: depthwise [K,K,C,1] then
  pointwise [1,1,C,O] in one op; SAME when stride 1, fixed padding + VALID when strided.
* `atrous_conv(x, kernel, stride)`: the atrous op's conv ([K,K,C,O] kernel) incl. the stride-2 resize.
* `pool(x, kind, stride)`: kind 'avg' | 'max', 3x3, SAME (avg excludes padding, as TF/slim).
* `conv2d_same(x, kernel, stride, rate)`: resnet_utils.conv2d_same (used for the 1x1s).
* `op_kernel_size(name)`, `op_num_layers(name)`: K and N parsed like the official code.
"""

from __future__ import annotations

import tensorflow as tf

from nas_deeplab import resize
from nas_deeplab.architecture import OP_VOCABULARY, ZERO_OP
from nas_deeplab.model import layers
from nas_deeplab.model.layers import conv2d_same  # noqa: F401  (re-exported primitive)
from nas_deeplab.model.serialization import options_to_config, register


# -- stateless primitives ----------------------------------------------------------------------
def op_kernel_size(name: str) -> int:
    """Official `int(operation.split('x')[0][-1])`."""
    return int(name.split("x")[0][-1])


def op_num_layers(name: str) -> int:
    """Official `int(operation.split('_')[-1])` for separable ops."""
    return int(name.split("_")[-1])


def separable_conv(x, depthwise_kernel, pointwise_kernel, stride=1):
    return layers.separable_conv2d_same(x, depthwise_kernel, pointwise_kernel, stride=stride)


def atrous_conv(x, kernel, stride=1):
    if stride == 2:
        h, w = resize.spatial_size(x)
        x = layers.resize_bilinear(x, (resize.scale_dimension(h, 0.5),
                                       resize.scale_dimension(w, 0.5)))
        return conv2d_same(x, kernel, stride=1, rate=1)
    if stride != 1:
        raise ValueError(f"atrous ops support stride 1 or 2, got {stride}")
    return conv2d_same(x, kernel, stride=1, rate=2)


def pool(x, kind, stride=1):
    if kind == "avg":
        return tf.nn.avg_pool2d(x, ksize=3, strides=stride, padding="SAME")
    if kind == "max":
        return tf.nn.max_pool2d(x, ksize=3, strides=stride, padding="SAME")
    raise ValueError(f"pool kind must be 'avg' or 'max', got {kind!r}")


# -- op layers ---------------------------------------------------------------------------------
@register
class SeparableOp(layers.Composite):
    """separable_KxK_N: N x [ReLU -> separable conv -> BN], stride on the first layer only."""

    def __init__(self, filters, kernel_size, num_layers, stride=1, weight_decay=0.0, options=None,
                 input_filters=None, **kwargs):
        super().__init__(**kwargs)
        k = int(kernel_size)
        self.kernel_size, self.stride = k, int(stride)
        self.filters = int(filters)
        self.input_filters = int(filters if input_filters is None else input_filters)
        self.num_layers, self.weight_decay, self.options = int(num_layers), float(weight_decay), options
        self.convs, self.bns = [], []
        for n in range(1, int(num_layers) + 1):
            self.convs.append(layers.separable_conv(filters, k, stride=stride if n == 1 else 1,
                                                    weight_decay=weight_decay,
                                                    name=f"separable_{k}x{k}_{n}"))
            self.bns.append(layers.batch_norm(options, name=f"bn_sep_{k}x{k}_{n}"))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "num_layers": self.num_layers, "stride": self.stride,
                "weight_decay": self.weight_decay, "options": options_to_config(self.options),
                "input_filters": self.input_filters}

    def build_children(self, in_channels):
        c = in_channels or self.input_filters
        for conv, bn in zip(self.convs, self.bns):
            layers.build_child(conv, c)
            layers.build_child(bn, self.filters)
            c = self.filters

    def call(self, x, training=None):
        for conv, bn in zip(self.convs, self.bns):
            x = bn(conv(tf.nn.relu(x)), training=training)
        return x


@register
class AtrousOp(layers.Composite):
    """atrous_KxK: ReLU -> (resize + KxK conv | KxK conv rate 2) -> BN."""

    def __init__(self, filters, kernel_size, stride=1, weight_decay=0.0, options=None,
                 input_filters=None, **kwargs):
        super().__init__(**kwargs)
        k = int(kernel_size)
        self.filters = int(filters)
        self.input_filters = int(filters if input_filters is None else input_filters)
        if stride not in (1, 2):
            raise ValueError(f"atrous_{k}x{k}: stride must be 1 or 2, got {stride}")
        self.kernel_size, self.stride = k, int(stride)
        self.weight_decay, self.options = float(weight_decay), options
        # The conv itself is stride 1; for stride 2 the resize happens before it (see call).
        self.conv = layers.conv(filters, k, stride=1, rate=1 if stride == 2 else 2,
                                weight_decay=weight_decay, name=f"atrous_{k}x{k}")
        self.bn = layers.batch_norm(options, name=f"bn_atr_{k}x{k}")

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "stride": self.stride, "weight_decay": self.weight_decay,
                "options": options_to_config(self.options), "input_filters": self.input_filters}

    def build_children(self, in_channels):
        layers.build_child(self.conv, in_channels or self.input_filters)
        layers.build_child(self.bn, self.filters)

    def call(self, x, training=None):
        x = tf.nn.relu(x)
        if self.stride == 2:
            h, w = resize.spatial_size(x)
            x = layers.resize_bilinear(x, (resize.scale_dimension(h, 0.5),
                                           resize.scale_dimension(w, 0.5)))
        return self.bn(self.conv(x), training=training)


class _ProjectingOp(layers.Composite):
    """An op that needs a 1x1 conv ('1x1') + BN ('bn_1') only in some configurations."""

    def _make_projection(self, filters, input_filters, project, stride=1, weight_decay=0.0,
                         options=None):
        self.filters, self.input_filters = int(filters), int(input_filters)
        self.weight_decay, self.options = float(weight_decay), options
        self.project = project
        if project:
            # slim.conv2d(stride, SAME); for a 1x1 kernel SAME pads nothing, like fixed padding.
            self.conv = layers.conv(filters, 1, stride=stride, weight_decay=weight_decay, name="1x1")
            self.bn = layers.batch_norm(options, name="bn_1")

    def build_children(self, in_channels):
        if self.project:
            layers.build_child(self.conv, in_channels or self.input_filters)
            layers.build_child(self.bn, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "input_filters": self.input_filters,
                "stride": self.stride, "weight_decay": self.weight_decay,
                "options": options_to_config(self.options)}


@register
class PoolOp(_ProjectingOp):
    """avg/max_pool_3x3: pool (SAME, stride); 1x1 conv + BN only when channels differ."""

    def __init__(self, kind, filters, input_filters, stride=1, weight_decay=0.0, options=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.kind, self.stride = kind, int(stride)
        self._make_projection(filters, input_filters, int(input_filters) != int(filters),
                              weight_decay=weight_decay, options=options)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}

    def call(self, x, training=None):
        x = pool(x, self.kind, self.stride)
        if self.project:
            x = self.bn(self.conv(x), training=training)
        return x


@register
class SkipOp(_ProjectingOp):
    """skip_connect == official 'none': identity, or ReLU -> 1x1 (stride) -> BN when it must
    stride or change channels."""

    def __init__(self, filters, input_filters, stride=1, weight_decay=0.0, options=None, **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)
        self._make_projection(filters, input_filters,
                              self.stride > 1 or int(input_filters) != int(filters),
                              stride=self.stride, weight_decay=weight_decay, options=options)

    def call(self, x, training=None):
        if not self.project:
            return x
        return self.bn(self.conv(tf.nn.relu(x)), training=training)


def _separable(op_name):
    def build(filters, stride=1, input_filters=None, weight_decay=0.0, options=None, **kwargs):
        return SeparableOp(filters, op_kernel_size(op_name), op_num_layers(op_name), stride=stride,
                           weight_decay=weight_decay, options=options,
                           input_filters=input_filters, **kwargs)
    return build


def _atrous(op_name):
    def build(filters, stride=1, input_filters=None, weight_decay=0.0, options=None, **kwargs):
        return AtrousOp(filters, op_kernel_size(op_name), stride=stride, weight_decay=weight_decay,
                        options=options, input_filters=input_filters, **kwargs)
    return build


def _pool(kind):
    def build(filters, stride=1, input_filters=None, weight_decay=0.0, options=None, **kwargs):
        return PoolOp(kind, filters, filters if input_filters is None else input_filters,
                      stride=stride, weight_decay=weight_decay, options=options, **kwargs)
    return build


def _skip(filters, stride=1, input_filters=None, weight_decay=0.0, options=None, **kwargs):
    return SkipOp(filters, filters if input_filters is None else input_filters, stride=stride,
                  weight_decay=weight_decay, options=options, **kwargs)


# name -> builder(filters, stride=1, input_filters=None, weight_decay=0.0, options=None, name=...)
OPS = {
    "separable_3x3_2": _separable("separable_3x3_2"),
    "separable_5x5_2": _separable("separable_5x5_2"),
    "atrous_3x3": _atrous("atrous_3x3"),
    "atrous_5x5": _atrous("atrous_5x5"),
    "avg_pool_3x3": _pool("avg"),
    "max_pool_3x3": _pool("max"),
    "skip_connect": _skip,
}
assert set(OPS) == set(OP_VOCABULARY) - {ZERO_OP}


def make_op(op_name, filters, stride=1, input_filters=None, weight_decay=0.0, options=None,
            **kwargs):
    """The Keras layer for candidate `op_name` (options: ModelOptions for BN sync / fine-tuning;
    kwargs such as the layer `name` go to the layer)."""
    if op_name == ZERO_OP:
        raise ValueError("'zero' is a search-only candidate with no layer; the supernet handles it")
    if op_name not in OPS:
        raise ValueError(f"unknown operation {op_name!r}; known: {sorted(OPS)}")
    return OPS[op_name](filters, stride=stride, input_filters=input_filters, weight_decay=weight_decay,
                     options=options, **kwargs)
