"""The hnasnet backbone as a functional Keras model that heads written for other backbones can use.

Follows keras-hub's `Backbone` conventions without depending on keras-hub: a functional
`keras.Model` (so `backbone.inputs` and its symbolic outputs can be rewired into a new model),
`pyramid_outputs` = {"P2".."P5": KerasTensor} (P<k>: stride 2**k, the keys keras-hub's
`DeepLabV3Backbone` and FPN-style heads read), `get_config`/`from_config`, `presets` and
`from_preset`. Which cell feeds each P level is `end_points.pyramid_end_point` (the decoder end
points, plus the bottleneck at the deepest level); a stride the path never reaches is absent.

Input: float images [N, H, W, 3] holding raw pixels 0..255 (DeepLab's call convention; scaled to
[-1, 1] inside, `include_rescaling=False` takes already scaled images). Outputs: a dict of the
official end points `Stem`, `Cell_0`..`Cell_{L-1}` (pre-ReLU, as nas_network.py) and `features`
(ReLU of the last cell, what the ASPP reads). Sizes: at H = 32k+1 (the sizes the network aligns
on) every feature at stride s is (H - 1) / s + 1 a side; elsewhere a cell reached by moving up the
path is (d - 1) * 2 + 1 of the coarser side d, so two features at one stride can differ by a pixel.
Heads that rescale by fixed factors (keras-hub's DeepLabV3 upsamples P5 by 8 to concatenate it with
P2) need H, W multiples of 32.

The layer holding the weights is the same `HNASNet` the DeepLab model uses (variable paths
`hnasnet/...`, official names via `official.names.backbone_variables(backbone.hnasnet)`), so
trained weights move between the two by path. There are no released Auto-DeepLab weights: presets
are the published architecture at F = 20 / 32 / 48 with random weights; `from_preset` also takes a
`.keras` file (a saved backbone, or a saved DeepLab model whose backbone it takes) or an
architecture.json, and `checkpoint=` loads backbone weights from a TF2 checkpoint of ours or an
official-format one.
"""

from __future__ import annotations

import logging
import os

import keras

from nas_deeplab import architecture as arch_lib
from nas_deeplab.model import end_points as end_points_lib
from nas_deeplab.model import serialization
from nas_deeplab.model.backbone import HNASNet
from nas_deeplab.model.deeplab import ModelOptions, preprocess
from nas_deeplab.model.drop_path import StepRef

log = logging.getLogger(__name__)

PRESETS = {
    name: {"metadata": {"description": f"Auto-DeepLab-{name[-1].upper()}: the published cell and "
                                       f"path, F = {f}; random weights (none were released)",
                        "path": "auto_deeplab"},
           "config": {"architecture": name}}
    for name, f in arch_lib.PRESET_FILTER_MULTIPLIERS.items()
}


class _ClassProperty:
    def __init__(self, fn):
        self.fn = fn

    def __get__(self, obj, owner):
        return self.fn(owner)


@serialization.register
class ImageScaling(keras.layers.Layer):
    """Raw pixels 0..255 -> [-1, 1], exactly `deeplab.preprocess` (the official NAS scaling)."""

    def call(self, images):
        return preprocess(images)

    def compute_output_shape(self, input_shape):
        return input_shape


def _architecture(value) -> arch_lib.Architecture:
    if isinstance(value, str):
        return arch_lib.resolve(value)
    return serialization.arch_from_config(value)


