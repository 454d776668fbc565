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
from nas_deeplab.model import end_points as end_points_lib
from nas_deeplab.model import serialization
from nas_deeplab.model.backbone import HNASNet
from nas_deeplab.model.drop_path import StepRef
from nas_deeplab.model.heads import ASPP, Decoder, Logits
from nas_deeplab.model.layers import build_child

# `decoder_output_stride` default: DeepLabv3+'s stride 4 where the path allows it (end_points.py).
AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Model flags, named and defaulted as the official DeepLab flags where they exist.

    `output_stride`, `atrous_rates` and `decoder_output_stride` default to what the architecture's
    path implies (`end_points.py`); `for_architecture` turns them into concrete values, checked
    against the path. For the published path that is 8, (12, 24, 36) and 4 (Cell_2)."""

    num_classes: int
    atrous_rates: Optional[Sequence[int]] = None      # None: DeepLab's rates for the output stride
    output_stride: Optional[int] = None               # None: the backbone's, 4 * 2**backbone[-1]
    decoder_output_stride: Optional[int] | str = AUTO  # None: no decoder; AUTO: 4 where possible
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
        for name in ("output_stride", "decoder_output_stride"):
            value = getattr(self, name)
            if value not in (None, AUTO) and end_points_lib.stride_level(value) is None:
                raise ValueError(f"{name}={value}: must be one of 4, 8, 16, 32")
        if not 0.0 < float(self.drop_path_keep_prob) <= 1.0:
            raise ValueError(f"drop_path_keep_prob must be in (0, 1], got {self.drop_path_keep_prob}")
        if int(self.total_training_steps) < 1:
            raise ValueError(f"total_training_steps must be >= 1, got {self.total_training_steps}")
        if self.atrous_rates is not None:
            object.__setattr__(self, "atrous_rates", tuple(int(r) for r in self.atrous_rates))
            if any(r <= 0 for r in self.atrous_rates):
                raise ValueError(f"atrous_rates must be positive, got {list(self.atrous_rates)}")

    def for_architecture(self, arch: Architecture) -> "ModelOptions":
        """These options with the path-derived defaults filled in, checked against `arch`'s path;
        errors name the flag and both values."""
        backbone = arch.backbone
        stride = end_points_lib.output_stride(backbone)
        if self.output_stride is not None and int(self.output_stride) != stride:
            raise ValueError(
                f"--output_stride={self.output_stride} does not match the architecture: its path "
                f"{list(backbone)} ends at level {backbone[-1]}, output stride {stride} "
                f"(4 * 2**backbone[-1]); leave --output_stride unset or pass {stride}")
        rates = (end_points_lib.default_atrous_rates(stride) if self.atrous_rates is None
                 else self.atrous_rates)
        decoder = self.decoder_output_stride
        if decoder == AUTO:
            decoder = end_points_lib.default_decoder_output_stride(backbone)
        elif decoder is not None:
            decoder = int(decoder)
            if decoder > stride:
                raise ValueError(f"--decoder_output_stride={decoder} is coarser than the "
                                 f"architecture's output stride {stride}: the decoder refines "
                                 "the ASPP output with finer features")
            if end_points_lib.decoder_end_point(backbone, decoder) is None:
                points = end_points_lib.decoder_end_points(backbone)
                raise ValueError(
                    f"--decoder_output_stride={decoder}: the path {list(backbone)} has no "
                    f"end point at stride {decoder} before its deepest level (it has "
                    f"{points or 'none'}); pick one of those strides or 'none'")
        return dataclasses.replace(self, output_stride=stride, atrous_rates=tuple(rates),
                                   decoder_output_stride=decoder)

    def to_dict(self) -> dict:
        """Plain data (JSON-able: tuples become lists), the inverse of `from_dict`."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model options {unknown}; known: {sorted(known)}")
        return cls(**d)


def preprocess(images):
    """Official _preprocess_zero_mean_unit_range: [0, 255] -> [-1, 1]."""
    return (2.0 / 255.0) * tf.cast(images, tf.float32) - 1.0


@serialization.register
class DeepLab(keras.Model):
    """hnasnet backbone + ASPP + optional decoder + logits. See the module docstring.

    Serialisable: `model.save("m.keras")` / `keras.saving.load_model("m.keras")` (config: the
    architecture and the options as plain data). The reloaded model reads a fresh step variable
    at 0 (training state, not a weight; see model/serialization.py)."""

    def __init__(self, arch: Architecture, options: ModelOptions, step_variable=None,
                 name="deeplab", **kwargs):
        super().__init__(name=name, **kwargs)
        options = options.for_architecture(arch)
        self.arch, self.options = arch, options
        self._step_ref = StepRef(step_variable)
        self.backbone = HNASNet(arch, options, step_ref=self._step_ref, name="hnasnet")
        channels = self.backbone.end_point_channels()
        self.aspp = ASPP(options, self._step_ref, in_channels=channels["features"], name="aspp")
        self.low_level_end_point = None
        self.decoder = None
        if options.decoder_output_stride is not None:
            self.low_level_end_point = end_points_lib.decoder_end_point(
                arch.backbone, options.decoder_output_stride)
            self.decoder = Decoder(options, in_channels=options.aspp_convs_filters,
                                   low_level_channels=channels[self.low_level_end_point],
                                   name="decoder")
        self.logits = Logits(options.num_classes, options.weight_decay,
                             in_channels=(options.decoder_filters if self.decoder is not None
                                          else options.aspp_convs_filters), name="logits")

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "dtype": keras.dtype_policies.serialize(self.dtype_policy),
                "arch": serialization.arch_to_config(self.arch), "options": self.options.to_dict()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["arch"] = serialization.arch_from_config(config["arch"])
        config["options"] = ModelOptions.from_dict(config["options"])
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.get(config["dtype"])
        with serialization.construction_policy(config):
            model = cls(**config)
        model.build((None, None, None, 3))   # every weight exists before load_model restores them
        return model

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
