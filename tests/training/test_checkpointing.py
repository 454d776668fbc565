import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture as arch_lib
from nas_deeplab.training import checkpointing


def _model(width=3):
    inp = keras.Input((4,))
    return keras.Model(inp, keras.layers.Dense(width, name="d")(keras.layers.Dense(5, name="h")(inp)))


def _setup(tmp_path, width=3, f=8):
    model = _model(width)
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    opt.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    meta = checkpointing.build_metadata(arch_lib.published(f), 6, {"atrous_rates": [12, 24, 36]})
    return model, opt, step, checkpointing.ResumableCheckpoint(str(tmp_path), meta, model=model,
                                                               optimizer=opt, step=step)


def test_save_restore_roundtrip_keeps_previous_checkpoint(tmp_path):
    model, opt, step, ck = _setup(tmp_path)
    assert ck.restore_latest() is None
    for s in (5, 10):
        step.assign(s)
        opt.apply_gradients(zip([tf.ones_like(v) for v in model.trainable_variables], model.trainable_variables))
        ck.save(s)
    want = [v.numpy() for v in model.variables + opt.variables]
    assert sorted(os.path.basename(p) for p in ck.manager.checkpoints) == ["ckpt-10", "ckpt-5"]
    meta = json.load(open(tmp_path / checkpointing.META_FILE))
    assert meta["num_classes"] == 6 and meta["architecture"]["filter_multiplier"] == 8

    model2, opt2, step2, ck2 = _setup(tmp_path)
    assert ck2.restore_latest().endswith("ckpt-10")
    assert int(step2.numpy()) == 10
    for a, b in zip(want, [v.numpy() for v in model2.variables + opt2.variables]):
        np.testing.assert_array_equal(a, b)


def test_other_architecture_is_refused_with_the_difference(tmp_path):
    _, _, _, ck = _setup(tmp_path, f=8)
    ck.save(1)
    _, _, _, ck2 = _setup(tmp_path, f=20)
    with pytest.raises(checkpointing.CheckpointMismatchError, match="filter_multiplier: checkpoint 8 vs now 20"):
        ck2.restore_latest()


def test_incompatible_version_and_partial_restore_refused(tmp_path):
    _, _, _, ck = _setup(tmp_path)
    ck.save(1)
    meta_path = tmp_path / checkpointing.META_FILE
    meta = json.load(open(meta_path))
    json.dump(dict(meta, version=99), open(meta_path, "w"))
    _, _, _, ck2 = _setup(tmp_path)
    with pytest.raises(checkpointing.CheckpointMismatchError, match="version 99"):
        ck2.restore_latest()
    json.dump(meta, open(meta_path, "w"))
    # Same metadata but a model with other shapes: never a silent partial restore.
    _, _, _, ck3 = _setup(tmp_path, width=4)
    with pytest.raises((checkpointing.CheckpointMismatchError, ValueError)):
        ck3.restore_latest()


def test_checkpoint_without_metadata_is_refused(tmp_path):
    model = _model()
    tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    _, _, _, ck = _setup(tmp_path)
    with pytest.raises(checkpointing.CheckpointMismatchError, match="no checkpoint_meta.json"):
        ck.restore_latest()


def test_initial_weights_from_our_checkpoint_must_fit(tmp_path):
    model, _, step, ck = _setup(tmp_path)
    ck.save(1)
    fresh = _model()
    assert checkpointing.restore_model_weights(fresh, str(tmp_path)).endswith("ckpt-1")
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(checkpointing.CheckpointMismatchError):
        checkpointing.restore_model_weights(_model(width=4), str(tmp_path))


class _ListHolder(keras.layers.Layer):
    """Sub-layers in a plain Python list: invisible to tf.train.Checkpoint's object graph."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.parts = [keras.layers.Dense(3, name=f"part{i}") for i in range(2)]
        self.bn = [keras.layers.BatchNormalization(name="bn")]

    def call(self, x, training=False):
        return self.bn[0](self.parts[1](self.parts[0](x)), training=training)


def _list_model():
    inp = keras.Input((4,))
    return keras.Model(inp, _ListHolder(name="holder")(inp))


def test_every_model_variable_is_saved_even_when_object_tracking_misses_it(tmp_path):
    model = _list_model()
    for v in model.variables:
        v.assign(np.random.RandomState(len(v.path)).randn(*v.shape).astype(np.float32))
    meta = checkpointing.build_metadata(arch_lib.published(8), 3)
    checkpointing.ResumableCheckpoint(str(tmp_path), meta, model=model).save(1)
    stored = tf.train.load_checkpoint(str(tmp_path / "ckpt-1")).get_variable_to_shape_map()
    assert sum(k.startswith(checkpointing.MODEL_KEY + "/") for k in stored) == len(model.variables) == 8
    # (what plain object-graph checkpointing of the model would have kept)
    plain = tf.train.Checkpoint(model=model).write(str(tmp_path / "plain" / "x"))
    assert sum(k.startswith("model/") for k in tf.train.load_checkpoint(plain).get_variable_to_shape_map()) < 8
    fresh = _list_model()
    checkpointing.restore_model_weights(fresh, str(tmp_path))
    for a, b in zip(model.variables, fresh.variables):  # moving statistics included
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
