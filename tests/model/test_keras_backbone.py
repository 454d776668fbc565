"""The functional backbone for other heads: the P-level rule, the same features as the DeepLab
model's backbone, presets, weights from .keras files and checkpoints, and heads not written for it
(a small FPN built from `pyramid_outputs` alone; keras-hub's DeepLabV3 when keras-hub is there)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture
from nas_deeplab.model import end_points
from nas_deeplab.model.deeplab import ModelOptions, build_deeplab
from nas_deeplab.model.keras_backbone import (AutoDeepLabBackbone, copy_backbone_weights,
                                              load_backbone_weights)
from nas_deeplab.official import checkpoint as oc
from nas_deeplab.official.names import official_variable_map

OPS = ("separable_3x3_2", "atrous_3x3", "skip_connect", "max_pool_3x3")
IDX = (1, 0, 2, 0)
SIZE = 65   # 32k+1: every feature at stride s is (SIZE - 1) // s + 1 a side

# path -> pyramid, written out by hand from the rule: finer than the deepest level the decoder end
# point (last cell at that stride before the path first reaches its deepest level, else Stem); at
# the deepest level the last cell of the first stay there; nothing coarser.
PYRAMIDS = {
    (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1): {"P2": "Cell_2", "P3": "Cell_5", "P4": "Cell_7", "P5": "Cell_9"},
    (1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3): {"P2": "Stem", "P3": "Cell_3", "P4": "Cell_7", "P5": "Cell_11"},
    (1, 2, 3, 2): {"P2": "Stem", "P3": "Cell_0", "P4": "Cell_1", "P5": "Cell_2"},
    (0, 1, 2, 2, 1, 2, 2): {"P2": "Cell_0", "P3": "Cell_1", "P4": "Cell_3"},
    (0, 1, 1, 0): {"P2": "Cell_0", "P3": "Cell_2"},
    (0, 0, 0): {"P2": "Cell_2"},
}


@pytest.mark.parametrize("path", sorted(PYRAMIDS))
def test_pyramid_rule_gives_the_hand_written_map(path):
    assert end_points.pyramid_end_points(path) == PYRAMIDS[path]
    assert end_points.pyramid_end_point(path, 64) is None
    assert end_points.pyramid_end_point(path, 12) is None


def _arch(backbone, f=2):
    return architecture.Architecture(OPS, IDX, backbone, f, name="searched")


def _randomise(variables, seed):
    rng = np.random.default_rng(seed)
    for v in variables:
        value = rng.normal(0.0, 0.2, v.shape)
        if "moving_variance" in v.path:
            value = np.abs(value) + 0.5
        v.assign(value.astype(np.float32))


@pytest.fixture(scope="module")
def deeplab_and_backbone():
    """A DeepLab model with random weights and a backbone holding a copy of its backbone's."""
    arch = _arch((1, 2, 3, 2))
    model = build_deeplab(arch, ModelOptions(num_classes=3, aspp_convs_filters=8, decoder_filters=8))
    _randomise(model.variables, seed=3)
    backbone = AutoDeepLabBackbone(arch)
    copy_backbone_weights(model.backbone, backbone)
    return model, backbone


def test_features_equal_the_deeplab_backbone_and_pyramid_has_the_strides(deeplab_and_backbone):
    model, backbone = deeplab_and_backbone
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32))
    want = model.end_points(images)
    got = backbone(images)
    assert sorted(got) == sorted(["Stem", "Cell_0", "Cell_1", "Cell_2", "Cell_3", "features"])
    for name, value in got.items():
        np.testing.assert_array_equal(value.numpy(), want[name].numpy())
    assert [v.path for v in backbone.variables] == [v.path[len("deeplab/"):]
                                                    for v in model.backbone.variables]
    pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)(images)
    assert sorted(pyramid) == ["P2", "P3", "P4", "P5"]
    for level, name in PYRAMIDS[(1, 2, 3, 2)].items():
        stride = 2 ** int(level[1])
        side = (SIZE - 1) // stride + 1
        assert pyramid[level].shape[1:3] == (side, side), level
        np.testing.assert_array_equal(pyramid[level].numpy(), want[name].numpy())


