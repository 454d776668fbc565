"""Official-format checkpoints into export.py: the heads are read off the checkpoint's names and shapes,
explicit flags that contradict them are refused, and a restore is complete or nothing is exported.

Checkpoints are written by the library's official writer from models built with the options under
test (published cell and path, F=4, 3 classes); outputs are compared bit-for-bit with those models and,
for the regular-conv heads, with the independent TF1 graph of tf1_reference.py.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture as arch_lib
from nas_deeplab.export import exporter
from nas_deeplab.model.deeplab import ModelOptions, build_deeplab
from nas_deeplab.official import checkpoint as oc
from nas_deeplab.official.names import official_variable_map

from export_testlib import randomize
import tf1_reference

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
F, NUM_CLASSES = 4, 3
DENSE = dict(aspp_with_separable_conv=False, decoder_use_separable_conv=False)


def _official(tmp_path_factory, name, seed, **options):
    """(checkpoint folder, model) for a model built with `options`, written by the library."""
    arch = arch_lib.published(F)
    model = randomize(build_deeplab(arch, ModelOptions(num_classes=NUM_CLASSES, **options)), seed)
    folder = str(tmp_path_factory.mktemp(name))
    oc.export_official_checkpoint(model, os.path.join(folder, "model.ckpt-9"), architecture=arch, global_step=9)
    return folder, model


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return _official(tmp_path_factory, "dense", 1, **DENSE)


def _images(seed, h=41, w=53):
    return np.random.RandomState(seed).randint(0, 256, (1, h, w, 3)).astype(np.float32)


def _export(tmp_path, folder, **kw):
    cfg = exporter.ExportConfig(str(tmp_path / "out"), folder, export_format="official_checkpoint", **kw)
    return exporter.run_export(cfg)


def test_dense_head_checkpoint_exports_with_dense_heads_inferred_and_equal_outputs(dense, tmp_path):
    """The reported bug: no --aspp_with_separable_conv=false / --decoder_use_separable_conv=false. The
    heads come from the names (aspp1/weights, decoder/decoder_conv0/decoder_conv0_1/weights), all 1370
    variables are restored and the model computes what the written one and the TF1 graph compute."""
    folder, model = dense
    result = _export(tmp_path, folder)
    fresh = result.model
    assert fresh.options.aspp_with_separable_conv is False
    assert fresh.options.decoder_use_separable_conv is False
    assert fresh.options.decoder_output_stride == 4 and fresh.options.atrous_rates == (12, 24, 36)
    assert len(result.restore.restored) == len(model.variables) == 1370 and result.restore.excluded == []
    for a, b in zip(model.variables, fresh.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    x = _images(0)
    np.testing.assert_array_equal(model(x, training=False).numpy(), fresh(x, training=False).numpy())

    images = _images(1, 65, 97)
    ref, tf1_names = tf1_reference.run_reference(tf.train.latest_checkpoint(folder), images, result.architecture,
                                                 NUM_CLASSES, separable_heads=False)
    assert set(tf1_names) == set(official_variable_map(fresh))  # the official dense graph's variables
    ours = fresh(tf.constant(images), training=False).numpy()
    np.testing.assert_allclose(ours, ref["logits"], rtol=1e-4, atol=1e-4)
    flags_txt = open(os.path.join(str(tmp_path / "out"), "official_flags.txt")).read().splitlines()
    assert "--aspp_with_separable_conv=false" in flags_txt and "--decoder_use_separable_conv=false" in flags_txt


@pytest.mark.parametrize("options,expect", [
    (dict(decoder_output_stride=None, atrous_rates=()), dict(decoder_output_stride=None, atrous_rates=())),
    (dict(decoder_output_stride=8, aspp_with_separable_conv=False), dict(decoder_output_stride=8)),
])
def test_decoder_and_atrous_branches_are_inferred_too(options, expect, tmp_path_factory, tmp_path):
    folder, model = _official(tmp_path_factory, "variant", 2, **options)
    fresh = _export(tmp_path, folder).model
    for key, value in {**options, **expect}.items():
        assert getattr(fresh.options, key) == value, key
    x = _images(3)
    np.testing.assert_array_equal(model(x, training=False).numpy(), fresh(x, training=False).numpy())


def test_cli_without_head_flags_exits_0_only_with_everything_restored(dense, tmp_path):
    folder, model = dense
    out = str(tmp_path / "tf1")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "export.py"), f"--checkpoint_path={folder}",
                           f"--export_path={out}", "--export_format=official_checkpoint"],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "restored all 1370 model variables from official-format checkpoint" in proc.stdout
    written, source = tf.train.load_checkpoint(out), tf.train.load_checkpoint(folder)
    assert written.get_variable_to_shape_map() == source.get_variable_to_shape_map()
    for name in official_variable_map(model):
        np.testing.assert_array_equal(written.get_tensor(name), source.get_tensor(name), err_msg=name)


@pytest.mark.parametrize("kw,message", [
    (dict(structure={"aspp_with_separable_conv": True}),
     r"--aspp_with_separable_conv=true contradicts checkpoint \S+: it has regular 3x3 ASPP convs "
     r"\(aspp1/weights\); leave --aspp_with_separable_conv unset"),
    (dict(structure={"decoder_use_separable_conv": True}),
     r"--decoder_use_separable_conv=true contradicts .*: it has regular 3x3 decoder convs "
     r"\(decoder/decoder_conv0/decoder_conv0_1/weights\)"),
    (dict(structure={"decoder_output_stride": None}),
     r"--decoder_output_stride=none contradicts .*: it has a decoder at stride 4 "
     r"\(decoder/feature_projection0/weights reads 20 channels\)"),
    (dict(structure={"decoder_output_stride": 8}),
     r"--decoder_output_stride=8 contradicts .*: it has a decoder at stride 4"),
    (dict(structure={"atrous_rates": [6, 12]}),
     r"--atrous_rates=6,12 contradicts .*: it has 3 atrous ASPP branches \(aspp1/weights\)"),
    (dict(filter_multiplier=8),
     r"it has filter multiplier 4 \(hnasnet/cell_0/1x1/weights has 4 outputs\), the model 8: pass "
     r"--nas_stem_output_num_conv_filters=4"),
    (dict(num_classes=5), r"--num_classes says 5, logits/semantic/weights in the checkpoint says 3"),
])
def test_explicit_flags_that_contradict_the_checkpoint_are_refused_naming_both(dense, tmp_path, kw, message):
    with pytest.raises(exporter.ExportError, match=message):
        _export(tmp_path, dense[0], **kw)
    assert not os.path.exists(tmp_path / "out")


def test_explicit_flags_that_agree_are_accepted(dense, tmp_path):
    result = _export(tmp_path, dense[0], structure=dict(DENSE, decoder_output_stride=4, atrous_rates=[12, 24, 36]),
                     filter_multiplier=F, num_classes=NUM_CLASSES)
    assert result.restore.excluded == [] and len(result.restore.restored) == 1370


def _rewrite(folder, out, drop=(), add=None):
    reader = tf.train.load_checkpoint(folder)
    values = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map() if n not in drop}
    values.update(add or {})
    return oc.write_official_checkpoint(values, os.path.join(out, "model.ckpt"))


def test_a_checkpoint_missing_a_backbone_variable_is_refused_naming_it(dense, tmp_path):
    missing = "hnasnet/cell_7/comb_iter_2/left/separable_3x3_2/pointwise_weights"
    _rewrite(dense[0], str(tmp_path / "bad"), drop=[missing])
    with pytest.raises(oc.CheckpointError, match=f"lacks 1 of the 1370 variables to restore: {missing}; a "
                                                 "partial restore is refused"):
        _export(tmp_path, str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "out")


def test_a_checkpoint_of_a_bigger_model_and_a_backbone_only_one_are_refused(dense, tmp_path):
    extra = "hnasnet/cell_12/1x1/weights"
    _rewrite(dense[0], str(tmp_path / "bigger"), add={extra: np.zeros((1, 1, 40, 8), np.float32)})
    with pytest.raises(exporter.ExportError, match=r"it has 13 cells \(hnasnet/cell_0..cell_12\), architecture "
                                                   r"'published' has 12 \(--architecture\)"):
        _export(tmp_path, str(tmp_path / "bigger"))
    names = tf.train.load_checkpoint(dense[0]).get_variable_to_shape_map()
    heads = [n for n in names if not n.startswith("hnasnet/")]
    _rewrite(dense[0], str(tmp_path / "backbone"), drop=heads)
    with pytest.raises(exporter.ExportError, match="has no ASPP .* --initialize_last_layer=false"):
        _export(tmp_path, str(tmp_path / "backbone"), num_classes=NUM_CLASSES)
    assert not os.path.exists(tmp_path / "out")
