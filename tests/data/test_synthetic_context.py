"""The built-in context set: reproducible bytes, every class present, colour tells nothing, context and
resolution do, and the CLIs' resolver and pipeline read it."""

import glob
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_helpers import file_hashes
from nas_deeplab.data import pipeline, synthetic, synthetic_context
from nas_deeplab.data.descriptors import get_descriptor
from nas_deeplab.data.errors import DataError

NUM_CLASSES = 7
BACKGROUND, SMALL_DISC, LARGE_DISC, SQUARE, NUCLEUS, RING, LINE = range(NUM_CLASSES)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The default build, made the way a CLI makes it: resolve_dataset with no --dataset_dir."""
    cache = str(tmp_path_factory.mktemp("cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(synthetic.CACHE_ENV, cache)
        desc, folder = synthetic.resolve_dataset("synthetic_context", None)
    return desc, folder, cache


def _records(path):
    """A TFRecord file's records (uint64 length, uint32 crc, data, uint32 crc), CRCs not checked."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 8], "little")
        yield data[pos + 12:pos + 12 + n]
        pos += 16 + n


def _read_split(folder, split):
    """(images [N,H,W,3], labels [N,H,W]) decoded straight from the shards' official fields."""
    images, labels = [], []
    for path in sorted(glob.glob(os.path.join(folder, f"{split}-*.tfrecord"))):
        for record in _records(path):
            ex = tf.train.Example.FromString(record).features.feature
            images.append(np.asarray(Image.open(io.BytesIO(ex["image/encoded"].bytes_list.value[0]))))
            labels.append(np.asarray(Image.open(io.BytesIO(ex["image/segmentation/class/encoded"]
                                                           .bytes_list.value[0]))))
            assert ex["image/height"].int64_list.value[0] == images[-1].shape[0]
    return np.stack(images), np.stack(labels)


@pytest.fixture(scope="module")
def splits(built):
    return {s: _read_split(built[1], s) for s in ("train", "val")}