def test_round_trip_through_keras_file_and_from_preset(tmp_path, deeplab_and_backbone):
    model, backbone = deeplab_and_backbone
    images = tf.random.uniform((1, 33, 33, 3), 0.0, 255.0, seed=4)
    path = str(tmp_path / "backbone.keras")
    backbone.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is AutoDeepLabBackbone and loaded.architecture == backbone.architecture
    assert sorted(loaded.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    want = backbone(images)
    for name, value in loaded(images).items():
        np.testing.assert_array_equal(value.numpy(), want[name].numpy())
    # from_preset on a saved DeepLab model takes its backbone weights.
    model_path = str(tmp_path / "deeplab.keras")
    model.save(model_path)
    from_model = AutoDeepLabBackbone.from_preset(model_path)
    np.testing.assert_array_equal(from_model(images)["features"].numpy(), want["features"].numpy())
    arch_json = str(tmp_path / "architecture.json")
    backbone.architecture.save(arch_json)
    fresh = AutoDeepLabBackbone.from_preset(arch_json)
    assert fresh.architecture == backbone.architecture
    assert not np.array_equal(fresh.variables[0].numpy(), backbone.variables[0].numpy())


def test_presets_are_the_published_architecture_with_random_weights():
    assert sorted(AutoDeepLabBackbone.presets) == ["auto_deeplab_l", "auto_deeplab_m", "auto_deeplab_s"]
    backbone = AutoDeepLabBackbone.from_preset("auto_deeplab_s")
    assert backbone.architecture.is_published() and backbone.architecture.filter_multiplier == 20
    assert backbone.pyramid_levels == {"P2": "Cell_2", "P3": "Cell_5", "P4": "Cell_7", "P5": "Cell_9"}
    assert [tuple(t.shape)[-1] for t in backbone.pyramid_outputs.values()] == [100, 200, 400, 800]
    with pytest.raises(ValueError, match="no weights to load"):
        AutoDeepLabBackbone.from_preset("auto_deeplab_m", load_weights=True)
    with pytest.raises(ValueError, match="neither a preset"):
        AutoDeepLabBackbone.from_preset("auto_deeplab_xl")


def test_backbone_weights_from_tf2_and_official_checkpoints(tmp_path, deeplab_and_backbone):
    from nas_deeplab.training.checkpointing import MODEL_KEY, model_variable_map
    model, _ = deeplab_and_backbone
    want = [v.numpy() for v in model.backbone.variables]
    # As training writes it (CheckpointManager.save: the flat variable map plus a save counter).
    prefix = tf.train.Checkpoint(**{MODEL_KEY: model_variable_map(model)}).save(str(tmp_path / "ckpt"))
    official = oc.write_official_checkpoint(official_variable_map(model),
                                            str(tmp_path / "official" / "model.ckpt-1"))
    for source in (prefix, official):
        backbone = AutoDeepLabBackbone(model.arch)
        load_backbone_weights(backbone, source)
        for v, w in zip(backbone.variables, want):
            np.testing.assert_array_equal(v.numpy(), w)
    other = AutoDeepLabBackbone(_arch((0, 1, 2, 3)))
    with pytest.raises(oc.CheckpointError):
        load_backbone_weights(other, prefix)
    with pytest.raises(oc.CheckpointError):
        load_backbone_weights(other, official)


class _ResizeLike(keras.layers.Layer):
    """Official align_corners upsampling of x to the size of ref (test-local FPN helper)."""

    def call(self, x, ref):
        return tf.compat.v1.image.resize_bilinear(x, tf.shape(ref)[1:3], align_corners=True)


def test_a_head_written_only_against_pyramid_outputs_trains():
    """An FPN-lite that knows nothing of Auto-DeepLab: 1x1 on each P level, top-down
    upsample-and-add, a classifier, upsampled to the input. The loss must go down."""
    keras.utils.set_random_seed(0)
    backbone = AutoDeepLabBackbone(_arch((0, 1, 2, 3)), weight_decay=0.0)
    levels = backbone.pyramid_outputs
    assert sorted(levels) == ["P2", "P3", "P4", "P5"]
    top = None
    for key in ("P5", "P4", "P3", "P2"):
        lateral = keras.layers.Conv2D(8, 1, name=f"lateral_{key}")(levels[key])
        top = lateral if top is None else keras.layers.Add()([lateral, _ResizeLike()(top, lateral)])
    logits = _ResizeLike()(keras.layers.Conv2D(3, 1, name="classifier")(top), backbone.inputs[0])
    segmenter = keras.Model(backbone.inputs, logits)
    segmenter.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 33, 33, 3)).astype(np.float32)
    labels = (images[..., 0] > 127.5).astype(np.int32) + (images[..., 1] > 200).astype(np.int32)
    history = segmenter.fit(images, labels, epochs=6, batch_size=4, verbose=0).history["loss"]
    assert history[-1] < 0.8 * history[0], history
    # The backbone trained too: the head reaches it through pyramid_outputs.
    assert len(segmenter.trainable_variables) > len(backbone.trainable_variables)
    assert {id(v) for v in backbone.trainable_variables} <= {id(v) for v in segmenter.trainable_variables}


def test_keras_hub_deeplab_v3_takes_it_as_image_encoder():
    keras_hub = pytest.importorskip(
        "keras_hub", reason="keras-hub is not installed (optional: pip install -e '.[interop]')")
    keras.utils.set_random_seed(0)
    # 64 = 32 * 2: keras-hub's DeepLabV3 upsamples P5 by a fixed 8 to concatenate it with P2.
    backbone = AutoDeepLabBackbone(_arch((0, 1, 2, 3)), image_shape=(64, 64, 3), weight_decay=0.0)
    deeplab_v3 = keras_hub.models.DeepLabV3Backbone(
        image_encoder=backbone, spatial_pyramid_pooling_key="P5", upsampling_size=8,
        dilation_rates=[1, 2, 3], low_level_feature_key="P2", projection_filters=8,
        image_shape=(64, 64, 3))
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(backbone=deeplab_v3, num_classes=3)
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    before = segmenter(images).numpy()
    assert before.shape == (2, 64, 64, 3)
    assert {id(v) for v in backbone.trainable_variables} <= {id(v) for v in segmenter.trainable_variables}
    # Our weights are what it computes with: changing one backbone weight changes its output.
    kernel = backbone.hnasnet.conv0.kernel
    kernel.assign(kernel * 2.0)
    assert not np.allclose(segmenter(images).numpy(), before)
    segmenter.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = (images[..., :1] > 127.5).astype(np.int32)
    history = segmenter.fit(images, labels, epochs=4, shuffle=False, verbose=0).history["loss"]
    assert history[-1] < history[0], history