@serialization.register
class AutoDeepLabBackbone(keras.Model):
    """Functional Auto-DeepLab backbone with `pyramid_outputs` (see the module docstring).

    architecture: an Architecture, its dict, a preset name or an architecture.json path.
    The options mirror ModelOptions (weight decay as slim L2 losses, BN, drop path); drop path only
    acts when called with training=True and `step_variable` advances (it is a fresh int64 at 0)."""

    def __init__(self, architecture, image_shape=(None, None, 3), include_rescaling=True,
                 weight_decay=4e-5, drop_path_keep_prob=1.0, total_training_steps=500000,
                 sync_batch_norm=False, fine_tune_batch_norm=True, step_variable=None,
                 dtype=None, **kwargs):
        arch = _architecture(architecture)
        options = ModelOptions(num_classes=1, weight_decay=float(weight_decay),
                               drop_path_keep_prob=float(drop_path_keep_prob),
                               total_training_steps=int(total_training_steps),
                               sync_batch_norm=bool(sync_batch_norm),
                               fine_tune_batch_norm=bool(fine_tune_batch_norm))
        step_ref = StepRef(step_variable)
        image_shape = tuple(image_shape)
        with serialization.construction_policy({"dtype": dtype}):
            images = keras.Input(shape=image_shape, name="images")
            x = ImageScaling(name="image_scaling")(images) if include_rescaling else images
            hnasnet = HNASNet(arch, options, step_ref=step_ref, name="hnasnet")
            hnasnet.build((None,) + image_shape)      # weights from channel counts (no trace)
            ends = hnasnet(x)
        outputs = {name: ends[name] for name in hnasnet.end_point_channels()}
        super().__init__(inputs=images, outputs=outputs, **kwargs)
        if dtype is not None:    # as keras-hub's Backbone: the functional init ignores dtype
            self.dtype_policy = keras.dtype_policies.get(dtype)
        self.architecture, self.image_shape = arch, image_shape
        self.include_rescaling = bool(include_rescaling)
        self.backbone_options = options
        self.hnasnet = hnasnet
        self._step_ref = step_ref
        self.end_point_names = tuple(outputs)
        self.pyramid_levels = end_points_lib.pyramid_end_points(arch.backbone)
        self._pyramid_outputs = {level: outputs[name] for level, name in self.pyramid_levels.items()}

    # -- keras-hub conventions ------------------------------------------------------------------
    @property
    def pyramid_outputs(self):
        """{"P2": KerasTensor, ...}: the feature at stride 2**k on the decoded path (see module)."""
        return dict(self._pyramid_outputs)

    @property
    def step_variable(self):
        return self._step_ref.variable

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "dtype": keras.dtype_policies.serialize(self.dtype_policy),
                "architecture": serialization.arch_to_config(self.architecture),
                "image_shape": list(self.image_shape), "include_rescaling": self.include_rescaling,
                "weight_decay": self.backbone_options.weight_decay,
                "drop_path_keep_prob": self.backbone_options.drop_path_keep_prob,
                "total_training_steps": self.backbone_options.total_training_steps,
                "sync_batch_norm": self.backbone_options.sync_batch_norm,
                "fine_tune_batch_norm": self.backbone_options.fine_tune_batch_norm}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.get(config["dtype"])
        return cls(**config)

    @_ClassProperty
    def presets(cls):
        """{name: {"metadata", "config"}} for `from_preset` (no weights: none were released)."""
        return {k: {"metadata": dict(v["metadata"]), "config": dict(v["config"])}
                for k, v in PRESETS.items()}

    @classmethod
    def from_preset(cls, preset, load_weights=None, checkpoint=None, **kwargs):
        """One call to a backbone: `preset` is a preset name (random weights: there are no released
        ones, so load_weights=True is refused), an architecture.json (random weights), or a .keras
        file holding an AutoDeepLabBackbone or a DeepLab model (its weights unless
        load_weights=False). `checkpoint`: then load the backbone weights from a TF2 checkpoint of
        ours or an official-format one. kwargs go to the constructor (image_shape, ...)."""
        preset = os.fspath(preset)
        if preset.endswith(".keras"):
            backbone = _from_keras_file(cls, preset, load_weights is not False, kwargs)
        else:
            if load_weights:
                raise ValueError(f"preset {preset!r} has no weights to load (no Auto-DeepLab "
                                 "weights were released); pass load_weights=False, a .keras file, "
                                 "or checkpoint=")
            if preset in PRESETS:
                log.info("%s: random initialisation (no released weights)", preset)
            try:
                arch = arch_lib.resolve(preset)
            except arch_lib.ArchitectureError as e:
                raise ValueError(f"{e}; or a .keras file") from None
            backbone = cls(architecture=arch, **kwargs)
        if checkpoint is not None:
            load_backbone_weights(backbone, checkpoint)
        return backbone


# -- weights from elsewhere -----------------------------------------------------------------------
def _relative_path(path: str) -> str:
    """'deeplab/hnasnet/cell_0/1x1/weights' -> 'hnasnet/cell_0/1x1/weights'."""
    parts = path.split("/")
    return "/".join(parts[parts.index("hnasnet"):]) if "hnasnet" in parts else path