def _iou(labels, pred):
    return np.array([np.sum((labels == c) & (pred == c)) / max(np.sum((labels == c) | (pred == c)), 1)
                     for c in range(NUM_CLASSES)])


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = synthetic_context.build(str(tmp_path / "a"), seed=3, num_train=3, num_val=2)
    b = synthetic_context.build(str(tmp_path / "b"), seed=3, num_train=3, num_val=2)
    c = synthetic_context.build(str(tmp_path / "c"), seed=4, num_train=3, num_val=2)
    ha, hb, hc = file_hashes(a), file_hashes(b), file_hashes(c)
    assert sorted(ha) == ["descriptor.json", "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
                          "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
    assert ha == hb
    assert ha["train-00000-of-00002.tfrecord"] != hc["train-00000-of-00002.tfrecord"]


def test_every_class_in_every_split_within_stated_fractions(splits):
    # Stated bounds (measured on the default build: background 0.81-0.82, the others 0.012-0.055).
    bounds = {BACKGROUND: (0.75, 0.88), SMALL_DISC: (0.015, 0.04), LARGE_DISC: (0.035, 0.08),
              SQUARE: (0.01, 0.04), NUCLEUS: (0.007, 0.025), RING: (0.03, 0.07), LINE: (0.01, 0.04)}
    for split, n in (("train", 96), ("val", 24)):
        images, labels = splits[split]
        assert images.shape == (n, 129, 129, 3) and images.dtype == np.uint8 and labels.shape == (n, 129, 129)
        assert set(np.unique(labels)) == set(range(NUM_CLASSES))  # no ignore regions, nothing else
        per_image = np.array([[np.any(lb == c) for c in range(NUM_CLASSES)] for lb in labels])
        assert per_image.mean(0).min() >= 0.9, (split, per_image.mean(0))
        fractions = np.bincount(labels.ravel(), minlength=NUM_CLASSES) / labels.size
        for c, (lo, hi) in bounds.items():
            assert lo <= fractions[c] <= hi, (split, c, fractions)


def test_colour_tells_nothing(splits):
    """Every class has nearly the same colour histogram, so the best per-pixel rule (a lookup table
    from quantised RGB to the majority class on train: the Bayes rule of the quantised colour) is no
    better than calling everything background (measured: val mIoU 0.117; all-background 0.117)."""
    def bins(images):
        return (images.astype(np.int64) // 16) @ np.array([256, 16, 1])   # 16 levels a channel
    (xtr, ytr), (xva, yva) = splits["train"], splits["val"]
    counts = np.zeros((16 ** 3, NUM_CLASSES))
    np.add.at(counts, (bins(xtr).ravel(), ytr.ravel()), 1)
    lut = counts.argmax(1)          # bins never seen in train fall to class 0 (background)
    iou = _iou(yva, lut[bins(xva)])
    assert iou.mean() < 0.15, iou
    assert iou[1:].max() < 0.05, iou
    # Per-class histograms on 8 levels a channel: total-variation distance to the background's is only
    # what a finite draw of object colours gives (measured 0.09-0.23); a colour cue would be near 1.
    coarse = (xtr.astype(np.int64) // 32) @ np.array([64, 8, 1])
    hists = np.stack([np.bincount(coarse[ytr == c], minlength=512) / np.sum(ytr == c)
                      for c in range(NUM_CLASSES)])
    tv = 0.5 * np.abs(hists - hists[BACKGROUND]).sum(1)
    assert tv.max() < 0.3, tv


def _windows_touch(mask, k):
    """Per pixel: does its k x k window (clipped at the border) hold a pixel of `mask`?"""
    hit = mask.astype(np.int32)
    p = k // 2
    padded = np.pad(hit, ((0, 0), (p + 1, p), (p + 1, p)))
    sums = padded.cumsum(1).cumsum(2)
    box = sums[:, k:, k:] - sums[:, :-k, k:] - sums[:, k:, :-k] + sums[:, :-k, :-k]
    return box > 0


def test_context_and_resolution_are_needed(splits):
    _, labels = splits["train"]
    # A nucleus is drawn exactly like a small disc; only the ring around it tells them apart. A 9x9
    # window almost never reaches the ring, a 25x25 one always does (measured 0.99 / 0.33 / 0.0).
    nucleus = labels == NUCLEUS
    assert np.mean(~_windows_touch(labels == RING, 9)[nucleus]) > 0.95
    assert 0.1 < np.mean(~_windows_touch(labels == RING, 17)[nucleus]) < 0.6
    assert np.mean(~_windows_touch(labels == RING, 25)[nucleus]) < 0.02
    # Large discs have a wide interior that looks like any small disc's inside (measured 0.48).
    assert np.mean(~_windows_touch(labels != LARGE_DISC, 9)[labels == LARGE_DISC]) > 0.4
    # Lines and rings are thin: the most accurate prediction at stride 16 (each 16x16 cell's majority
    # label, upsampled) loses them, stride 4 keeps much of them (measured line 0.57 / 0.24 / 0.008).
    iou_at = {}
    for stride in (4, 8, 16):
        n, h, w = labels.shape
        size = -(-h // stride) * stride
        cells = np.pad(labels, ((0, 0), (0, size - h), (0, size - w)), mode="edge")
        cells = cells.reshape(n, size // stride, stride, size // stride, stride).transpose(0, 1, 3, 2, 4)
        cells = cells.reshape(n, size // stride, size // stride, -1)
        counts = np.stack([(cells == c).sum(-1) for c in range(NUM_CLASSES)], -1)
        best = np.repeat(np.repeat(counts.argmax(-1), stride, 1), stride, 2)[:, :h, :w]
        iou_at[stride] = _iou(labels, best)
    assert iou_at[4][LINE] > 0.45 and iou_at[8][LINE] < 0.35 and iou_at[16][LINE] < 0.05, iou_at
    assert iou_at[16][RING] < 0.05 and iou_at[4][RING] > 0.5, iou_at


def test_clis_resolve_it_from_the_cache_and_the_pipeline_reads_it(built, tmp_path, monkeypatch):
    desc, folder, cache = built
    assert folder == os.path.join(cache, "synthetic_context-v1")
    assert desc.name == "synthetic_context" and desc.num_classes == NUM_CLASSES and desc.ignore_label == 255
    assert desc.splits_to_sizes == {"train": 96, "val": 24}
    assert desc.class_names == get_descriptor("synthetic_context").class_names
    assert desc.class_names[NUCLEUS] == "nucleus" and desc.palette.shape == (NUM_CLASSES, 3)
    monkeypatch.setenv(synthetic.CACHE_ENV, cache)
    monkeypatch.setattr(synthetic_context, "build", lambda *a, **k: pytest.fail("rebuilt"))
    assert synthetic.resolve_dataset("synthetic_context", None)[1] == folder       # cached: no rebuild
    train = pipeline.make_dataset(folder, "train", desc, batch_size=2, is_training=True, crop_size=(65, 65),
                                  seed=0, deterministic=True)
    b = next(iter(train))
    assert b["image"].shape.as_list() == [2, 65, 65, 3] and b["label"].shape.as_list() == [2, 65, 65, 1]
    assert set(np.unique(b["label"].numpy())) <= set(range(NUM_CLASSES)) | {255}
    val = next(iter(pipeline.make_dataset(folder, "val", desc, batch_size=1, is_training=False,
                                          crop_size=None)))
    assert val["image"].shape.as_list() == [1, 129, 129, 3]
    # A folder of the other built-in set is refused, naming the file.
    other = synthetic.build(str(tmp_path / "colour"), num_train=1, num_val=1)
    with pytest.raises(DataError, match="descriptor.json describes 6 classes.*synthetic_context set's 7"):
        synthetic.resolve_dataset("synthetic_context", other)
