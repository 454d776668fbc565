"""Official-format (TF1 name-based) checkpoints: exact names/shapes, TF1 readability, the way back."""

import os

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab.official import checkpoint as oc
from nas_deeplab.official import restore as restore_lib

from export_testlib import make_standin, read_tsv, standin_name_map


def test_write_then_read_back_exactly_with_state_file_and_global_step(tmp_path):
    model = make_standin(seed=1)
    prefix = oc.write_official_checkpoint(standin_name_map(model), str(tmp_path / "model.ckpt-7"),
                                          global_step=7)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.ckpt-7.data-00000-of-00001",
                                            "model.ckpt-7.index"]
    assert tf.train.latest_checkpoint(str(tmp_path)) == prefix
    reader = tf.train.load_checkpoint(prefix)
    assert reader.get_tensor("global_step") == 7
    assert reader.get_variable_to_dtype_map()["global_step"] == tf.int64
    for name, var in standin_name_map(model).items():
        np.testing.assert_array_equal(reader.get_tensor(name), var.numpy())
    assert oc.checkpoint_kind(str(tmp_path)) == oc.KIND_OFFICIAL

    fresh = make_standin(seed=2)
    report = restore_lib.restore_official(standin_name_map(fresh), str(tmp_path))
    assert sorted(report.restored) == sorted(standin_name_map(model)) and report.excluded == []
    assert report.unused == ["global_step"]
    for a, b in zip(model.variables, fresh.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_tf1_saver_restores_it_by_name_in_graph_mode(tmp_path):
    """What the official code does with --tf_initial_checkpoint: variables by slim name."""
    model = make_standin(seed=3)
    names = standin_name_map(model)
    prefix = oc.write_official_checkpoint(names, str(tmp_path / "model.ckpt"))
    with tf.Graph().as_default():
        tf1_vars = {n: tf.compat.v1.get_variable(n.replace("/", "_"), shape=v.shape, dtype=tf.float32)
                    for n, v in names.items()}
        saver = tf.compat.v1.train.Saver(var_list=tf1_vars)
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, prefix)
            values = sess.run(tf1_vars)
    for n, v in names.items():
        np.testing.assert_array_equal(values[n], v.numpy())


def test_tf2_checkpoint_is_told_apart(tmp_path):
    model = make_standin()
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    assert oc.checkpoint_kind(path) == oc.KIND_TF2
    with pytest.raises(oc.CheckpointError, match="TF2 object-based"):
        restore_lib.restore_official(standin_name_map(model), path)


def test_shape_mismatch_names_variable_and_both_shapes_and_assigns_nothing(tmp_path):
    small, big = make_standin(num_classes=3, seed=4), make_standin(num_classes=5, seed=5)
    oc.write_official_checkpoint(standin_name_map(small), str(tmp_path / "model.ckpt"))
    before = [v.numpy().copy() for v in big.variables]
    with pytest.raises(oc.CheckpointError) as e:
        restore_lib.restore_official(standin_name_map(big), str(tmp_path))
    assert "logits/semantic/weights: checkpoint has shape [1, 1, 8, 3], model expects [1, 1, 8, 5]" in str(e.value)
    for b, v in zip(before, big.variables):
        np.testing.assert_array_equal(b, v.numpy())


def test_missing_names_are_refused_naming_them_unless_their_scope_is_excluded(tmp_path):
    """Complete or not at all: a variable the checkpoint lacks is an error naming it, with nothing
    assigned; leaving its scope out on purpose (--initialize_last_layer=false) restores the rest."""
    model = make_standin(seed=6)
    names = standin_name_map(model)
    partial = {k: v for k, v in names.items() if not k.startswith("logits/")}
    oc.write_official_checkpoint(partial, str(tmp_path / "model.ckpt"))
    fresh = make_standin(seed=7)
    before = [v.numpy().copy() for v in fresh.variables]
    with pytest.raises(oc.CheckpointError, match=r"lacks 2 of the 7 variables to restore: "
                                                 r"logits/semantic/weights, logits/semantic/biases; a partial "
                                                 r"restore is refused \(.*--initialize_last_layer=false"):
        restore_lib.restore_official(standin_name_map(fresh), str(tmp_path))
    for b, v in zip(before, fresh.variables):
        np.testing.assert_array_equal(b, v.numpy())

    report = restore_lib.restore_official(standin_name_map(fresh), str(tmp_path), exclude_scopes=("logits",))
    assert sorted(report.excluded) == ["logits/semantic/biases", "logits/semantic/weights"]
    assert len(report.restored) == 5 and report.unused == []
    for name, var in standin_name_map(fresh).items():
        if name.startswith("logits/"):   # left exactly as initialised
            np.testing.assert_array_equal(var.numpy(), before[[v.path for v in fresh.variables].index(var.path)])
        else:
            np.testing.assert_array_equal(var.numpy(), names[name].numpy())

    renamed = {"other/" + k: v for k, v in names.items()}
    with pytest.raises(oc.CheckpointError, match="holds none of the model's variables"):
        restore_lib.restore_official(renamed, str(tmp_path))


