"""DeepLab model: exact parameter counts, official names of the full model, call convention."""

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture
from nas_deeplab.model.deeplab import ModelOptions, build_deeplab, preprocess
from nas_deeplab.official.names import official_variable_map
from nas_deeplab.model.summary import count_trainable_params


def test_param_count_s_regular_heads(deeplab_s_regular):
    assert count_trainable_params(deeplab_s_regular) == 10_147_427


def test_param_count_s_separable_heads(deeplab_s_separable):
    assert count_trainable_params(deeplab_s_separable) == 7_784_507


@pytest.mark.parametrize("preset,expected,backbone", [("auto_deeplab_m", 21_622_451, 17_612_096),
                                                      ("auto_deeplab_l", 44_424_691, 39_222_656)])
def test_param_count_m_l_regular_heads(preset, expected, backbone):
    model = build_deeplab(architecture.preset(preset),
                          ModelOptions(num_classes=19, aspp_with_separable_conv=False,
                                       decoder_use_separable_conv=False))
    assert count_trainable_params(model) == expected
    assert count_trainable_params(model.backbone) == backbone


def test_official_names_full_model(deeplab_s_separable, official_vars):
    got = [(k, tuple(int(d) for d in v.shape)) for k, v in official_variable_map(deeplab_s_separable).items()]
    assert got == official_vars("official_deeplab_hnasnet_full_vars_f20.tsv")
    assert len(got) == len(deeplab_s_separable.variables)


def test_regular_heads_names(deeplab_s_regular):
    names = official_variable_map(deeplab_s_regular)
    assert len(names) == len(deeplab_s_regular.variables)
    assert tuple(names["aspp1/weights"].shape) == (3, 3, 200, 256)
    assert tuple(names["aspp3/BatchNorm/gamma"].shape) == (256,)
    assert tuple(names["decoder/decoder_conv0/decoder_conv0_1/weights"].shape) == (3, 3, 304, 256)
    assert tuple(names["decoder/decoder_conv0/decoder_conv0_2/weights"].shape) == (3, 3, 256, 256)
    assert tuple(names["logits/semantic/biases"].shape) == (19,)


def test_preprocess_is_zero_mean_unit_range():
    np.testing.assert_allclose(preprocess(tf.constant([0.0, 127.5, 255.0])).numpy(),
                               [-1.0, 0.0, 1.0], atol=1e-6)


def test_call_convention_and_dynamic_equals_static(small_deeplab):
    model = small_deeplab
    images = tf.random.uniform((2, 65, 65, 3), 0.0, 255.0, seed=1)
    out_static = model(images, training=False)   # eager: every shape is static
    assert out_static.shape == (2, 65, 65, 3) and out_static.dtype == tf.float32
    dynamic = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    scale = float(np.abs(out_static.numpy()).max())
    assert scale > 0
    np.testing.assert_allclose(dynamic(images).numpy(), out_static.numpy(), rtol=1e-4,
                               atol=1e-4 * scale)
    # Any size works with the same weights (sizes that are not 32k+1 included).
    assert tuple(dynamic(images[:1, :50, :47]).shape) == (1, 50, 47, 3)


def test_training_mode_uses_batch_stats(small_deeplab):
    model = small_deeplab
    model.step_variable.assign(10)
    images = tf.random.uniform((2, 33, 33, 3), 0.0, 255.0, seed=2)
    a = model(images, training=False)
    np.testing.assert_array_equal(a.numpy(), model(images, training=False).numpy())
    bn = model.backbone.conv0_bn
    before = bn.moving_mean.numpy().copy()
    b = model(images, training=True)
    assert a.shape == b.shape == (2, 33, 33, 3)
    # Batch statistics: the moving mean moves by (1 - 0.9997) * (batch mean - moving mean).
    assert not np.allclose(bn.moving_mean.numpy(), before)
    assert not np.allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-3 * float(np.abs(a).max()))
    # Weight decay: one slim-L2 term per regularised kernel.
    assert len(model.losses) > 0


def test_step_variable_is_the_callers():
    step = tf.Variable(7, dtype=tf.int64, trainable=False)
    model = build_deeplab(architecture.Architecture(("skip_connect", "skip_connect"), (0, 1), (0,), 2),
                          ModelOptions(num_classes=2, decoder_output_stride=None,
                                       aspp_convs_filters=8),
                          step_variable=step)
    assert model.step_variable is step
    assert all(v is not step for v in model.variables)
    assert model.decoder is None
    out = model(tf.zeros((1, 17, 17, 3)) + 127.5)
    assert out.shape == (1, 17, 17, 2)


def test_options_reject_bad_values():
    published = architecture.published(8)
    with pytest.raises(ValueError, match=r"--output_stride=16 .* output stride 8"):
        ModelOptions(num_classes=19, output_stride=16).for_architecture(published)
    with pytest.raises(ValueError, match=r"--decoder_output_stride=16 is coarser .* output stride 8"):
        ModelOptions(num_classes=19, decoder_output_stride=16).for_architecture(published)
    with pytest.raises(ValueError, match="decoder_output_stride"):
        ModelOptions(num_classes=19, decoder_output_stride=2)
    with pytest.raises(ValueError, match="output_stride"):
        ModelOptions(num_classes=19, output_stride=12)
    with pytest.raises(ValueError, match="drop_path_keep_prob"):
        ModelOptions(num_classes=19, drop_path_keep_prob=0.0)
