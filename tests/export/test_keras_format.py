"""The .keras round trip: `save_keras` then `load_keras` (plain `keras.saving.load_model`, no
custom_objects) gives the same model: outputs, variable paths and values, official names, options.
Published architecture (F=4) and a searched one whose path starts at stride 8 and ends at 16."""

import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture
from nas_deeplab.export.keras_format import KerasFormatError, load_keras, save_keras
from nas_deeplab.io_utils import OutputError
from nas_deeplab.model.deeplab import DeepLab, ModelOptions, build_deeplab
from nas_deeplab.official.names import official_variable_map


def _randomise(model, seed):
    """Non-trivial values everywhere (BN statistics included), so a weight left behind shows."""
    rng = np.random.default_rng(seed)
    for v in model.variables:
        value = rng.normal(0.0, 0.2, v.shape)
        if "moving_variance" in v.path:
            value = np.abs(value) + 0.5
        v.assign(value.astype(np.float32))


def _published():
    return build_deeplab(architecture.published(4), ModelOptions(num_classes=3, aspp_convs_filters=16,
                                                                 decoder_filters=16))


def _searched():
    ops = ("max_pool_3x3", "skip_connect", "avg_pool_3x3", "atrous_3x3",
           "separable_5x5_2", "skip_connect", "atrous_5x5", "separable_3x3_2")
    arch = architecture.Architecture(ops, (0, 1, 1, 2, 3, 0, 4, 2), (1, 2, 3, 2), 4, name="searched")
    return build_deeplab(arch, ModelOptions(num_classes=4, aspp_convs_filters=8, decoder_filters=8,
                                            aspp_with_separable_conv=False,
                                            decoder_use_separable_conv=False,
                                            drop_path_keep_prob=0.6, total_training_steps=100))


@pytest.mark.parametrize("make,expected", [
    (_published, {"output_stride": 8, "atrous_rates": (12, 24, 36), "low_level": "Cell_2"}),
    (_searched, {"output_stride": 16, "atrous_rates": (6, 12, 18), "low_level": "Stem"}),
])
def test_round_trip_gives_the_same_model(tmp_path, make, expected):
    model = make()
    _randomise(model, seed=5)
    model.step_variable.assign(40)
    images = tf.constant(np.random.default_rng(1).uniform(0, 255, (2, 33, 33, 3)).astype(np.float32))
    want = model(images, training=False).numpy()

    path = save_keras(model, str(tmp_path / "model.keras"))
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]           # no temporary file left
    assert {"config.json", "model.weights.h5"} <= set(zipfile.ZipFile(path).namelist())
    loaded = keras.saving.load_model(path)                           # no custom_objects
    assert type(loaded) is DeepLab

    np.testing.assert_array_equal(loaded(images, training=False).numpy(), want)
    assert [v.path for v in loaded.variables] == [v.path for v in model.variables]
    for a, b in zip(loaded.variables, model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    names, loaded_names = official_variable_map(model), official_variable_map(loaded)
    assert list(loaded_names) == list(names)
    assert all(loaded_names[k].path == names[k].path for k in names)
    assert loaded.options == model.options and loaded.arch == model.arch
    assert loaded.options.output_stride == expected["output_stride"]
    assert loaded.options.atrous_rates == expected["atrous_rates"]
    assert loaded.low_level_end_point == expected["low_level"]
    assert int(loaded.step_variable.numpy()) == 0                    # training state: not saved


def test_save_is_atomic_and_refuses_to_clobber(tmp_path):
    arch = architecture.Architecture(("skip_connect", "atrous_3x3"), (0, 1), (0, 1), 2)
    model = build_deeplab(arch, ModelOptions(num_classes=2, aspp_convs_filters=4, decoder_filters=4))
    target = tmp_path / "out" / "m.keras"
    save_keras(model, str(target))
    first = target.read_bytes()
    with pytest.raises(OutputError, match="exists"):
        save_keras(model, str(target))
    assert target.read_bytes() == first
    _randomise(model, seed=2)
    save_keras(model, str(target), overwrite=True)
    assert target.read_bytes() != first and os.listdir(target.parent) == ["m.keras"]
    reloaded = load_keras(str(target))
    np.testing.assert_array_equal(reloaded.variables[0].numpy(), model.variables[0].numpy())


def test_bad_paths_name_the_file(tmp_path):
    model = build_deeplab(architecture.Architecture(("skip_connect", "skip_connect"), (0, 1), (0,), 2),
                          ModelOptions(num_classes=2, aspp_convs_filters=4))
    with pytest.raises(KerasFormatError, match=r"m\.h5: a Keras model file must end in \.keras"):
        save_keras(model, str(tmp_path / "m.h5"))
    with pytest.raises(KerasFormatError, match="no such .keras file"):
        load_keras(str(tmp_path / "missing.keras"))
    junk = tmp_path / "junk.keras"
    junk.write_text("not a zip")
    with pytest.raises(KerasFormatError, match="junk.keras: not a .keras file"):
        load_keras(str(junk))


def test_auto_deeplab_s_round_trip(tmp_path):
    """The published S itself (F=20, 19 classes, regular heads): 10,147,427 trainable parameters, as
    in the paper, before and after the file."""
    model = build_deeplab(architecture.preset("auto_deeplab_s"),
                          ModelOptions(num_classes=19, aspp_with_separable_conv=False,
                                       decoder_use_separable_conv=False))
    _randomise(model, seed=7)
    images = tf.constant(np.random.default_rng(2).uniform(0, 255, (1, 33, 33, 3)).astype(np.float32))
    want = model(images, training=False).numpy()
    loaded = keras.saving.load_model(save_keras(model, str(tmp_path / "s.keras")))
    count = lambda m: sum(int(np.prod(v.shape)) for v in m.trainable_variables)  # noqa: E731
    assert count(model) == count(loaded) == 10147427
    assert loaded.arch.name == "auto_deeplab_s" and loaded.arch.filter_multiplier == 20
    np.testing.assert_array_equal(loaded(images, training=False).numpy(), want)


def test_import_nas_deeplab_is_all_load_model_needs(tmp_path):
    """A fresh process that imports only `nas_deeplab` (not nas_deeplab.model) loads the file."""
    import subprocess
    import sys
    model = _published()
    path = save_keras(model, str(tmp_path / "m.keras"))
    x = np.full((1, 33, 33, 3), 100.0, np.float32)
    np.save(tmp_path / "want.npy", model(tf.constant(x), training=False).numpy())
    code = ("import sys, numpy as np, nas_deeplab, keras; m = keras.saving.load_model(sys.argv[1]); "
            "x = np.full((1, 33, 33, 3), 100.0, np.float32); "
            "np.testing.assert_array_equal(m(x, training=False).numpy(), np.load(sys.argv[2])); print('ok')")
    p = subprocess.run([sys.executable, "-c", code, path, str(tmp_path / "want.npy")], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]
