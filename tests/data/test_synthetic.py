"""The built-in synthetic set: reproducible bytes, every class present, colour-separable, cached build."""

import os

import numpy as np
import pytest
import tensorflow as tf

from data_helpers import file_hashes
from nas_deeplab.data import pipeline, synthetic
from nas_deeplab.data.descriptors import get_descriptor
from nas_deeplab.data.errors import DataError


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = synthetic.build(str(tmp_path / "a"), seed=5, num_train=4, num_val=2)
    b = synthetic.build(str(tmp_path / "b"), seed=5, num_train=4, num_val=2)
    c = synthetic.build(str(tmp_path / "c"), seed=6, num_train=4, num_val=2)
    ha, hb, hc = file_hashes(a), file_hashes(b), file_hashes(c)
    assert sorted(ha) == ["descriptor.json", "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
                          "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
    assert ha == hb
    assert ha["train-00000-of-00002.tfrecord"] != hc["train-00000-of-00002.tfrecord"]


def test_scenes_have_every_class_and_colour_separates_them():
    rs = np.random.RandomState([0, 0])
    desc = get_descriptor("synthetic")
    pix, labs, sizes = [], [], []
    for _ in range(16):
        im, lb = synthetic.generate_scene(rs)
        sizes.append(im.shape[:2])
        pix.append(im.reshape(-1, 3).astype(np.float64))
        labs.append(lb.ravel())
    pix, labs = np.concatenate(pix), np.concatenate(labs)
    hist = np.bincount(labs, minlength=256)
    assert all(hist[c] > 0 for c in range(desc.num_classes)), hist[:desc.num_classes]
    assert set(np.nonzero(hist)[0]) <= set(range(desc.num_classes)) | {255}
    assert all(synthetic.MIN_SIZE <= s <= synthetic.MAX_SIZE for hw in sizes for s in hw)
    assert len(set(sizes)) > 8
    # Learnable: even a nearest-colour-centroid rule per pixel beats chance (1/6) by far.
    keep = labs != 255
    pix, labs = pix[keep], labs[keep]
    cent = np.stack([pix[labs == c].mean(0) for c in range(desc.num_classes)])
    pred = np.argmin(((pix[:, None, :] - cent[None]) ** 2).sum(-1), 1)
    per_class = [np.mean(pred[labs == c] == c) for c in range(desc.num_classes)]
    assert np.mean(per_class) > 0.5, per_class


def test_ensure_builtin_builds_once_and_pipeline_reads_it(tmp_path, monkeypatch):
    folder = str(tmp_path / "cache" / "synthetic-v1")
    got = synthetic.ensure_builtin_dataset(folder, num_train=4, num_val=2)
    assert got == folder and pipeline.count_records(folder, "val") == 2
    monkeypatch.setattr(synthetic, "build", lambda *a, **k: pytest.fail("rebuilt"))
    assert synthetic.ensure_builtin_dataset(folder) == folder
    ds = pipeline.make_dataset(folder, "train", "synthetic", batch_size=2, is_training=True, crop_size=(33, 33))
    b = next(iter(ds))
    assert b["image"].shape.as_list() == [2, 33, 33, 3] and b["label"].dtype == tf.int32


def test_ensure_refuses_foreign_folder(tmp_path):
    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(DataError, match="no complete synthetic data set"):
        synthetic.ensure_builtin_dataset(str(tmp_path))
    assert os.listdir(tmp_path) == ["x.txt"]


def test_resolve_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv(synthetic.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(synthetic, "ensure_builtin_dataset", lambda cache_dir=None: synthetic.default_cache_dir())
    desc, folder = synthetic.resolve_dataset(None, None)
    assert desc.name == "synthetic" and folder == str(tmp_path / "synthetic-v1")
    desc, folder = synthetic.resolve_dataset("synthetic", str(tmp_path))
    assert folder == str(tmp_path) and desc.splits_to_sizes == {"train": 96, "val": 24}
    small = synthetic.build(str(tmp_path / "small"), num_train=3, num_val=1)
    desc, folder = synthetic.resolve_dataset("synthetic", small)  # sizes of the actual build
    assert desc.splits_to_sizes == {"train": 3, "val": 1} and desc.class_names[1] == "disc"
    with pytest.raises(DataError, match="--dataset=cityscapes needs --dataset_dir"):
        synthetic.resolve_dataset("cityscapes", None)
    with pytest.raises(DataError, match="--dataset_dir=.*nowhere does not exist"):
        synthetic.resolve_dataset("cityscapes", str(tmp_path / "nowhere"))
