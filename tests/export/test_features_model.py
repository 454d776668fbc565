"""The features SavedModel: reloaded with tf.saved_model.load alone, its `features` signature
(uint8 images) gives the Keras backbone's end points and pyramid levels, at any image size."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture
from nas_deeplab.export.features_model import SIGNATURE_KEY, export_features_model
from nas_deeplab.io_utils import OutputError
from nas_deeplab.model.keras_backbone import AutoDeepLabBackbone

OPS = ("separable_3x3_2", "atrous_3x3", "skip_connect", "max_pool_3x3")
IDX = (1, 0, 2, 0)
PATH = (1, 2, 3, 2)   # starts at stride 8, ends at 16: P2 is the Stem


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    backbone = AutoDeepLabBackbone(architecture.Architecture(OPS, IDX, PATH, 2, name="searched"))
    rng = np.random.default_rng(7)
    for v in backbone.variables:
        value = rng.normal(0.0, 0.2, v.shape)
        if "moving_variance" in v.path:
            value = np.abs(value) + 0.5
        v.assign(value.astype(np.float32))
    path = str(tmp_path_factory.mktemp("features") / "1")
    export_features_model(backbone, path)
    return backbone, path


def test_signature_matches_the_keras_backbone(exported):
    backbone, path = exported
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures[SIGNATURE_KEY]
    expected_outputs = {"Stem", "Cell_0", "Cell_1", "Cell_2", "Cell_3", "features",
                        "P2", "P3", "P4", "P5"}
    assert set(signature.structured_outputs) == expected_outputs
    aliases = {"P2": "Stem", "P3": "Cell_0", "P4": "Cell_1", "P5": "Cell_2"}
    for h, w in ((33, 33), (50, 41)):          # any size, as the backbone takes it
        images = np.random.default_rng(h).integers(0, 256, (2, h, w, 3)).astype(np.uint8)
        got = signature(images=tf.constant(images))
        want = backbone(images.astype(np.float32))
        for name in want:
            scale = float(np.abs(want[name].numpy()).max())
            np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=1e-5,
                                       atol=1e-5 * scale, err_msg=name)
        for level, name in aliases.items():
            np.testing.assert_array_equal(got[level].numpy(), got[name].numpy())
        # On the way down the path a stride-s feature is ceil(size / s) a side.
        assert got["P5"].shape[1:3] == (-(-h // 32), -(-w // 32))
        assert got["P2"].shape[1:3] == (-(-h // 4), -(-w // 4))


def test_assets_describe_the_outputs(exported):
    backbone, path = exported
    with open(os.path.join(path, "assets", "features_info.json"), encoding="utf-8") as f:
        info = json.load(f)
    assert info["signature"] == "features"
    outputs = info["outputs"]
    # Channels: the stem's 128, then B * F * 2**level = 2 * 2 * 2**level per cell.
    assert {k: (v["stride"], v["channels"]) for k, v in outputs.items()} == {
        "Stem": (4, 128), "Cell_0": (8, 8), "Cell_1": (16, 16), "Cell_2": (32, 32),
        "Cell_3": (16, 16), "features": (16, 16),
        "P2": (4, 128), "P3": (8, 8), "P4": (16, 16), "P5": (32, 32)}
    with open(os.path.join(path, "assets", "architecture.json"), encoding="utf-8") as f:
        assert architecture.Architecture.from_dict(json.load(f)) == backbone.architecture


def test_refuses_a_non_empty_folder(exported):
    backbone, path = exported
    with pytest.raises(OutputError, match="not empty"):
        export_features_model(backbone, path)
