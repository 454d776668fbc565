"""A features SavedModel: the backbone alone, for pipelines that consume backbones as SavedModels.

Signature `features`: `images` uint8 [N, H, W, 3] (any size) in; out, float32, every named end
point of the backbone: `Stem`, `Cell_0`..`Cell_{L-1}` (pre-ReLU, the official end points),
`features` (ReLU of the last cell) and the pyramid levels `P2`..`P5` (aliases of cells, chosen by
`end_points.pyramid_end_point`; a stride the path never reaches is absent). Inside: cast, the
DeepLab scaling to [-1, 1], the backbone in inference mode (moving BN statistics, no drop path).
The image is not padded: at H = 32k+1 every feature at stride s is (H - 1) / s + 1 a side, as in
the official graph. Assets: `architecture.json` and `features_info.json` (stride and channels of
every output), so the model explains itself without this package.
"""

from __future__ import annotations

import tempfile

import tensorflow as tf

from nas_deeplab.export import saved_model as sm
from nas_deeplab.model import end_points as end_points_lib
from nas_deeplab.model.backbone import HNASNet
from nas_deeplab.model.deeplab import DeepLab, preprocess
from nas_deeplab.model.keras_backbone import AutoDeepLabBackbone

SIGNATURE_KEY = "features"
INPUT_NAME = "images"
INFO_FILE = "features_info.json"


def _backbone_layer(model) -> HNASNet:
    if isinstance(model, AutoDeepLabBackbone):
        return model.hnasnet
    if isinstance(model, DeepLab):
        return model.backbone
    if isinstance(model, HNASNet):
        return model
    raise TypeError(f"expected a DeepLab, AutoDeepLabBackbone or HNASNet, got {type(model).__name__}")


def output_layout(hnasnet: HNASNet) -> dict:
    """{output name: {"stride", "channels", "end_point"}} of the signature, in output order."""
    backbone = hnasnet.arch.backbone
    channels = hnasnet.end_point_channels()
    strides = {"Stem": 4, "features": end_points_lib.output_stride(backbone)}
    strides.update({f"Cell_{i}": end_points_lib.level_stride(level) for i, level in enumerate(backbone)})
    out = {name: {"stride": strides[name], "channels": int(c), "end_point": name}
           for name, c in channels.items()}
    for level, name in end_points_lib.pyramid_end_points(backbone).items():
        out[level] = {**out[name], "end_point": name}
    return out


class FeaturesServer(tf.Module):
    """The exported object: `features(images)` plus the backbone's variables."""

    def __init__(self, hnasnet: HNASNet, asset_files=None):
        super().__init__(name="nas_deeplab_features")
        self._backbone = lambda x: hnasnet(x, training=False)   # a plain callable: untracked
        self._layout = {k: v["end_point"] for k, v in output_layout(hnasnet).items()}
        # The raw tf.Variables (see saved_model.py: TF1-style loaders must bind them).
        self.model_variables = [getattr(v, "value", v) for v in hnasnet.variables]
        self.assets = {name: tf.saved_model.Asset(path) for name, path in (asset_files or {}).items()}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)])
    def features(self, images):
        ends = self._backbone(preprocess(images))
        return {name: tf.identity(tf.cast(ends[point], tf.float32), name=name)
                for name, point in self._layout.items()}


def export_features_model(model, export_path: str, overwrite: bool = False,
                          metadata: dict | None = None, precision: str = "float32",
                          batch_norm_folded: int = 0, weight_rounding: str = "nearest") -> str:
    """Write the features SavedModel of `model` (DeepLab, AutoDeepLabBackbone or HNASNet layer).
    Written into a temporary folder renamed into place; a non-empty `export_path` is refused
    unless `overwrite`. `metadata`: more asset files {name: text or JSON-able}. `precision`,
    `batch_norm_folded` and `weight_rounding` describe the model (exporter.serving_model) in features_info.json; the
    outputs are float32 whatever it computes in."""
    hnasnet = _backbone_layer(model)
    info = {"format": "nas_deeplab.features_model", "version": 1, "signature": SIGNATURE_KEY,
            "precision": str(precision), "batch_norm_folded": int(batch_norm_folded),
            "weight_rounding": str(weight_rounding),
            "input": {INPUT_NAME: "uint8 [N, H, W, 3], any H, W (raw RGB pixels, not padded)"},
            "outputs": output_layout(hnasnet),
            "pyramid_rule": "P<k> = stride 2**k: the decoder end point finer than the deepest "
                            "level, the last cell of the first stay at the deepest level"}
    files = {"architecture.json": hnasnet.arch.to_json(), INFO_FILE: info, **(metadata or {})}
    with tempfile.TemporaryDirectory(prefix="nas_deeplab_assets_") as asset_dir:
        server = FeaturesServer(hnasnet, sm.write_asset_sources(asset_dir, files))
        return sm.save_atomically(server, export_path, {SIGNATURE_KEY: server.features.get_concrete_function()},
                                  overwrite)
