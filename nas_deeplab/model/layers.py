"""Leaf layers with the official arg scopes, and the stateless conv primitives they run.

The official graph is TF1/slim: no biases in the backbone, weights initialised with
`variance_scaling_initializer(1/3, FAN_IN, uniform)`, slim `l2_regularizer(wd)` (= wd * sum(w^2) / 2,
hence Keras `L2(wd / 2)`), BN decay 0.9997 and epsilon 1e-3 (1e-5 in the ASPP/decoder heads).
Each layer stores its kernels under the official leaf names (`weights`, `depthwise_weights`,
`pointwise_weights`, `biases`), so `official/names.py` only has to add the scope prefixes.

Every conv-like layer records the static shapes of its last call (`last_input_shape`,
`last_output_shape`); `summary.py` reads them to count multiply-adds and print the layer table.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from nas_deeplab import resize
from nas_deeplab.model import dilated_conv, serialization
from nas_deeplab.model.serialization import register

BN_MOMENTUM = 0.9997          # slim batch_norm decay (feature_extractor / model.py)
BACKBONE_BN_EPSILON = 1e-3    # nas_arg_scope
HEAD_BN_EPSILON = 1e-5        # model.py get_batch_norm_params


# -- initialisers and regularisers (official arg scopes) ---------------------------------------
def backbone_initializer():
    """nas_arg_scope: variance_scaling_initializer(factor=1/3, mode='FAN_IN', uniform=True)."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def head_conv_initializer():
    """model.py's ASPP/decoder conv arg scope sets no initializer: slim's default xavier (uniform)."""
    return keras.initializers.GlorotUniform()


def slim_l2(weight_decay):
    """slim.l2_regularizer(wd) == wd * sum(w**2) / 2 == keras L2(wd / 2); None when wd is 0."""
    return keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None


# -- stateless primitives ----------------------------------------------------------------------
def resize_bilinear(x, size):
    """align_corners bilinear resize that keeps x's dtype (TF's kernel returns float32; the
    official utils.resize_bilinear casts back too, which mixed precision needs)."""
    return tf.cast(resize.resize_bilinear(x, size), x.dtype)


def upsample_2x(x):
    """Official inter-cell upsampling to (d-1)*2+1, keeping x's dtype."""
    return tf.cast(resize.upsample_2x(x), x.dtype)


def conv2d_same(x, kernel, stride=1, rate=1):
    """resnet_utils.conv2d_same: SAME when stride 1, else explicit fixed padding then VALID."""
    k = kernel.shape[0]
    if stride == 1 and dilated_conv.needs_float32_filter_gradient(x, rate):
        return dilated_conv.conv2d(x, kernel, rate)   # TF's bf16 filter gradient can segfault
    if stride == 1:
        return tf.nn.conv2d(x, kernel, strides=1, padding="SAME", dilations=rate)
    x = resize.fixed_padding(x, k, rate)
    return tf.nn.conv2d(x, kernel, strides=stride, padding="VALID", dilations=rate)


def separable_conv2d_same(x, depthwise_kernel, pointwise_kernel, stride=1, rate=1):
    """xception.separable_conv2d_same (regularize_depthwise=True): ONE slim separable conv, no
    BN/ReLU between depthwise and pointwise; fixed padding + VALID when strided."""
    k = depthwise_kernel.shape[0]
    if stride == 1:
        return tf.nn.separable_conv2d(x, depthwise_kernel, pointwise_kernel, strides=[1, 1, 1, 1],
                                      padding="SAME", dilations=[rate, rate])
    x = resize.fixed_padding(x, k, rate)
    return tf.nn.separable_conv2d(x, depthwise_kernel, pointwise_kernel,
                                  strides=[1, stride, stride, 1], padding="VALID",
                                  dilations=[rate, rate])


def depthwise_conv2d_same(x, depthwise_kernel, rate=1):
    """slim.separable_conv2d(num_outputs=None) as used by utils.split_separable_conv2d (SAME)."""
    return tf.nn.depthwise_conv2d(x, depthwise_kernel, strides=[1, 1, 1, 1], padding="SAME",
                                  dilations=[rate, rate])


