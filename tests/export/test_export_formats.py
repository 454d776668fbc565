"""export.py's Keras-native and device formats from a training run folder: .keras, the features
SavedModel and TFLite, each checked against the restored Keras model; their flags refused up front."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture as arch_lib
from nas_deeplab.data import synthetic
from nas_deeplab.export import exporter
from nas_deeplab.io_utils import OutputError
from nas_deeplab.model.deeplab import ModelOptions, build_deeplab
from nas_deeplab.training import checkpointing

from export_testlib import randomize

NUM_CLASSES = 6   # the built-in synthetic set's, so int8 calibration can read its train split


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder of a searched architecture (path from stride 8, ending at 16) trained on a small
    built-in set: checkpoint, metadata, train_config.json naming the data, architecture.json."""
    root = tmp_path_factory.mktemp("formats")
    data = str(root / "data")
    synthetic.build(data, num_train=4, num_val=1)
    arch = arch_lib.Architecture(("separable_3x3_2", "atrous_3x3", "max_pool_3x3", "skip_connect"),
                                 (1, 0, 2, 0), (1, 2, 2), 2, name="searched_test")
    model = randomize(build_deeplab(arch, ModelOptions(num_classes=NUM_CLASSES, aspp_convs_filters=16,
                                                       decoder_filters=16)), seed=3)
    folder = root / "run"
    meta = checkpointing.build_metadata(arch, NUM_CLASSES, {
        "atrous_rates": list(model.options.atrous_rates), "output_stride": 16, "decoder_output_stride": 4,
        "aspp_with_separable_conv": True, "decoder_use_separable_conv": True})
    checkpointing.ResumableCheckpoint(str(folder), meta, model=model).save(3)
    arch.save(str(folder / "architecture.json"))
    (folder / "train_config.json").write_text(json.dumps({"dataset": "synthetic", "dataset_dir": data}))
    return folder, model, arch


def _export(run, tmp_path, fmt, name, **kw):
    folder, _, _ = run
    kw.setdefault("structure", {"aspp_convs_filters": 16, "decoder_filters": 16})
    cfg = exporter.ExportConfig(export_path=str(tmp_path / name), checkpoint_path=str(folder),
                                export_format=fmt, **kw)
    return exporter.run_export(cfg)


def test_keras_file_loads_back_with_the_same_outputs(run, tmp_path):
    _, model, arch = run
    result = _export(run, tmp_path, "keras", "model.keras")
    assert os.listdir(tmp_path) == ["model.keras"]
    loaded = keras.saving.load_model(result.path)
    x = tf.constant(np.random.RandomState(0).uniform(0, 255, (1, 33, 33, 3)), tf.float32)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    text = exporter.describe(result)
    assert "architecture searched_test (F=2, path [1, 2, 2])" in text and "load_model" in text


def test_features_savedmodel_serves_the_backbone_end_points(run, tmp_path):
    _, model, arch = run
    result = _export(run, tmp_path, "features", "features")
    served = tf.saved_model.load(result.path).signatures["features"]
    images = np.random.RandomState(1).randint(0, 256, (1, 33, 33, 3)).astype(np.uint8)
    out = served(images=tf.constant(images))
    ends = model.end_points(tf.constant(images, tf.float32))
    for name in ("Stem", "Cell_0", "Cell_2", "features"):
        np.testing.assert_allclose(out[name].numpy(), ends[name].numpy(), atol=1e-5, err_msg=name)
    assert json.loads(open(os.path.join(result.path, "assets", "source.json")).read())["restored"] > 0


def test_tflite_float32_and_int8_from_the_runs_training_split(run, tmp_path):
    _, model, _ = run
    result = _export(run, tmp_path, "tflite", "model.tflite", crop_size=(33, 33))
    from nas_deeplab.export import tflite
    images = np.random.RandomState(2).randint(0, 256, (1, 33, 33, 3)).astype(np.uint8)
    labels = tflite.TFLiteSegmenter(result.path)(images)
    reference = tf.argmax(model(tf.constant(images, tf.float32)), -1).numpy()
    assert np.mean(labels == reference) >= 0.999
    int8 = _export(run, tmp_path, "tflite", "int8.tflite", crop_size=(33, 33), tflite_quantization="int8",
                   representative_split="train", representative_examples=2)
    assert int8.format_result.quantization == "int8"
    assert os.path.getsize(int8.path) < os.path.getsize(result.path)
    segmenter = tflite.TFLiteSegmenter(int8.path)
    assert segmenter(images).shape == (1, 33, 33)
    # This searched cell's int8 graph is refused by XNNPACK here: reported, and it still runs.
    assert (segmenter.xnnpack_error is None) == (int8.format_result.xnnpack_error is None)
    if segmenter.xnnpack_error:
        assert "XNNPACK delegate" in int8.format_result.describe()


@pytest.mark.parametrize("fmt,name,kw,needle", [
    ("tflite", "m.tflite", {}, "--crop_size"),
    ("tflite", "m.tflite", {"crop_size": (33, 33), "tflite_quantization": "int8"}, "--representative_split"),
    ("tflite", "m.tflite", {"crop_size": (33, 33), "tflite_quantization": "int8",
                            "representative_split": "nope"}, "--representative_split=nope"),
    ("keras", "model.h5", {}, ".keras"),
    ("saved_model", "sm", {"tflite_quantization": "int8"}, "--export_format=tflite only"),
])
def test_format_flags_are_refused_before_anything_is_written(run, tmp_path, fmt, name, kw, needle):
    with pytest.raises(ValueError, match=None) as e:
        _export(run, tmp_path, fmt, name, **kw)
    assert needle in str(e.value), str(e.value)
    assert not os.listdir(tmp_path)


def test_single_file_formats_refuse_a_folder_and_an_existing_file(run, tmp_path):
    (tmp_path / "dir.tflite").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        _export(run, tmp_path, "tflite", "dir.tflite", crop_size=(33, 33))
    (tmp_path / "m.keras").write_text("x")
    with pytest.raises(OutputError, match="--overwrite"):
        _export(run, tmp_path, "keras", "m.keras")