def test_unused_model_entries_are_refused_only_when_asked_and_slots_never_count(tmp_path):
    """Export refuses a checkpoint holding model variables the model lacks (it was saved from
    another model); global_step and optimizer slots (`<var>/Momentum`) are not model variables."""
    model = make_standin(seed=8)
    names = standin_name_map(model)
    extra = {**names, "net/conv/weights/Momentum": np.ones((3, 3, 3, 8), np.float32),
             "aspp5/weights": np.ones((1, 1, 8, 8), np.float32)}
    oc.write_official_checkpoint(extra, str(tmp_path / "model.ckpt"), global_step=3)
    report = restore_lib.restore_official(standin_name_map(make_standin()), str(tmp_path))
    assert report.unused == ["aspp5/weights", "global_step", "net/conv/weights/Momentum"]
    with pytest.raises(oc.CheckpointError, match=r"holds 1 model variables this model does not have: "
                                                 r"aspp5/weights; it was saved from a different model"):
        restore_lib.restore_official(standin_name_map(make_standin()), str(tmp_path), refuse_unused=True)


def test_missing_and_unreadable_checkpoints(tmp_path):
    with pytest.raises(oc.CheckpointError, match="checkpoint not found"):
        oc.resolve_checkpoint_prefix(str(tmp_path / "nope.ckpt"))
    with pytest.raises(oc.CheckpointError, match="no checkpoint found in folder"):
        oc.resolve_checkpoint_prefix(str(tmp_path))
    (tmp_path / "bad.ckpt.index").write_bytes(b"this is not a tensor bundle")
    with pytest.raises(oc.CheckpointError, match="cannot read checkpoint .*bad.ckpt"):
        oc.checkpoint_kind(str(tmp_path / "bad.ckpt"))


def test_failed_write_leaves_no_files(tmp_path):
    model = make_standin()
    with pytest.raises(oc.CheckpointError):
        oc.write_official_checkpoint({**standin_name_map(model), "global_step": 1}, str(tmp_path / "m"),
                                     global_step=3)
    assert os.listdir(tmp_path) == []
    blocker = tmp_path / "m.index"
    blocker.mkdir()  # renaming the index onto a folder fails
    with pytest.raises(OSError):
        oc.write_official_checkpoint(standin_name_map(model), str(tmp_path / "m"))
    assert os.listdir(tmp_path) == ["m.index"]
    assert "checkpoint" not in os.listdir(tmp_path)


# -- the real network against the official variable lists ------------------------------------------

def _written_names_and_shapes(model, arch, folder):
    from nas_deeplab.official.names import official_variable_map
    prefix = oc.export_official_checkpoint(model, os.path.join(folder, "model.ckpt-0"), architecture=arch,
                                           global_step=0)
    order = [(n, tuple(v.shape)) for n, v in official_variable_map(model).items()]
    stored = {n: tuple(s) for n, s in tf.train.list_variables(prefix)}
    assert stored.pop("global_step") == ()
    return order, stored


@pytest.mark.parametrize("f", [20, 8])
def test_backbone_checkpoint_equals_official_list_exactly(f, tmp_path):
    from nas_deeplab.architecture import published
    from nas_deeplab.model.deeplab import build_backbone
    arch = published(f)
    backbone = build_backbone(arch, input_shape=(None, None, 3))
    order, stored = _written_names_and_shapes(backbone, arch, str(tmp_path))
    expected = read_tsv(f"official_hnasnet_vars_f{f}.tsv")
    assert len(expected) == 1323
    assert stored == dict(expected)
    assert order == expected  # written in the official creation order


def test_full_model_checkpoint_equals_official_list_exactly(tmp_path):
    from nas_deeplab.architecture import published
    from nas_deeplab.model.deeplab import ModelOptions, build_deeplab
    arch = published(20)
    model = build_deeplab(arch, ModelOptions(num_classes=19))  # official default flags, 19 classes
    order, stored = _written_names_and_shapes(model, arch, str(tmp_path))
    expected = read_tsv("official_deeplab_hnasnet_full_vars_f20.tsv")
    assert len(expected) == 1395
    assert stored == dict(expected)
    assert order == expected