def copy_backbone_weights(source: HNASNet, backbone: AutoDeepLabBackbone) -> None:
    """Assign the weights of another HNASNet layer (e.g. `deeplab_model.backbone`) by path."""
    src = {_relative_path(v.path): v for v in source.variables}
    dst = {_relative_path(v.path): v for v in backbone.hnasnet.variables}
    if set(src) != set(dst):
        diff = sorted(set(src) ^ set(dst))
        raise ValueError(f"the backbones differ in {len(diff)} variables (e.g. {diff[:3]})")
    for key, var in dst.items():
        if tuple(var.shape) != tuple(src[key].shape):
            raise ValueError(f"{key}: shape {tuple(src[key].shape)} vs {tuple(var.shape)}")
    for key, var in dst.items():
        var.assign(src[key])


def _from_keras_file(cls, path, load_weights, kwargs):
    from nas_deeplab.model.deeplab import DeepLab
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such .keras file")
    model = keras.saving.load_model(path, compile=False)
    if isinstance(model, cls):
        if kwargs or not load_weights:
            config = {**model.get_config(), **kwargs}
            fresh = cls.from_config(config)
            if load_weights:
                copy_backbone_weights(model.hnasnet, fresh)
            return fresh
        return model
    if isinstance(model, DeepLab):
        o = model.options
        backbone = cls(architecture=model.arch, **{
            "weight_decay": o.weight_decay, "drop_path_keep_prob": o.drop_path_keep_prob,
            "total_training_steps": o.total_training_steps, "sync_batch_norm": o.sync_batch_norm,
            "fine_tune_batch_norm": o.fine_tune_batch_norm, **kwargs})
        if load_weights:
            copy_backbone_weights(model.backbone, backbone)
        return backbone
    raise ValueError(f"{path} holds a {type(model).__name__}, not an AutoDeepLabBackbone or a "
                     "nas_deeplab DeepLab model")


def load_backbone_weights(backbone: AutoDeepLabBackbone, checkpoint_path: str) -> str:
    """Every backbone weight from a checkpoint (a TF2 training checkpoint of ours, matched by
    variable path; or an official-format one, matched by official name; heads in it are ignored).
    All or nothing: a missing or misshapen variable raises CheckpointError. Returns the prefix."""
    from nas_deeplab.official import checkpoint as oc
    from nas_deeplab.official.names import backbone_variables
    from nas_deeplab.official.restore import restore_official
    prefix = oc.resolve_checkpoint_prefix(checkpoint_path)
    if oc.checkpoint_kind(prefix) == oc.KIND_OFFICIAL:
        restore_official(dict(backbone_variables(backbone.hnasnet)), prefix)
        return prefix
    from nas_deeplab.training.checkpointing import MODEL_KEY
    rd = oc.reader(prefix)
    shapes = rd.get_variable_to_shape_map()
    # Our training checkpoints store {variable path: variable} under MODEL_KEY; TF escapes the
    # path ('.' -> '..', '/' -> '.S') in '<MODEL_KEY>/<path>/.ATTRIBUTES/VARIABLE_VALUE'. The
    # model's own prefix (e.g. 'deeplab/') is whatever stands before 'hnasnet/'.
    escape = lambda name: name.replace(".", "..").replace("/", ".S")  # noqa: E731
    marker, head = escape("hnasnet/"), MODEL_KEY + "/"
    found = [k for k in shapes if k.startswith(head) and marker in k]
    if not found:
        raise oc.CheckpointError(f"{prefix} holds no hnasnet backbone variables under '{MODEL_KEY}'")
    root = found[0][len(head):found[0].index(marker)]
    problems, keys = [], {}
    for v in backbone.hnasnet.variables:
        rel = _relative_path(v.path)
        key = f"{head}{root}{escape(rel)}/.ATTRIBUTES/VARIABLE_VALUE"
        if key not in shapes:
            problems.append(f"{rel}: not in the checkpoint")
        elif tuple(shapes[key]) != tuple(v.shape):
            problems.append(f"{rel}: checkpoint shape {list(shapes[key])}, backbone {list(v.shape)}")
        keys[key] = v
    if problems:   # all or nothing: nothing was assigned
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise oc.CheckpointError(f"{prefix} does not fit this backbone (another architecture or "
                                 f"filter multiplier?): " + "; ".join(problems[:3]) + more)
    for key, v in keys.items():
        v.assign(rd.get_tensor(key))
    return prefix