# -- layers ------------------------------------------------------------------------------------
def _channels_of(shape):
    """Last dimension of a single shape, or None (unknown, or a list of shapes)."""
    if shape is None or not isinstance(shape, (tuple, list, tf.TensorShape)) or len(shape) == 0:
        return None
    last = shape[-1]
    if isinstance(last, (tuple, list, tf.TensorShape)):
        return None
    return None if last is None else int(last)


def build_child(layer, channels):
    """Create a sublayer's weights for an input with `channels` channels (no tracing)."""
    if not layer.built:
        layer.build((None, None, None, int(channels)))


@register
class Composite(keras.layers.Layer):
    """A layer made of sublayers whose weights are created from channel counts alone.

    Keras 3 otherwise "builds by running" call() symbolically, and that nests: a 12-cell model
    would be traced dozens of times. Here build() only needs the input channels (from the shape
    Keras passes, or the count known at construction) and calls `build_children(channels)`; so
    `model.build(...)` creates all variables in about a second, without any forward pass.

    Serialisation: a subclass's `get_config` holds its constructor arguments as plain data and
    `decode_config` turns them back (options here); `from_config` then runs the constructor, which
    recreates the sublayers, and the build config is just the input channel count."""

    def build(self, *args, **kwargs):
        shape = args[0] if args else (next(iter(kwargs.values())) if kwargs else None)
        self._build_in_channels = _channels_of(shape)
        self.build_children(self._build_in_channels)

    def build_children(self, in_channels):
        """Build the sublayers; `in_channels` may be None (use the count known at construction)."""

    def get_build_config(self):
        """The input channel count is all a composite's build needs (not Keras' nested shapes)."""
        if not self.built:
            return None
        return {"in_channels": getattr(self, "_build_in_channels", None)}

    def build_from_config(self, config):
        channels = (config or {}).get("in_channels")
        self.build(None if channels is None else (None, None, None, int(channels)))

    @classmethod
    def decode_config(cls, config: dict) -> dict:
        """Constructor arguments from the plain data of `get_config` (subclasses extend it)."""
        if "options" in config:
            config["options"] = serialization.options_from_config(config["options"])
        return config

    @classmethod
    def from_config(cls, config):
        config = cls.decode_config(dict(config))
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.get(config["dtype"])
        # Sublayers are created by the constructor: give them this layer's dtype policy.
        with serialization.construction_policy(config):
            return cls(**config)


_INPUT_OBSERVERS = []


@contextlib.contextmanager
def observe_inputs(observer):
    """Within the block, every conv layer call runs observer(layer, inputs) first (export calibration,
    export/rounding.py; eager calls see the values, traced ones symbolic tensors)."""
    _INPUT_OBSERVERS.append(observer)
    try:
        yield
    finally:
        _INPUT_OBSERVERS.remove(observer)


class _Recorded(keras.layers.Layer):
    """Remembers the static shapes of the last call (for multiply-add counting).

    Its subclasses serialise their initialiser and regulariser as Keras configs."""

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("kernel_initializer"), dict):
            config["kernel_initializer"] = keras.initializers.get(config["kernel_initializer"])
        if isinstance(config.get("kernel_regularizer"), dict):
            config["kernel_regularizer"] = keras.regularizers.get(config["kernel_regularizer"])
        return super().from_config(config)

    last_input_shape = None
    last_output_shape = None

    def _record(self, x, y):
        for observer in _INPUT_OBSERVERS:
            observer(self, x)
        # object.__setattr__: plain Python attributes, invisible to Keras/TF object tracking.
        object.__setattr__(self, "last_input_shape", tuple(x.shape))
        object.__setattr__(self, "last_output_shape", tuple(y.shape))
        return y


