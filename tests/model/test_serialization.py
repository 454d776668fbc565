"""Keras serialisation of every layer of the final network: registered, configs of plain data that
rebuild the same layer (same sublayers, variable names and shapes), options and dtype policy kept."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture
from nas_deeplab.model import layers, operations
from nas_deeplab.model.deeplab import DeepLab, ModelOptions, build_deeplab
from nas_deeplab.model.serialization import options_from_config, options_to_config

# A searched cell with every op kind; the path starts at stride 8 and ends at 16 (decoder on Stem).
SEARCHED_OPS = ("max_pool_3x3", "skip_connect", "avg_pool_3x3", "atrous_3x3",
                "separable_5x5_2", "skip_connect", "atrous_5x5", "separable_3x3_2")
SEARCHED_IDX = (0, 1, 1, 2, 3, 0, 4, 2)

# Every layer class the model is made of, written out by hand: a new layer class without a
# registration (or one this list forgets) fails the test.
EXPECTED_CLASSES = {"DeepLab", "HNASNet", "Cell", "Block", "ScheduledDropPath", "SeparableOp",
                    "AtrousOp", "PoolOp", "SkipOp", "Conv2D", "SeparableConv2D", "BatchNorm",
                    "ASPP", "ConvBNReLU", "SplitSeparableConv", "DepthwiseBNReLU",
                    "DepthwiseConv2D", "Dropout", "Decoder", "Logits"}


@pytest.fixture(scope="module")
def searched_model():
    arch = architecture.Architecture(SEARCHED_OPS, SEARCHED_IDX, (1, 2, 3, 2), 2, name="searched")
    # Separable ASPP, regular decoder convs: both head kinds in one model.
    return build_deeplab(arch, ModelOptions(num_classes=3, aspp_convs_filters=8, decoder_filters=8,
                                            decoder_use_separable_conv=False,
                                            drop_path_keep_prob=0.7, total_training_steps=10))


def _weights(layer):
    return [(w.name, tuple(w.shape)) for w in layer.weights]


def test_every_layer_is_registered_and_rebuilds_from_its_config(searched_model):
    seen = set()
    for layer in searched_model._flatten_layers(include_self=True):
        cls = type(layer)
        assert keras.saving.get_registered_name(cls) == f"nas_deeplab>{cls.__name__}"
        config = layer.get_config()
        json.dumps(config)                                  # plain data only
        if cls.__name__ in seen and cls is not operations.PoolOp:
            continue
        seen.add(cls.__name__)
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(clone) is cls
        assert clone.get_config() == config
        assert clone.built == layer.built      # drop path has no weights and is never built
        assert _weights(clone) == _weights(layer), layer.name
    assert seen == EXPECTED_CLASSES


def test_model_config_holds_architecture_and_options_as_plain_data(searched_model):
    config = json.loads(json.dumps(searched_model.get_config()))
    assert config["arch"]["backbone"] == [1, 2, 3, 2]
    assert config["arch"]["operations"] == list(SEARCHED_OPS)
    assert config["options"] == {
        "num_classes": 3, "atrous_rates": [6, 12, 18], "output_stride": 16,
        "decoder_output_stride": 4, "aspp_with_separable_conv": True,
        "decoder_use_separable_conv": False, "weight_decay": 4e-5, "drop_path_keep_prob": 0.7,
        "total_training_steps": 10, "sync_batch_norm": False, "add_image_level_feature": True,
        "aspp_convs_filters": 8, "decoder_filters": 8, "fine_tune_batch_norm": True}
    clone = DeepLab.from_config(config)
    assert clone.options == searched_model.options and clone.arch == searched_model.arch
    assert [v.path for v in clone.variables] == [v.path for v in searched_model.variables]
    assert clone.low_level_end_point == "Stem"
    # The step variable is not a weight: a fresh one at 0.
    assert int(clone.step_variable.numpy()) == 0
    assert clone.step_variable is not searched_model.step_variable


def test_options_from_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown model options"):
        ModelOptions.from_dict({"num_classes": 2, "no_such_flag": 1})


def test_batch_norm_flags_survive(searched_model):
    bn = layers.BatchNorm(epsilon=1e-5, synchronized=True, use_batch_stats=False, name="bn")
    clone = layers.BatchNorm.from_config(bn.get_config())
    assert (clone.epsilon, clone.synchronized, clone.use_batch_stats, clone.momentum) == \
        (1e-5, True, False, 0.9997)
    assert clone.center and clone.scale


def test_duck_typed_options_keep_exactly_their_attributes():
    class Opts:                       # what tests and callers pass: only some ModelOptions fields
        fine_tune_batch_norm = False
        weight_decay = 1e-3

    op = operations.make_op("atrous_3x3", 4, options=Opts(), weight_decay=2e-3, name="op")
    clone = operations.AtrousOp.from_config(op.get_config())
    assert clone.bn.use_batch_stats is False
    restored = options_from_config(options_to_config(Opts()))
    assert vars(restored) == {"fine_tune_batch_norm": False, "weight_decay": 1e-3}
    assert float(clone.conv.kernel_regularizer.l2) == pytest.approx(2e-3 / 2)   # slim L2


def test_sublayers_are_rebuilt_under_the_model_dtype_policy():
    arch = architecture.Architecture(("skip_connect", "atrous_3x3"), (0, 1), (0, 1), 2)
    options = ModelOptions(num_classes=2, aspp_convs_filters=4, decoder_filters=4)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_deeplab(arch, options)
    finally:
        keras.config.set_dtype_policy(previous)
    clone = DeepLab.from_config(json.loads(json.dumps(model.get_config())))   # global: float32
    assert clone.backbone.conv0.compute_dtype == "bfloat16"
    assert clone.logits.conv.compute_dtype == "float32"     # the logits stay float32
    assert [(v.path, v.dtype) for v in clone.variables] == [(v.path, v.dtype) for v in model.variables]
    x = tf.random.uniform((1, 33, 33, 3), 0.0, 255.0, seed=3)
    for v, w in zip(clone.variables, model.variables):
        v.assign(w)
    np.testing.assert_array_equal(clone(x).numpy(), model(x).numpy())
