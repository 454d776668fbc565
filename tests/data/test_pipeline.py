"""make_dataset: round trip, shapes, determinism, subsets, worker shards and every bad-record error."""

import os

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab.training.distribute import make_strategy

from data_helpers import example, jpeg, png, scene, write_shards
from nas_deeplab.data import pipeline
from nas_deeplab.data.descriptors import DatasetDescriptor
from nas_deeplab.data.errors import DataError
from nas_deeplab.data.tfrecord import list_split_files

DESC = DatasetDescriptor("tiny", 3, 255, {"train": 6, "val": 3})


def _eval_items(folder, split="train", **kw):
    kw.setdefault("crop_size", None)
    ds = pipeline.make_dataset(folder, split, DESC, batch_size=1, is_training=False, **kw)
    return [{k: v.numpy()[0] for k, v in b.items()} for b in ds]


def test_round_trip_png_and_jpeg_bit_exact(tmp_path):
    im1, lb1 = scene(17, 23, seed=1)
    im2, lb2 = scene(9, 31, seed=2)
    jpg = jpeg(im2)
    write_shards(str(tmp_path), "train", [example(im1, lb1, "a"), example(im2, lb2, "b", image_bytes=jpg)])
    items = _eval_items(str(tmp_path))
    assert [it["filename"] for it in items] == [b"a", b"b"]
    np.testing.assert_array_equal(items[0]["image"], im1.astype(np.float32))
    np.testing.assert_array_equal(items[0]["label"][..., 0], lb1.astype(np.int32))
    # JPEG content sniffed (the record's format field says "jpeg" but decoding never looks at it).
    np.testing.assert_array_equal(items[1]["image"], tf.io.decode_jpeg(jpg).numpy().astype(np.float32))
    np.testing.assert_array_equal(items[1]["label"][..., 0], lb2)
    assert (items[1]["height"], items[1]["width"]) == (9, 31)


def _train_batches(folder, n, **kw):
    ds = pipeline.make_dataset(folder, "train", DESC, batch_size=2, is_training=True, crop_size=(21, 21),
                               shuffle_buffer=4, **kw)
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("six"))
    recs = [example(*scene(15 + i, 19 + 2 * i, seed=i), f"img{i}") for i in range(6)]
    write_shards(folder, "train", recs, num_shards=2)
    return folder


def test_training_batches_static_shapes_and_label_set(six):
    ds = pipeline.make_dataset(six, "train", DESC, batch_size=2, is_training=True, crop_size=(21, 25))
    assert ds.element_spec["image"].shape.as_list() == [2, 21, 25, 3]
    assert ds.element_spec["label"].shape.as_list() == [2, 21, 25, 1]
    for b in ds.take(6):
        assert set(np.unique(b["label"].numpy())) <= {0, 1, 2, 255}
        img = b["image"].numpy()
        assert img.min() >= 0 and img.max() <= 255


def test_same_seed_same_stream_other_seed_differs(six):
    a = _train_batches(six, 4, seed=3, deterministic=True)
    b = _train_batches(six, 4, seed=3, deterministic=True)
    c = _train_batches(six, 4, seed=4, deterministic=True)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_eval_pads_to_crop_and_stride(six):
    items = _eval_items(six, eval_pad_stride=8)
    assert [it["image"].shape[:2] for it in items[:2]] == [(17, 25), (17, 25)]  # 15x19 and 16x21
    it = items[0]
    assert (it["height"], it["width"]) == (15, 19)
    assert np.all(it["image"][15:] == 127.5) and np.all(it["image"][:, 19:] == 127.5)
    assert np.all(it["label"][15:] == 255) and np.all(it["label"][:, 19:] == 255)
    ds = pipeline.make_dataset(six, "train", DESC, batch_size=1, is_training=False, crop_size=(33, 29))
    first = next(iter(ds))
    assert first["image"].shape.as_list() == [1, 33, 29, 3]
    # resize_to_range first (15x19 -> short side 30 -> 30x38), then height/width report that size.
    it = _eval_items(six, min_resize_value=30, max_resize_value=40)[0]
    assert it["image"].shape == (30, 38, 3) and (it["height"], it["width"]) == (30, 38)
    assert set(np.unique(it["label"])) <= {0, 1, 2, 255}


def test_eval_batches_pad_to_largest(six):
    ds = pipeline.make_dataset(six, "train", DESC, batch_size=3, is_training=False, crop_size=None)
    b = next(iter(ds))
    assert b["image"].shape.as_list() == [3, 17, 23, 3]
    assert b["height"].numpy().tolist() == [15, 16, 17]
    assert np.all(b["label"].numpy()[0, 15:] == 255)