@register
class Conv2D(_Recorded):
    """slim.conv2d / resnet_utils.conv2d_same with variable `weights` (and `biases` if use_bias)."""

    def __init__(self, filters, kernel_size, stride=1, rate=1, use_bias=False,
                 kernel_initializer=None, kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = int(filters), int(kernel_size)
        self.stride, self.rate, self.use_bias = int(stride), int(rate), bool(use_bias)
        self.kernel_initializer = kernel_initializer or backbone_initializer()
        self.kernel_regularizer = kernel_regularizer

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "stride": self.stride, "rate": self.rate, "use_bias": self.use_bias,
                "kernel_initializer": serialization.serialize_initializer(self.kernel_initializer),
                "kernel_regularizer": serialization.serialize_regularizer(self.kernel_regularizer)}

    def build(self, input_shape):
        k = self.kernel_size
        self.kernel = self.add_weight(name="weights", shape=(k, k, int(input_shape[-1]), self.filters),
                                      initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer)
        self.bias = (self.add_weight(name="biases", shape=(self.filters,), initializer="zeros")
                     if self.use_bias else None)

    def call(self, x):
        y = conv2d_same(x, self.kernel, self.stride, self.rate)
        if self.bias is not None:
            y = tf.nn.bias_add(y, self.bias)
        return self._record(x, y)

    def multiply_adds(self):
        _, h, w, c_out = self.last_output_shape
        return int(h) * int(w) * self.kernel_size ** 2 * int(self.last_input_shape[-1]) * int(c_out)


@register
class SeparableConv2D(_Recorded):
    """slim.separable_conv2d with num_outputs: `depthwise_weights` [K,K,C,1] and
    `pointwise_weights` [1,1,C,out] in one layer, both initialised and regularised alike."""

    def __init__(self, filters, kernel_size, stride=1, rate=1, kernel_initializer=None,
                 kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = int(filters), int(kernel_size)
        self.stride, self.rate = int(stride), int(rate)
        self.kernel_initializer = kernel_initializer or backbone_initializer()
        self.kernel_regularizer = kernel_regularizer

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "stride": self.stride, "rate": self.rate,
                "kernel_initializer": serialization.serialize_initializer(self.kernel_initializer),
                "kernel_regularizer": serialization.serialize_regularizer(self.kernel_regularizer)}

    def build(self, input_shape):
        k, c = self.kernel_size, int(input_shape[-1])
        self.depthwise_kernel = self.add_weight(
            name="depthwise_weights", shape=(k, k, c, 1), initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer)
        self.pointwise_kernel = self.add_weight(
            name="pointwise_weights", shape=(1, 1, c, self.filters),
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer)

    def call(self, x):
        y = separable_conv2d_same(x, self.depthwise_kernel, self.pointwise_kernel, self.stride,
                                  self.rate)
        return self._record(x, y)

    def multiply_adds(self):
        _, h, w, c_out = self.last_output_shape
        c_in = int(self.last_input_shape[-1])
        hw = int(h) * int(w)
        return hw * self.kernel_size ** 2 * c_in + hw * c_in * int(c_out)


@register
class DepthwiseConv2D(_Recorded):
    """The `_depthwise` half of utils.split_separable_conv2d: `depthwise_weights` [K,K,C,1],
    truncated_normal(0.33) init, no regulariser."""

    def __init__(self, kernel_size=3, rate=1, stddev=0.33, kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size, self.rate = int(kernel_size), int(rate)
        self.stddev = float(stddev)
        self.kernel_initializer = keras.initializers.TruncatedNormal(stddev=stddev)
        self.kernel_regularizer = kernel_regularizer

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "rate": self.rate,
                "stddev": self.stddev,
                "kernel_regularizer": serialization.serialize_regularizer(self.kernel_regularizer)}

    def build(self, input_shape):
        k = self.kernel_size
        self.depthwise_kernel = self.add_weight(
            name="depthwise_weights", shape=(k, k, int(input_shape[-1]), 1),
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer)

    def call(self, x):
        return self._record(x, depthwise_conv2d_same(x, self.depthwise_kernel, self.rate))

    def multiply_adds(self):
        _, h, w, c = self.last_output_shape
        return int(h) * int(w) * self.kernel_size ** 2 * int(c)


