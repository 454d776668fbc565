"""train.py --tf_initial_checkpoint: complete restores only, except official DeepLab's
--initialize_last_layer=false (and --last_layers_contain_logits_only), whose layers start afresh.

Checkpoints are written from models of the published cell and path at F=4 with 3 classes; the
model being initialised has 5 (or 6, the synthetic set's). "Restored" is checked bit-for-bit against
the checkpoint's tensors read by name; "left out" against the values before the restore.
"""

import importlib.util
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from nas_deeplab.official import checkpoint as oc
from nas_deeplab.official.names import HEAD_SCOPES, in_scopes, official_variable_map
from nas_deeplab.training import checkpointing
from nas_deeplab.training.model_config import ModelConfig
from nas_deeplab.training.trainer import initialise_from_checkpoint

from training_fixtures import tiny_architecture

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
F = 4
DENSE = dict(aspp_with_separable_conv=False, decoder_use_separable_conv=False)


def _model(num_classes, seed, **heads):
    model, _ = ModelConfig(filter_multiplier=F, **heads).build(num_classes)
    rng = np.random.RandomState(seed)
    for v in model.variables:   # distinct from any other model's values
        v.assign((v.numpy() + rng.uniform(0.1, 0.2, v.shape)).astype(np.float32))
    return model


def _write(model, folder):
    return oc.write_official_checkpoint(official_variable_map(model), os.path.join(folder, "model.ckpt"))


@pytest.fixture(scope="module")
def official_3(tmp_path_factory):
    return _write(_model(3, 1), str(tmp_path_factory.mktemp("sep3")))


def _snapshot(model):
    return {n: v.numpy().copy() for n, v in official_variable_map(model).items()}


def _assert_restored_except(model, prefix, before, left_out):
    """Names under `left_out` scopes keep `before`; every other one equals the checkpoint exactly."""
    reader = tf.train.load_checkpoint(prefix)
    kept = 0
    for name, var in official_variable_map(model).items():
        if in_scopes(name, left_out):
            np.testing.assert_array_equal(var.numpy(), before[name], err_msg=name)
            kept += 1
        else:
            np.testing.assert_array_equal(var.numpy(), reader.get_tensor(name), err_msg=name)
    return kept


def test_other_classes_refused_by_default_then_logits_only_or_all_heads_start_afresh(official_3):
    model = _model(5, 2)
    before = _snapshot(model)
    out = io.StringIO()
    with pytest.raises(oc.CheckpointError, match=r"it has 3 classes \(logits/semantic/weights\), the model 5 "
                                                 r"classes: to fine-tune with new last layers, pass "
                                                 r"--initialize_last_layer=false"):
        initialise_from_checkpoint(model, official_3, out)
    _assert_restored_except(model, official_3, before, left_out=("",))   # "" covers all: nothing assigned

    info = initialise_from_checkpoint(model, official_3, out, initialize_last_layer=False,
                                      last_layers_contain_logits_only=True)
    assert sorted(info.excluded) == ["logits/semantic/biases", "logits/semantic/weights"]
    assert _assert_restored_except(model, official_3, before, left_out=("logits",)) == 2
    assert "left at their initial values by --initialize_last_layer=false" in out.getvalue()

    model = _model(5, 3)
    before = _snapshot(model)
    info = initialise_from_checkpoint(model, official_3, out, initialize_last_layer=False)
    heads = [n for n in before if not n.startswith("hnasnet/")]
    assert sorted(info.excluded) == sorted(heads) and len(info.restored) == 1323   # the official backbone
    assert _assert_restored_except(model, official_3, before, left_out=HEAD_SCOPES) == len(heads)


def test_dense_heads_into_a_separable_model_name_the_flags_unless_the_heads_start_afresh(tmp_path):
    prefix = _write(_model(5, 4, **DENSE), str(tmp_path))
    model = _model(5, 5)
    before = _snapshot(model)
    with pytest.raises(oc.CheckpointError) as e:
        initialise_from_checkpoint(model, prefix, io.StringIO())
    msg = str(e.value)
    assert "\n" not in msg
    assert ("it has regular 3x3 ASPP convs (aspp1/weights), the model separable 3x3 ASPP convs: pass "
            "--aspp_with_separable_conv=false") in msg
    assert ("it has regular 3x3 decoder convs (decoder/decoder_conv0/decoder_conv0_1/weights), the model "
            "separable 3x3 decoder convs: pass --decoder_use_separable_conv=false") in msg
    with pytest.raises(oc.CheckpointError, match="--aspp_with_separable_conv=false"):   # logits only: ASPP stays
        initialise_from_checkpoint(model, prefix, io.StringIO(), initialize_last_layer=False,
                                   last_layers_contain_logits_only=True)
    _assert_restored_except(model, prefix, before, left_out=("",))
    initialise_from_checkpoint(model, prefix, io.StringIO(), initialize_last_layer=False)
    _assert_restored_except(model, prefix, before, left_out=HEAD_SCOPES)


