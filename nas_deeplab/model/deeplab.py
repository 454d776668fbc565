"""The DeepLab model around the hnasnet backbone: options, builder and call convention.

Call convention (what train/eval/export rely on): input float32 images [N, H, W, 3] holding raw
pixel values 0..255 (padding pixels 127.5, the official mean_pixel for NAS variants); normalised
inside by (2/255) * x - 1 (official `_preprocess_zero_mean_unit_range`); output = logits bilinearly
upsampled with align_corners to the input H, W: [N, H, W, num_classes], float32.
`training=True` turns on BN batch statistics (when fine_tune_batch_norm), dropout and drop path.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import keras
import tensorflow as tf

from nas_deeplab import resize
from nas_deeplab.architecture import Architecture
from nas_deeplab.model.backbone import HNASNet
from nas_deeplab.model.drop_path import StepRef
from nas_deeplab.model.heads import ASPP, Decoder, Logits
from nas_deeplab.model.layers import build_child

# Official networks_to_feature_maps['nas_hnasnet'][DECODER_END_POINTS].
DECODER_END_POINTS = {4: "Cell_2", 8: "Cell_5", 16: "Cell_7"}


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Model flags, named and defaulted as the official DeepLab flags where they exist."""

    num_classes: int
    atrous_rates: Optional[Sequence[int]] = (12, 24, 36)
    output_stride: int = 8
    decoder_output_stride: Optional[int] = 4        # None: no decoder
    aspp_with_separable_conv: bool = True
    decoder_use_separable_conv: bool = True
    weight_decay: float = 4e-5
    drop_path_keep_prob: float = 1.0
    total_training_steps: int = 500000
    sync_batch_norm: bool = False
    add_image_level_feature: bool = True
    aspp_convs_filters: int = 256
    decoder_filters: int = 256
    fine_tune_batch_norm: bool = True

    def __post_init__(self):
        if int(self.num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.output_stride != 8:
            raise ValueError(f"output_stride={self.output_stride}: the hnasnet backbone always ends "
                             "at output stride 8 (official code ignores other values); use 8")
        if self.decoder_output_stride is not None and \
                self.decoder_output_stride not in DECODER_END_POINTS:
            raise ValueError(f"decoder_output_stride={self.decoder_output_stride}: must be one of "
                             f"{sorted(DECODER_END_POINTS)} or None")
        if not 0.0 < float(self.drop_path_keep_prob) <= 1.0:
            raise ValueError(f"drop_path_keep_prob must be in (0, 1], got {self.drop_path_keep_prob}")
        if int(self.total_training_steps) < 1:
            raise ValueError(f"total_training_steps must be >= 1, got {self.total_training_steps}")
        object.__setattr__(self, "atrous_rates",
                           tuple(int(r) for r in self.atrous_rates) if self.atrous_rates else ())


def preprocess(images):
    """Official _preprocess_zero_mean_unit_range: [0, 255] -> [-1, 1]."""
    return (2.0 / 255.0) * tf.cast(images, tf.float32) - 1.0


class DeepLab(keras.Model):
    """hnasnet backbone + ASPP + optional decoder + logits. See the module docstring."""

    def __init__(self, arch: Architecture, options: ModelOptions, step_variable=None,
                 name="deeplab", **kwargs):
        super().__init__(name=name, **kwargs)
        self.arch, self.options = arch, options
        self._step_ref = StepRef(step_variable)
        self.backbone = HNASNet(arch, options, step_ref=self._step_ref, name="hnasnet")
        channels = self.backbone.end_point_channels()
        self.aspp = ASPP(options, self._step_ref, in_channels=channels["features"], name="aspp")
        self.low_level_end_point = None
        self.decoder = None
        if options.decoder_output_stride is not None:
            self.low_level_end_point = DECODER_END_POINTS[options.decoder_output_stride]
            if self.low_level_end_point not in channels:
                raise ValueError(f"decoder_output_stride={options.decoder_output_stride} needs end "
                                 f"point {self.low_level_end_point}, which an architecture of "
                                 f"{arch.num_layers} layers does not have")
            self.decoder = Decoder(options, in_channels=options.aspp_convs_filters,
                                   low_level_channels=channels[self.low_level_end_point],
                                   name="decoder")
        self.logits = Logits(options.num_classes, options.weight_decay,
                             in_channels=(options.decoder_filters if self.decoder is not None
                                          else options.aspp_convs_filters), name="logits")

    def build(self, *args, **kwargs):
        """Create every weight from channel counts alone (no forward pass, see layers.Composite)."""
        build_child(self.backbone, 3)
        build_child(self.aspp, self.aspp.in_channels)
        if self.decoder is not None and not self.decoder.built:
            self.decoder.build(None, None)
        build_child(self.logits, self.logits.in_channels)

    @property
    def step_variable(self):
        """The int64 global-step variable drop path (and dropout seeding) read."""
        return self._step_ref.variable

    def end_points(self, images, training=False):
        """All end points: backbone ones, 'aspp', 'decoder' (if any), 'logits' (at feature
        resolution) and 'upsampled_logits' (the model output)."""
        x = preprocess(images)
        ends = dict(self.backbone(x, training=training))
        net = self.aspp(ends["features"], training=training)
        ends["aspp"] = net
        if self.decoder is not None:
            net = self.decoder(net, ends[self.low_level_end_point], training=training)
            ends["decoder"] = net
        logits = tf.cast(self.logits(net), tf.float32)
        ends["logits"] = logits
        ends["upsampled_logits"] = resize.resize_bilinear(logits, resize.spatial_size(images))
        return ends

    def call(self, images, training=False):
        return self.end_points(images, training=training)["upsampled_logits"]


def build_backbone(arch: Architecture, options: ModelOptions | None = None, step_variable=None,
                   input_shape=None) -> HNASNet:
    """The backbone layer alone (input normalised to [-1, 1]; returns the end-point dict).
    With `input_shape` (H, W, 3) (None allowed) its weights are created (no forward pass)."""
    options = options or ModelOptions(num_classes=1)
    net = HNASNet(arch, options, step_ref=StepRef(step_variable), name="hnasnet")
    if input_shape is not None:
        net.build((None,) + tuple(input_shape))
    return net


def build_deeplab(arch: Architecture, options: ModelOptions, step_variable=None,
                  input_shape=(None, None, 3)) -> DeepLab:
    """Build the model and create all its weights (no forward computation; `input_shape` only
    documents the expected input, any H/W works; None leaves the weights to the first call)."""
    model = DeepLab(arch, options, step_variable=step_variable)
    if input_shape is not None:
        model.build((None,) + tuple(input_shape))
    return model