@register
class BatchNorm(keras.layers.BatchNormalization):
    """slim.batch_norm(scale=True): gamma, beta, moving_mean, moving_variance.

    Runs the fused kernel, as slim does for NHWC inputs (`fused=None` means fused when possible):
    one op per BN in the graph, and the moving variance is updated with the kernel's Bessel-
    corrected batch variance, like the official graph (Keras' own path uses the biased one). The
    fused kernel clamps epsilon to >= 1.001e-5 (cuDNN), as TF1 did for the heads' 1e-5.
    `synchronized=True` (sync BN across replicas) all-reduces the moments over the replicas (one
    all-reduce of sum, sum of squares and count) and updates the moving variance with the same
    Bessel-corrected variance, so one replica and several keep the same moving statistics.

    `use_batch_stats=False` is the official `fine_tune_batch_norm=False`: the layer normalises with
    its moving statistics (and does not update them) even when the model is called with
    training=True, while gamma/beta stay trainable as in the official graph.
    """

    # Set by export/bn_folding.py (serving copies only): the conv before this BN holds
    # gamma / sqrt(var + eps), `beta` the folded bias; the layer is then a bias add.
    folded = False

    def __init__(self, epsilon=BACKBONE_BN_EPSILON, momentum=BN_MOMENTUM, synchronized=False,
                 use_batch_stats=True, **kwargs):
        super().__init__(momentum=momentum, epsilon=epsilon, center=True, scale=True,
                         synchronized=synchronized, **kwargs)
        self.use_batch_stats = bool(use_batch_stats)

    def get_config(self):
        config = super().get_config()
        for fixed in ("center", "scale"):    # always True: slim.batch_norm(scale=True)
            config.pop(fixed, None)
        return {**config, "use_batch_stats": self.use_batch_stats}

    def call(self, inputs, training=None, mask=None):
        if self.folded:
            return tf.nn.bias_add(inputs, tf.cast(self.beta, inputs.dtype))
        training = bool(training) and self.use_batch_stats and self.trainable
        if mask is not None or len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return super().call(inputs, training=training, mask=mask)
        x = inputs if inputs.dtype in (tf.float16, tf.bfloat16, tf.float32) else \
            tf.cast(inputs, tf.float32)
        gamma = tf.cast(self.gamma, tf.float32)
        beta = tf.cast(self.beta, tf.float32)
        if training and self.synchronized:
            return self._synchronized_call(x, gamma, beta)
        if training:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, is_training=True)
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
            self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
                is_training=False)
        return tf.cast(y, self.compute_dtype)

    def _synchronized_call(self, x, gamma, beta):
        """Batch statistics over all replicas' examples; the moving variance gets the unbiased one."""
        x32 = tf.cast(x, tf.float32)
        local = tf.concat([tf.reduce_sum(x32, [0, 1, 2]), tf.reduce_sum(tf.square(x32), [0, 1, 2]),
                           tf.cast(tf.reshape(tf.reduce_prod(tf.shape(x32)[:3]), [1]), tf.float32)], 0)
        ctx = tf.distribute.get_replica_context()
        total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local) if ctx is not None else local
        c = x32.shape[-1]
        count = total[2 * c]
        mean = total[:c] / count
        variance = tf.maximum(total[c:2 * c] / count - tf.square(mean), 0.0)
        y = tf.nn.batch_normalization(x32, mean, variance, beta, gamma, self.epsilon)
        m = self.momentum
        unbiased = variance * count / tf.maximum(count - 1.0, 1.0)
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + unbiased * (1.0 - m))
        return tf.cast(y, self.compute_dtype)


def batch_norm(options_or_none=None, head=False, **kwargs):
    """BN with the project's options (sync BN, fine_tune_batch_norm); epsilon by position."""
    sync = bool(getattr(options_or_none, "sync_batch_norm", False))
    use_batch_stats = bool(getattr(options_or_none, "fine_tune_batch_norm", True))
    eps = HEAD_BN_EPSILON if head else BACKBONE_BN_EPSILON
    return BatchNorm(epsilon=eps, synchronized=sync, use_batch_stats=use_batch_stats, **kwargs)


def conv(filters, kernel_size, stride=1, rate=1, weight_decay=0.0, **kwargs):
    """A backbone conv with the nas_arg_scope (no bias, VS(1/3) init, slim L2)."""
    return Conv2D(filters, kernel_size, stride=stride, rate=rate,
                  kernel_initializer=backbone_initializer(),
                  kernel_regularizer=slim_l2(weight_decay), **kwargs)


def separable_conv(filters, kernel_size, stride=1, weight_decay=0.0, **kwargs):
    """A backbone separable conv (xception.separable_conv2d_same, regularize_depthwise=True)."""
    return SeparableConv2D(filters, kernel_size, stride=stride,
                           kernel_initializer=backbone_initializer(),
                           kernel_regularizer=slim_l2(weight_decay), **kwargs)
