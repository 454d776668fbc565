"""DeepLab heads as the official model.py: ASPP, the DeepLabv3+ decoder and the logits layer.

Official placement everywhere in the heads: conv -> BN (epsilon 1e-5) -> ReLU (slim conv2d with
normalizer_fn=batch_norm, activation_fn=relu). Regular convs use slim's default xavier init with
L2(wd); a separable conv is utils.split_separable_conv2d: depthwise (truncated_normal 0.33, no
regulariser) -> BN -> ReLU, pointwise 1x1 (truncated_normal 0.06, L2) -> BN -> ReLU. Logits: 1x1 conv
with bias (truncated_normal 0.01, L2 on the weights), no BN, no activation.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from nas_deeplab import resize
from nas_deeplab.model import layers
from nas_deeplab.model.drop_path import StepRef, stateless_seed
from nas_deeplab.model.serialization import (options_to_config, register,
                                             serialize_initializer)


@register
class ConvBNReLU(layers.Composite):
    """slim.conv2d(..., normalizer_fn=batch_norm, activation_fn=relu): conv `weights`, `BatchNorm`."""

    def __init__(self, filters, kernel_size=1, rate=1, weight_decay=0.0, options=None,
                 kernel_initializer=None, in_channels=None, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.in_channels, self.rate = int(filters), in_channels, int(rate)
        self.kernel_size, self.weight_decay = int(kernel_size), float(weight_decay)
        self.options = options
        self.kernel_initializer = kernel_initializer
        self.conv = layers.Conv2D(filters, kernel_size, rate=rate,
                                  kernel_initializer=kernel_initializer or layers.head_conv_initializer(),
                                  kernel_regularizer=layers.slim_l2(weight_decay), name="conv")
        self.bn = layers.batch_norm(options, head=True, name="BatchNorm")

    def get_config(self):
        init = self.kernel_initializer
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "rate": self.rate, "weight_decay": self.weight_decay,
                "options": options_to_config(self.options),
                "kernel_initializer": None if init is None else serialize_initializer(init),
                "in_channels": self.in_channels}

    @classmethod
    def decode_config(cls, config):
        if isinstance(config.get("kernel_initializer"), dict):
            config["kernel_initializer"] = keras.initializers.get(config["kernel_initializer"])
        return super().decode_config(config)

    def build_children(self, in_channels):
        layers.build_child(self.conv, in_channels or self.in_channels)
        layers.build_child(self.bn, self.filters)

    def call(self, x, training=None):
        return tf.nn.relu(self.bn(self.conv(x), training=training))


@register
class DepthwiseBNReLU(layers.Composite):
    """The `<scope>_depthwise` half of split_separable_conv2d."""

    def __init__(self, rate=1, options=None, in_channels=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.rate, self.options = in_channels, int(rate), options
        self.conv = layers.DepthwiseConv2D(3, rate=rate, stddev=0.33, name="depthwise")
        self.bn = layers.batch_norm(options, head=True, name="BatchNorm")

    def get_config(self):
        return {**super().get_config(), "rate": self.rate,
                "options": options_to_config(self.options), "in_channels": self.in_channels}

    def build_children(self, in_channels):
        c = in_channels or self.in_channels
        layers.build_child(self.conv, c)
        layers.build_child(self.bn, c)

    def call(self, x, training=None):
        return tf.nn.relu(self.bn(self.conv(x), training=training))


@register
class SplitSeparableConv(layers.Composite):
    """utils.split_separable_conv2d: `<scope>_depthwise` then `<scope>_pointwise`."""

    def __init__(self, filters, rate=1, weight_decay=0.0, options=None, in_channels=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.rate = in_channels, int(rate)
        self.filters, self.weight_decay, self.options = int(filters), float(weight_decay), options
        self.depthwise = DepthwiseBNReLU(rate=rate, options=options, name=f"{self.name}_depthwise")
        self.pointwise = ConvBNReLU(filters, 1, weight_decay=weight_decay, options=options,
                                    kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.06),
                                    name=f"{self.name}_pointwise")

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "rate": self.rate,
                "weight_decay": self.weight_decay, "options": options_to_config(self.options),
                "in_channels": self.in_channels}

    def build_children(self, in_channels):
        c = in_channels or self.in_channels
        layers.build_child(self.depthwise, c)
        layers.build_child(self.pointwise, c)

    def call(self, x, training=None):
        return self.pointwise(self.depthwise(x, training=training), training=training)


@register
class Dropout(layers.Composite):
    """slim.dropout(keep_prob) with per-replica stateless masks (seeded like drop path).
    Deserialised, it reads a fresh step variable at 0 (see serialization.py)."""

    def __init__(self, keep_prob, step_ref, layer_id, **kwargs):
        super().__init__(**kwargs)
        self.keep_prob, self.step_ref, self.layer_id = float(keep_prob), step_ref, int(layer_id)

    def get_config(self):
        return {**super().get_config(), "keep_prob": self.keep_prob, "layer_id": self.layer_id}

    @classmethod
    def decode_config(cls, config):
        config["step_ref"] = StepRef()
        return super().decode_config(config)

    def call(self, x, training=None):
        if not training or self.keep_prob >= 1.0:
            return x
        u = tf.random.stateless_uniform(tf.shape(x), seed=stateless_seed(
            tf.convert_to_tensor(self.step_ref.variable), self.layer_id), dtype=tf.float32)
        mask = tf.cast(tf.floor(self.keep_prob + u), x.dtype)
        return x * tf.cast(1.0 / self.keep_prob, x.dtype) * mask


@register
class ASPP(layers.Composite):
    """image_pooling, aspp0 (1x1), aspp1..n (atrous 3x3, separable or regular), concat_projection
    (1x1) and dropout keep 0.9 (training only). Branch order in the concat is the official one:
    image pooling first."""

    def __init__(self, options, step_ref, in_channels=None, **kwargs):
        super().__init__(**kwargs)
        depth, wd = options.aspp_convs_filters, options.weight_decay
        self.depth, self.in_channels, self.options = depth, in_channels, options
        self.add_image_level_feature = options.add_image_level_feature
        self.separable = options.aspp_with_separable_conv
        if self.add_image_level_feature:
            self.image_pooling = ConvBNReLU(depth, 1, weight_decay=wd, options=options,
                                            name="image_pooling")
        self.aspp0 = ConvBNReLU(depth, 1, weight_decay=wd, options=options, name="aspp0")
        self.branches = []
        for i, rate in enumerate(options.atrous_rates or (), 1):
            if self.separable:
                self.branches.append(SplitSeparableConv(depth, rate=rate, weight_decay=wd,
                                                        options=options, name=f"aspp{i}"))
            else:
                self.branches.append(ConvBNReLU(depth, 3, rate=rate, weight_decay=wd,
                                                options=options, name=f"aspp{i}"))
        self.concat_projection = ConvBNReLU(depth, 1, weight_decay=wd, options=options,
                                            name="concat_projection")
        self.dropout = Dropout(0.9, step_ref, layer_id=60000, name="concat_projection_dropout")

    def get_config(self):
        return {**super().get_config(), "options": options_to_config(self.options),
                "in_channels": self.in_channels}

    @classmethod
    def decode_config(cls, config):
        config["step_ref"] = StepRef()
        return super().decode_config(config)

    def build_children(self, in_channels):
        c = in_channels or self.in_channels
        n = 1 + len(self.branches)
        if self.add_image_level_feature:
            layers.build_child(self.image_pooling, c)
            n += 1
        layers.build_child(self.aspp0, c)
        for branch in self.branches:
            layers.build_child(branch, c)
        layers.build_child(self.concat_projection, self.depth * n)

    def call(self, features, training=None):
        branches = []
        if self.add_image_level_feature:
            # Official: avg_pool over the whole (crop / output_stride) map == the global mean.
            pooled = tf.reduce_mean(features, axis=[1, 2], keepdims=True)
            pooled = self.image_pooling(pooled, training=training)
            branches.append(layers.resize_bilinear(pooled, resize.spatial_size(features)))
        branches.append(self.aspp0(features, training=training))
        for branch in self.branches:
            branches.append(branch(features, training=training))
        x = self.concat_projection(tf.concat(branches, axis=3), training=training)
        return self.dropout(x, training=training)


@register
class Decoder(layers.Composite):
    """DeepLabv3+ decoder (scope `decoder`): feature_projection0 (1x1, 48) of the low-level end
    point, the ASPP output resized (align_corners) to the low-level size, concat, two 3x3 convs.

    The official size is scale_dimension(crop, 1/decoder_output_stride); for stride 4 (Cell_2)
    that always equals the end point's size. For 8/16 (Cell_5/Cell_7) it does too at 32k+1 sizes;
    elsewhere the official graph would also resize the projection, this one keeps its size."""

    def __init__(self, options, in_channels=None, low_level_channels=None, **kwargs):
        super().__init__(**kwargs)
        wd, depth = options.weight_decay, options.decoder_filters
        self.depth, self.options = depth, options
        self.in_channels, self.low_level_channels = in_channels, low_level_channels
        self.separable = options.decoder_use_separable_conv
        self.feature_projection0 = ConvBNReLU(48, 1, weight_decay=wd, options=options,
                                              name="feature_projection0")
        if self.separable:
            self.convs = [SplitSeparableConv(depth, weight_decay=wd, options=options,
                                             name=f"decoder_conv{j}") for j in range(2)]
        else:
            # Official: slim.repeat(..., 2, conv2d, depth, 3, scope='decoder_conv0')
            # -> decoder_conv0/decoder_conv0_1, decoder_conv0/decoder_conv0_2.
            self.convs = [ConvBNReLU(depth, 3, weight_decay=wd, options=options,
                                     name=f"decoder_conv0_{j + 1}") for j in range(2)]

    def get_config(self):
        return {**super().get_config(), "options": options_to_config(self.options),
                "in_channels": self.in_channels, "low_level_channels": self.low_level_channels}

    # Its build takes two shapes: Keras' own record of them works, unlike Composite's.
    def get_build_config(self):
        return keras.layers.Layer.get_build_config(self)

    def build_from_config(self, config):
        keras.layers.Layer.build_from_config(self, config)

    def build(self, features_shape=None, low_level_shape=None):
        c = layers._channels_of(features_shape) or self.in_channels
        low = layers._channels_of(low_level_shape) or self.low_level_channels
        layers.build_child(self.feature_projection0, low)
        layers.build_child(self.convs[0], c + 48)
        layers.build_child(self.convs[1], self.depth)

    def call(self, features, low_level, training=None):
        # Official: both inputs resized to scale_dimension(crop, 1/4), which is always the low-level
        # end point's own size (ceil(d/4) through the stem), so only the ASPP output is resized.
        x = [layers.resize_bilinear(features, resize.spatial_size(low_level)),
             self.feature_projection0(low_level, training=training)]
        x = tf.concat(x, axis=3)
        for conv in self.convs:
            x = conv(x, training=training)
        return x


@register
class Logits(layers.Composite):
    """logits/semantic: 1x1 conv with bias, truncated_normal(0.01), L2(wd) on the weights."""

    def __init__(self, num_classes, weight_decay=0.0, in_channels=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels = in_channels
        self.num_classes, self.weight_decay = int(num_classes), float(weight_decay)
        self.conv = layers.Conv2D(num_classes, 1, use_bias=True,
                                  kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
                                  kernel_regularizer=layers.slim_l2(weight_decay), name="semantic",
                                  dtype="float32")

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "weight_decay": self.weight_decay, "in_channels": self.in_channels}

    def build_children(self, in_channels):
        layers.build_child(self.conv, in_channels or self.in_channels)

    def call(self, x):
        return self.conv(x)
