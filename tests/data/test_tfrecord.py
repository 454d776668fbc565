"""Official TFRecord format: exact keys/types, content sniffing, shard naming, atomic shard writing."""

import os

import numpy as np
import pytest
import tensorflow as tf

from data_helpers import jpeg, png, scene
from nas_deeplab.data import tfrecord
from nas_deeplab.data.errors import DataError

# The parser of research/deeplab/datasets/data_generator.py, written out independently.
OFFICIAL_SPEC = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/filename": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/format": tf.io.FixedLenFeature((), tf.string, default_value="jpeg"),
    "image/height": tf.io.FixedLenFeature((), tf.int64, default_value=0),
    "image/width": tf.io.FixedLenFeature((), tf.int64, default_value=0),
    "image/segmentation/class/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/segmentation/class/format": tf.io.FixedLenFeature((), tf.string, default_value="png"),
}


def test_keys_types_exactly_official():
    im, lb = scene(7, 9)
    ser = tfrecord.encode_example(png(im), "name_1", 7, 9, png(lb), "png")
    ex = tf.train.Example.FromString(ser)
    kinds = {k: v.WhichOneof("kind") for k, v in ex.features.feature.items()}
    assert kinds == {"image/encoded": "bytes_list", "image/filename": "bytes_list",
                     "image/format": "bytes_list", "image/height": "int64_list", "image/width": "int64_list",
                     "image/channels": "int64_list", "image/segmentation/class/encoded": "bytes_list",
                     "image/segmentation/class/format": "bytes_list"}
    f = tf.io.parse_single_example(ser, dict(OFFICIAL_SPEC, **{
        "image/channels": tf.io.FixedLenFeature((), tf.int64)}))
    assert f["image/filename"].numpy() == b"name_1"
    assert f["image/format"].numpy() == b"png" and f["image/segmentation/class/format"].numpy() == b"png"
    assert (f["image/height"].numpy(), f["image/width"].numpy(), f["image/channels"].numpy()) == (7, 9, 3)
    assert f["image/encoded"].numpy() == png(im)
    assert tfrecord.FEATURE_SPEC == OFFICIAL_SPEC


def test_decode_sniffs_content_not_format_field():
    im, lb = scene(8, 10)
    for data in (png(im), jpeg(im)):
        # Deliberately wrong format field: decoding must follow the bytes, as the official reader does.
        ser = tfrecord.encode_example(data, "x", 8, 10, png(lb), "png" if data[:2] == b"\xff\xd8" else "jpeg")
        d = tfrecord.decode_example(tf.constant(ser))
        ref = tf.io.decode_image(data, channels=3).numpy()
        np.testing.assert_array_equal(d["image"].numpy(), ref)
        np.testing.assert_array_equal(d["label"].numpy()[..., 0], lb)
    assert tfrecord.sniff_format(jpeg(im)) == "jpeg" and tfrecord.sniff_format(png(im)) == "png"
    with pytest.raises(DataError):
        tfrecord.sniff_format(b"GIF89a....")


def test_missing_label_bytes_become_ignore():
    im, _ = scene(5, 6)
    d = tfrecord.decode_example(tf.constant(tfrecord.encode_example(png(im), "t", 5, 6, None)), 255)
    assert d["label"].shape == (5, 6, 1) and np.all(d["label"].numpy() == 255)


def test_shard_writer_names_layout_and_atomicity(tmp_path):
    with tfrecord.ShardWriter(str(tmp_path), "train", 3, 7) as w:
        for i in range(7):
            w.write(b"rec%d" % i)
    names = sorted(os.listdir(tmp_path))
    assert names == ["train-00000-of-00003.tfrecord", "train-00001-of-00003.tfrecord",
                     "train-00002-of-00003.tfrecord"]
    counts = [sum(1 for _ in tf.data.TFRecordDataset(str(tmp_path / n))) for n in names]
    assert counts == [3, 3, 1]  # contiguous blocks of ceil(7/3), like the official builders
    assert tfrecord.list_split_files(str(tmp_path), "train") == [str(tmp_path / n) for n in names]


def test_interrupted_build_leaves_no_finished_looking_split(tmp_path):
    with pytest.raises(RuntimeError):
        with tfrecord.ShardWriter(str(tmp_path), "val", 4, 8) as w:
            for i in range(5):
                w.write(b"r")
            raise RuntimeError("killed")
    left = sorted(os.listdir(tmp_path))
    assert left == ["val-00000-of-00004.tfrecord", "val-00001-of-00004.tfrecord"]  # no temp files
    with pytest.raises(DataError, match="incomplete split.*2 of 4 shards"):
        tfrecord.list_split_files(str(tmp_path), "val")


def test_mixed_shard_sets_rejected(tmp_path):
    for name in ("train-00000-of-00001.tfrecord", "train-00000-of-00002.tfrecord",
                 "train-00001-of-00002.tfrecord"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError, match="2 different builds"):
        tfrecord.list_split_files(str(tmp_path), "train")
