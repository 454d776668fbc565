"""--resize_factor of the builders: sizes, nearest labels, bilinear images, on every builder.

The references are independent of the builder's code: hand-written expected labels (which source
pixel nearest neighbour must pick), and TF's antialiased bilinear resize for the images (Pillow, which
the builder uses, and TF implement the same triangle filter separately; they differ by uint8 rounding).
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from nas_deeplab.data import ade20k, builder, cityscapes, voc
from nas_deeplab.data.errors import DataError
from nas_deeplab.data.tfrecord import decode_example, list_split_files, parse_example


def _save(path, array, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path, format=fmt)


def _records(folder, split):
    """{filename: (image, label, stored height, stored width, image/format)} read back from the shards."""
    out = {}
    for p in list_split_files(folder, split):
        for r in tf.data.TFRecordDataset(p):
            d, f = decode_example(r), parse_example(r)
            out[d["filename"].numpy().decode()] = (
                d["image"].numpy(), d["label"].numpy()[..., 0], int(d["height"]), int(d["width"]),
                f["image/format"].numpy().decode())
    return out


def _tf_bilinear(image, size):
    """Antialiased bilinear (triangle filter widened when shrinking), rounded to uint8."""
    out = tf.image.resize(image.astype(np.float32), size, "bilinear", antialias=True).numpy()
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.int64)


@pytest.mark.parametrize("hw, factor, expected", [
    ((1024, 2048), 0.5, (512, 1024)),   # Cityscapes -> the paper's half resolution
    ((375, 500), 0.5, (188, 250)),      # VOC: 187.5 rounds up
    ((5, 7), 0.5, (3, 4)),              # 2.5 -> 3 (half up, not Python's round-half-even 2)
    ((3, 3), 0.1, (1, 1)),              # never below one pixel
    ((6, 8), 1.0, (6, 8)),
])
def test_resized_size_rule(hw, factor, expected):
    assert builder.resized_size(*hw, factor) == expected


def test_custom_build_half_resolution(tmp_path):
    # Label 6x8 -> 3x4: target pixel i takes source floor((i + 0.5) * 2) = 2i + 1 (rows 1,3,5; cols 1,3,5,7).
    even = np.array([[0, 0, 1, 1, 2, 2, 255, 255],
                     [0, 1, 1, 1, 2, 2, 255, 255],
                     [0, 0, 0, 0, 2, 2, 2, 2],
                     [1, 1, 0, 0, 2, 1, 2, 2],
                     [1, 1, 1, 1, 0, 0, 0, 0],
                     [1, 2, 1, 2, 0, 1, 0, 1]])
    even_expected = np.array([[1, 1, 2, 255],
                              [1, 0, 1, 2],
                              [2, 2, 1, 1]])
    # Label 7x9 -> 4x5 (3.5 -> 4, 4.5 -> 5): rows floor((i + 0.5) * 7/4) = 0,2,4,6, cols
    # floor((j + 0.5) * 9/5) = 0,2,4,6,8; value 10*y + x tells which source pixel was taken.
    odd = 10 * np.arange(7)[:, None] + np.arange(9)[None, :]
    odd_expected = 10 * np.array([0, 2, 4, 6])[:, None] + np.array([0, 2, 4, 6, 8])[None, :]
    rs = np.random.RandomState(0)
    big_label = rs.randint(0, 5, size=(40, 60))
    big_label[:10, :10] = 255
    images = {"even": rs.randint(0, 256, (6, 8, 3)), "odd": rs.randint(0, 256, (7, 9, 3)),
              "big": rs.randint(0, 256, (40, 60, 3))}
    labels = {"even": even, "odd": odd, "big": big_label}
    for name in images:
        fmt = "JPEG" if name == "big" else None  # a JPEG source is stored as PNG once resized
        _save(str(tmp_path / "img" / (name + (".jpg" if fmt else ".png"))), images[name], fmt)
        _save(str(tmp_path / "lab" / (name + ".png")), labels[name])
    with Image.open(tmp_path / "img" / "big.jpg") as im:  # what the builder reads
        images["big"] = np.asarray(im.convert("RGB"))
    out = str(tmp_path / "out")
    sizes = builder.build_custom(str(tmp_path / "img"), str(tmp_path / "lab"), out, num_classes=100,
                                 num_shards=1, resize_factor=0.5)
    assert sizes == {"train": 3}
    recs = _records(out, "train")
    expected_hw = {"even": (3, 4), "odd": (4, 5), "big": (20, 30)}
    for name, (image, label, h, w, fmt) in recs.items():
        assert (h, w) == image.shape[:2] == label.shape == expected_hw[name], name
        assert fmt == "png"
        diff = np.abs(image.astype(np.int64) - _tf_bilinear(images[name], (h, w)))
        assert diff.max() <= 1 and diff.mean() < 0.5, (name, diff.max(), diff.mean())
        assert set(np.unique(label)) <= set(np.unique(labels[name])), name  # nearest: no new values
    np.testing.assert_array_equal(recs["even"][1], even_expected)
    np.testing.assert_array_equal(recs["odd"][1], odd_expected)
    # 2x2 averaging, nearest or align-corners sampling would be far off on random pixels; the filter
    # is the antialiased one (checked above), and the big label keeps its ignore corner (now 5x5).
    assert (recs["big"][1][:5, :5] == 255).all() and not (recs["big"][1][5:, 5:] == 255).any()


@pytest.mark.parametrize("factor", [0, -0.5, 1.5, float("nan")])
def test_bad_factor_is_refused_before_writing(tmp_path, factor):
    _save(str(tmp_path / "img" / "a.png"), np.zeros((4, 4, 3)))
    _save(str(tmp_path / "lab" / "a.png"), np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"^--resize_factor=\S+: must be in \(0, 1\]"):
        builder.build_custom(str(tmp_path / "img"), str(tmp_path / "lab"), str(tmp_path / "out"),
                             num_classes=2, resize_factor=factor)
    assert not os.path.exists(tmp_path / "out")


def test_every_dataset_builder_passes_the_factor(tmp_path):
    """Cityscapes (trainId labels), VOC (palette labels) and ADE20K trees of one 8x12 image come out
    4x6, their labels picked at the odd rows and columns."""
    rs = np.random.RandomState(1)
    label = np.zeros((8, 12), np.uint8)
    label[1::2, 1::2] = 1  # exactly the pixels nearest neighbour keeps at factor 0.5
    image = rs.randint(0, 256, (8, 12, 3))
    root = tmp_path
    # Cityscapes
    cs = root / "cs"
    _save(str(cs / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"), image)
    _save(str(cs / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"), label)
    sizes = cityscapes.build(str(cs), str(root / "cs_out"), ("train",), 1, resize_factor=0.5)
    assert sizes == {"train_fine": 1}
    # VOC: palette label
    v = root / "VOC2012"
    _save(str(v / "JPEGImages/x.png"), image)
    os.makedirs(v / "SegmentationClass", exist_ok=True)
    pal = Image.fromarray(label, mode="P")
    pal.putpalette([0] * 768)
    pal.save(v / "SegmentationClass/x.png")
    os.makedirs(v / "ImageSets/Segmentation", exist_ok=True)
    (v / "ImageSets/Segmentation/train.txt").write_text("x\n")
    assert voc.build(str(v), str(root / "voc_out"), ("train",), num_shards=1,
                     resize_factor=0.5) == {"train": 1}
    # ADE20K (0 is the ignore label there; class 1 everywhere else is fine)
    a = root / "ade"
    _save(str(a / "images/training/y.png"), image)
    _save(str(a / "annotations/training/y.png"), label + 1)
    assert ade20k.build(str(a), str(root / "ade_out"), ("train",), 1, resize_factor=0.5) == {"train": 1}
    for folder, split, offset in (("cs_out", "train_fine", 0), ("voc_out", "train", 0),
                                  ("ade_out", "train", 1)):
        (img, lab, h, w, fmt), = _records(str(root / folder), split).values()
        assert (h, w) == img.shape[:2] == (4, 6) and fmt == "png", folder
        np.testing.assert_array_equal(lab, np.ones((4, 6)) + offset, err_msg=folder)
        assert np.abs(img.astype(np.int64) - _tf_bilinear(image, (4, 6))).max() <= 1, folder