def test_subsets_disjoint_halves_stable(six):
    a = [it["filename"].decode() for it in _eval_items(six, subset="trainA")]
    b = [it["filename"].decode() for it in _eval_items(six, subset="trainB")]
    assert len(a) == len(b) == 3 and not set(a) & set(b)
    assert sorted(a + b) == [f"img{i}" for i in range(6)]
    # Pinned: depends only on sha256(split_seed:filename), identical on every machine and run.
    assert sorted(a) == sorted(pipeline.split_halves([f"img{i}" for i in range(6)], 0)[0])
    names = [f"img{i}" for i in range(6)]
    assert sorted(pipeline.split_halves(names, 0)[0]) == ["img0", "img1", "img2"]
    assert sorted(pipeline.split_halves(names, 1)[0]) == ["img0", "img1", "img3"]
    big = [f"synthetic_train_{i:05d}" for i in range(96)]
    a0, b0 = pipeline.split_halves(big, 0)
    assert len(a0) == len(b0) == 48
    assert sorted(a0)[:4] == [f"synthetic_train_{i:05d}" for i in (2, 3, 4, 5)]
    assert pipeline.split_halves(list(reversed(big)), 0)[0] == a0  # order of records is irrelevant


def test_worker_shards_partition_the_split(six):
    names = []
    for k in range(2):
        names += [it["filename"] for it in _eval_items(six, num_shards=2, shard_index=k)]
    assert sorted(names) == sorted(f"img{i}".encode() for i in range(6))


def test_count_records(six):
    assert pipeline.count_records(six, "train") == 6


# ---------------------------------------------------------------------------- bad input

def test_missing_folder_and_split_name_the_pattern(tmp_path, six):
    with pytest.raises(DataError, match="does not exist.*nope/val-\\*"):
        list_split_files(str(tmp_path / "nope"), "val")
    with pytest.raises(DataError, match=r"nothing matches .*val-\*.*splits present: \['train'\]"):
        pipeline.make_dataset(six, "val", DESC, batch_size=1, is_training=False)


def test_incomplete_split_rejected(tmp_path):
    paths = write_shards(str(tmp_path), "train", [example(*scene(8, 8), "x")] * 3, num_shards=3)
    os.remove(paths[1])
    with pytest.raises(DataError, match="2 of 3 shards.*missing shard numbers \\[1\\]"):
        list_split_files(str(tmp_path), "train")


def _bad_set(folder, bad):
    good = [example(*scene(10, 12, seed=i), f"g{i}") for i in range(3)]
    return write_shards(folder, "train", good[:2] + [bad] + good[2:])[0]


def _expect(folder, pattern):
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        _eval_items(folder)
    msg = str(e.value)
    assert "DataError" in msg and os.path.join(folder, "train-00000-of-00001.tfrecord") in msg, msg
    assert "record 2" in msg, msg
    assert pattern in msg, msg
    items = _eval_items(folder, skip_corrupt_records=True)
    assert [it["filename"] for it in items] == [b"g0", b"g1", b"g2"]


def test_size_mismatch(tmp_path):
    im, _ = scene(10, 12)
    _, lb = scene(10, 11)
    _bad_set(str(tmp_path), example(im, lb, "bad"))
    _expect(str(tmp_path), "image size 10x12 differs from label size 10x11")


def test_label_out_of_range(tmp_path):
    im, lb = scene(10, 12)
    lb[3, 4] = 7
    _bad_set(str(tmp_path), example(im, lb, "bad"))
    _expect(str(tmp_path), "1 label value(s) outside [0, 3) other than ignore 255 (e.g. 7)")
    assert len(_eval_items(str(tmp_path), validate_labels=False)) == 4


def test_undecodable_image(tmp_path):
    im, lb = scene(10, 12)
    _bad_set(str(tmp_path), example(im, lb, "bad", image_bytes=png(im)[:40]))
    _expect(str(tmp_path), "undecodable example")


def test_corrupt_record_crc(tmp_path):
    path = _bad_set(str(tmp_path), example(*scene(10, 12), "bad"))
    data = bytearray(open(path, "rb").read())
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 16 + int.from_bytes(data[pos:pos + 8], "little")
    data[offsets[2] + 40] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"DataError: .*train-00000-of-00001"
                       r"\.tfrecord record 2: corrupt record"):
        _eval_items(str(tmp_path))
    # A corrupt frame ends what can be read of that file: the records before it survive.
    ds = pipeline.make_dataset(str(tmp_path), "train", DESC, batch_size=1, is_training=False,
                               crop_size=None, skip_corrupt_records=True)
    assert [b["filename"].numpy()[0] for b in ds] == [b"g0", b"g1"]
    assert int(ds.skipped_records.numpy()) == 1
    with pytest.raises(DataError, match=r"corrupt TFRecord .*train-00000-of-00001.tfrecord: record 2 "):
        pipeline.count_records(str(tmp_path), "train")


def test_truncated_file(tmp_path):
    path = _bad_set(str(tmp_path), example(*scene(10, 12), "bad"))
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-30])
    with pytest.raises(tf.errors.InvalidArgumentError, match="record 3: corrupt record"):
        _eval_items(str(tmp_path))


def test_distributes_global_batch_over_replicas(six):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    strategy = make_strategy("mirrored")  # one per process: see distribute.make_strategy
    ds = pipeline.make_dataset(six, "train", DESC, batch_size=4, is_training=True, crop_size=(17, 17),
                               seed=0, deterministic=True)
    b = next(iter(strategy.experimental_distribute_dataset(ds)))
    parts = strategy.experimental_local_results(b["label"])
    assert len(parts) == len(devices) and sum(p.shape[0] for p in parts) == 4
    assert all(p.shape[1:] == (17, 17, 1) for p in parts)
