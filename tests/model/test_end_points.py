"""Heads that follow the decoded path: output stride, ASPP rates and decoder end points for paths
other than the published one, checked against the feature maps the backbone really produces."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture
from nas_deeplab.model import end_points
from nas_deeplab.model.deeplab import ModelOptions, build_deeplab

OPS = ("separable_3x3_2", "atrous_3x3", "skip_connect", "max_pool_3x3")
IDX = (1, 0, 2, 0)
SIZE = 65   # 32k+1: a feature at stride s is (SIZE - 1) // s + 1 a side

# path -> (output stride, {decoder stride: end point}) written out by hand from the rule
# "last cell at that stride before the path first reaches its deepest level; Stem if none".
PATHS = {
    "published": ((0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1), 8, {4: "Cell_2", 8: "Cell_5", 16: "Cell_7"}),
    "pnasnet_os32": ((1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), 32, {4: "Stem", 8: "Cell_3", 16: "Cell_7"}),
    "ends_at_4": ((0, 1, 1, 0), 4, {4: "Cell_0"}),
    "ends_at_16": ((0, 1, 2, 2), 16, {4: "Cell_0", 8: "Cell_1"}),
    "ends_at_32": ((0, 1, 2, 3), 32, {4: "Cell_0", 8: "Cell_1", 16: "Cell_2"}),
    "starts_at_8": ((1, 2, 1, 1), 8, {4: "Stem", 8: "Cell_0"}),
    "never_stride_4_back_down": ((1, 2, 3, 2), 16, {4: "Stem", 8: "Cell_0", 16: "Cell_1"}),
    "all_stride_4": ((0, 0, 0), 4, {}),
}


def _arch(backbone, f=2):
    return architecture.Architecture(OPS, IDX, backbone, f, name="searched")


@pytest.mark.parametrize("name", sorted(PATHS))
def test_rule_gives_the_hand_written_map(name):
    backbone, stride, expected = PATHS[name]
    assert end_points.output_stride(backbone) == stride
    assert end_points.decoder_end_points(backbone) == expected


def test_default_rates_follow_deeplab_convention():
    # DeepLab: 6/12/18 at output stride 16, 12/24/36 at 8; the same receptive field in pixels at 4 and 32.
    assert end_points.default_atrous_rates(16) == (6, 12, 18)
    assert end_points.default_atrous_rates(8) == (12, 24, 36)
    for stride in (4, 8, 16, 32):
        assert tuple(r * stride for r in end_points.default_atrous_rates(stride)) == (96, 192, 288)


@pytest.mark.parametrize("name", ["ends_at_4", "ends_at_16", "ends_at_32", "starts_at_8",
                                  "never_stride_4_back_down"])
def test_end_points_have_their_stride_and_the_heads_follow_the_path(name):
    backbone, stride, expected = PATHS[name]
    model = build_deeplab(_arch(backbone), ModelOptions(num_classes=3, aspp_convs_filters=8,
                                                        decoder_filters=8))
    options = model.options
    assert options.output_stride == stride
    assert options.atrous_rates == tuple(96 * k // stride for k in (1, 2, 3))
    assert [b.rate for b in model.aspp.branches] == list(options.atrous_rates)
    ends = model.end_points(tf.fill((1, SIZE, SIZE, 3), 127.5))
    side = lambda s: (SIZE - 1) // s + 1  # noqa: E731
    assert ends["features"].shape[1:3] == (side(stride), side(stride))
    for s, point in expected.items():
        assert ends[point].shape[1:3] == (side(s), side(s)), (s, point)
    if stride > 4:
        assert options.decoder_output_stride == 4 and model.low_level_end_point == expected[4]
        assert ends["decoder"].shape[1:3] == (side(4), side(4))
        assert ends["logits"].shape[1:3] == (side(4), side(4))
    else:   # a path that ends at stride 4 has nothing finer to decode with
        assert options.decoder_output_stride is None and model.decoder is None
        assert ends["logits"].shape[1:3] == (side(4), side(4))
    assert ends["upsampled_logits"].shape == (1, SIZE, SIZE, 3)


@pytest.mark.parametrize("name", ["ends_at_16", "starts_at_8", "ends_at_32"])
def test_searched_paths_train_with_the_decoder_on(name):
    backbone, stride, _ = PATHS[name]
    # Seeded: with an unseeded initialisation six steps sometimes moved the stride-32 path's loss by
    # less than its noise (0.69308 -> 0.69311 in one CI run), so the test could fail by chance.
    keras.utils.set_random_seed(0)
    model = build_deeplab(_arch(backbone), ModelOptions(num_classes=2, aspp_convs_filters=8,
                                                        decoder_filters=8))
    assert model.decoder is not None
    rng = np.random.RandomState(0)
    images = tf.constant(rng.uniform(0, 255, (2, 33, 33, 3)), tf.float32)
    labels = tf.constant((images.numpy()[..., 0] > 127.5).astype(np.int32))
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    decoder_vars = model.decoder.trainable_variables
    before = [v.numpy().copy() for v in decoder_vars]
    losses = []
    for _ in range(6):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        assert all(g is not None for g in grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    assert any(np.abs(v.numpy() - b).max() > 0 for v, b in zip(decoder_vars, before))


def test_mismatched_strides_are_refused_naming_both():
    arch = _arch(PATHS["ends_at_16"][0])
    with pytest.raises(ValueError, match=r"--output_stride=8 .*output stride 16"):
        build_deeplab(arch, ModelOptions(num_classes=2, output_stride=8))
    with pytest.raises(ValueError, match=r"--decoder_output_stride=32 is coarser .* output stride 16"):
        ModelOptions(num_classes=2, decoder_output_stride=32).for_architecture(arch)
    with pytest.raises(ValueError, match=r"--decoder_output_stride=4: the path \[0, 0, 0\] has no end point"):
        ModelOptions(num_classes=2, decoder_output_stride=4).for_architecture(_arch((0, 0, 0)))
    explicit = ModelOptions(num_classes=2, output_stride=16, atrous_rates=(1, 2),
                            decoder_output_stride=8).for_architecture(arch)
    assert (explicit.output_stride, explicit.atrous_rates, explicit.decoder_output_stride) == (16, (1, 2), 8)


def test_published_architecture_keeps_the_official_heads():
    options = ModelOptions(num_classes=19).for_architecture(architecture.published(20))
    assert (options.output_stride, options.atrous_rates, options.decoder_output_stride) == (8, (12, 24, 36), 4)