def test_a_missing_backbone_variable_is_refused_whatever_the_flags(official_3, tmp_path):
    missing = "hnasnet/cell_4/comb_iter_1/right/atrous_3x3/weights"
    reader = tf.train.load_checkpoint(official_3)
    oc.write_official_checkpoint({n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
                                  if n != missing}, str(tmp_path / "model.ckpt"))
    model = _model(3, 6)
    before = _snapshot(model)
    for last in (True, False):
        with pytest.raises(oc.CheckpointError, match=f"lacks 1 of the .* variables to restore: {missing}; a "
                                                     "partial restore is refused"):
            initialise_from_checkpoint(model, str(tmp_path), io.StringIO(), initialize_last_layer=last)
    _assert_restored_except(model, official_3, before, left_out=("",))


def test_our_own_checkpoint_follows_the_same_rule(tmp_path):
    source = _model(3, 7)
    meta = checkpointing.build_metadata(tiny_architecture(), 3, {})
    checkpointing.ResumableCheckpoint(str(tmp_path), meta, model=source).save(1)
    model = _model(5, 8)
    before = _snapshot(model)
    with pytest.raises(oc.CheckpointError, match=r"Received incompatible tensor with shape \(3,\) .* variable "
                                                 r"with shape \(5,\) .*--initialize_last_layer=false"):
        initialise_from_checkpoint(model, str(tmp_path), io.StringIO())
    for name, var in official_variable_map(model).items():   # the failed restore assigned nothing
        np.testing.assert_array_equal(var.numpy(), before[name], err_msg=name)
    info = initialise_from_checkpoint(model, str(tmp_path), io.StringIO(), initialize_last_layer=False,
                                      last_layers_contain_logits_only=True)
    assert info.kind == oc.KIND_TF2 and len(info.excluded) == 2
    want = _snapshot(source)
    for name, var in official_variable_map(model).items():
        np.testing.assert_array_equal(var.numpy(), before[name] if name.startswith("logits/") else want[name],
                                      err_msg=name)


def _train_cli():
    spec = importlib.util.spec_from_file_location("_train_cli_init", os.path.join(ROOT, "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_cli_refuses_other_classes_in_one_line_and_fine_tunes_with_the_official_flag(tmp_path, capsys):
    from nas_deeplab.data import synthetic
    data = str(tmp_path / "data")
    synthetic.build(data, num_train=2, num_val=1)
    arch = str(tmp_path / "tiny.json")
    tiny_architecture().save(arch)
    heads = dict(atrous_rates=(2,), decoder_output_stride=None)
    source, _ = ModelConfig(architecture=arch, **heads).build(3)
    prefix = _write(source, str(tmp_path / "official"))
    cli = _train_cli()
    argv = [f"--architecture={arch}", "--atrous_rates=2", "--decoder_output_stride=none", f"--dataset_dir={data}",
            f"--tf_initial_checkpoint={prefix}", "--training_number_of_steps=1", "--train_batch_size=2",
            "--train_crop_size=33,33", "--strategy=one_device", "--eval_after_training=false"]

    def run(extra):
        fv = flags.FlagValues()
        cli.define_flags(fv)
        fv(["train.py"] + argv + extra)
        out = io.StringIO()
        return cli.run(fv, stream=out), out.getvalue()

    rc, _ = run([f"--train_logdir={tmp_path / 'refused'}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("train.py: error: checkpoint") and "it has 3 classes (logits/semantic/weights), the " \
        "model 6" in err and "--initialize_last_layer=false" in err
    rc, out = run([f"--train_logdir={tmp_path / 'tuned'}", "--initialize_last_layer=false",
                   "--last_layers_contain_logits_only"])
    assert rc == 0, capsys.readouterr().err
    n = len(source.variables)
    assert (f"restored {n - 2} of {n} model variables from official-format checkpoint {prefix}; 2 left at "
            "their initial values by --initialize_last_layer=false: logits/semantic/weights, "
            "logits/semantic/biases") in out, out
