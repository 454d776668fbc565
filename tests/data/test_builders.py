"""Builders on tiny fake folder trees: custom, Cityscapes (trainIds / labelIds), VOC (+aug), ADE20K."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_helpers import scene
from nas_deeplab.data import ade20k, builder, cityscapes, pipeline, voc
from nas_deeplab.data.descriptors import get_descriptor, voc_palette
from nas_deeplab.data.errors import DataError
from nas_deeplab.data.tfrecord import decode_example, list_split_files


def _save(path, array, mode=None, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(np.asarray(array, np.uint8), mode=mode)
    if mode == "P":
        im.putpalette(voc_palette(256).ravel().tolist())
    im.save(path, format=fmt)


def _records(folder, split):
    out = []
    for p in list_split_files(folder, split):
        for r in tf.data.TFRecordDataset(p):
            d = decode_example(r)
            out.append((d["filename"].numpy().decode(), d["image"].numpy(), d["label"].numpy()[..., 0]))
    return out


# ------------------------------------------------------------------------------- custom

def _custom_tree(root, n=4, num_classes=3):
    data = {}
    for i in range(n):
        im, lb = scene(8 + i, 10, seed=i, num_classes=num_classes)
        _save(os.path.join(root, "img", f"s{i}.png"), im)
        _save(os.path.join(root, "lab", f"s{i}.png"), lb)
        data[f"s{i}"] = (im, lb)
    return data


def test_custom_with_lists_round_trip_and_descriptor(tmp_path):
    data = _custom_tree(str(tmp_path))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "tr.txt").write_text("s2\ns0\ns3\n")
    (tmp_path / "lists" / "va.txt").write_text("s1\n")
    out = str(tmp_path / "out")
    sizes = builder.build_custom(str(tmp_path / "img"), str(tmp_path / "lab"), out, num_classes=3,
                                 list_files={"tr": str(tmp_path / "lists/tr.txt"),
                                             "va": str(tmp_path / "lists/va.txt")}, num_shards=2, name="mine")
    assert sizes == {"tr": 3, "va": 1}
    recs = _records(out, "tr")
    assert [r[0] for r in recs] == ["s2", "s0", "s3"]
    for name, im, lb in recs:
        np.testing.assert_array_equal(im, data[name][0])
        np.testing.assert_array_equal(lb, data[name][1])
    desc = get_descriptor(os.path.join(out, "descriptor.json"))
    assert (desc.name, desc.num_classes, desc.splits_to_sizes) == ("mine", 3, {"tr": 3, "va": 1})
    assert pipeline.count_records(out, "va") == 1


@pytest.mark.parametrize("damage, msg", [
    ("size", r"image .*s1\.png is 9x10 but label .*s1\.png is 9x7"),
    ("range", r"label .*s1\.png \(image .*\) has values \[9\] outside \[0, 3\) other than ignore 255"),
    ("rgb", r"label .*s1\.png is not a single-channel PNG \(mode RGB\)"),
    ("corrupt", r"image .*s1\.png cannot be decoded"),
    ("missing", r"label .*s1\.png for image .*s1\.png not found"),
])
def test_custom_bad_pairs_fail_before_writing(tmp_path, damage, msg):
    _custom_tree(str(tmp_path))
    lab = str(tmp_path / "lab" / "s1.png")
    img = str(tmp_path / "img" / "s1.png")
    if damage == "size":
        _save(lab, np.zeros((9, 7)))
    elif damage == "range":
        _save(lab, np.full((9, 10), 9))
    elif damage == "rgb":
        _save(lab, np.zeros((9, 10, 3)))
    elif damage == "corrupt":
        open(img, "wb").write(open(img, "rb").read()[:50])
    else:
        os.remove(lab)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=msg):
        builder.build_custom(str(tmp_path / "img"), str(tmp_path / "lab"), str(out), num_classes=3)
    assert not glob.glob(str(out / "*.tfrecord"))


def test_custom_label_suffix_and_never_more_shards_than_examples(tmp_path):
    data = _custom_tree(str(tmp_path), n=3)
    for name in data:   # labels named <image>_mask.png, as many tools write them
        os.rename(tmp_path / "lab" / f"{name}.png", tmp_path / "lab" / f"{name}_mask.png")
    with pytest.raises(DataError, match=r"label .*s0\.png for image .*s0\.png not found \(a label is named "
                                        r"after its image: <name>\.png; see --label_suffix\)"):
        builder.build_custom(str(tmp_path / "img"), str(tmp_path / "lab"), str(tmp_path / "o"), num_classes=3)
    out = str(tmp_path / "out")
    (tmp_path / "one.txt").write_text("s1\n")
    sizes = builder.build_custom(str(tmp_path / "img"), str(tmp_path / "lab"), out, num_classes=3,
                                 list_files={"train": str(tmp_path / "one.txt")}, num_shards=4,
                                 label_suffix="_mask")
    assert sizes == {"train": 1}
    assert [os.path.basename(f) for f in list_split_files(out, "train")] == ["train-00000-of-00001.tfrecord"]
    (name, im, lb), = _records(out, "train")
    assert name == "s1"
    np.testing.assert_array_equal(lb, data["s1"][1])


def test_missing_list_entry(tmp_path):
    _custom_tree(str(tmp_path))
    (tmp_path / "l.txt").write_text("s0\nnope\n")
    with pytest.raises(DataError, match=r"image .*img/nope\{.jpg,.jpeg,.png\} not found \(listed in .*l.txt\)"):
        builder.build_custom(str(tmp_path / "img"), str(tmp_path / "lab"), str(tmp_path / "o"), num_classes=3,
                             list_files={"train": str(tmp_path / "l.txt")})


# ------------------------------------------------------------------------------- cityscapes

def _cityscapes_tree(root, train_ids=True):
    rs = np.random.RandomState(0)
    truth = {}
    for split, cities in (("train", ("aachen", "bremen")), ("val", ("lindau",))):
        for city in cities:
            for k in range(2 if split == "train" else 1):
                name = f"{city}_{k:06d}_000019"
                img = rs.randint(0, 256, size=(6, 8, 3))
                _save(os.path.join(root, "leftImg8bit", split, city, name + "_leftImg8bit.png"), img)
                ids = rs.choice([0, 7, 8, 26, 33, 4], size=(6, 8))
                tids = cityscapes.ID_TO_TRAINID[ids]
                base = os.path.join(root, "gtFine", split, city, name + "_gtFine_")
                _save(base + "labelIds.png", ids)
                if train_ids:
                    _save(base + "labelTrainIds.png", tids)
                truth[name] = (img, tids)
    return truth


@pytest.mark.parametrize("train_ids", [True, False])
def test_cityscapes(tmp_path, train_ids):
    truth = _cityscapes_tree(str(tmp_path / "cs"), train_ids)
    out = str(tmp_path / "out")
    sizes = cityscapes.build(str(tmp_path / "cs"), out)
    assert sizes == {"train_fine": 4, "val_fine": 1}
    # The official 10 shards per split, but never more shards than examples (no empty shards).
    assert [os.path.basename(f) for f in list_split_files(out, "train_fine")][-1] == \
        "train_fine-00003-of-00004.tfrecord"
    assert [os.path.basename(f) for f in list_split_files(out, "val_fine")] == ["val_fine-00000-of-00001.tfrecord"]
    recs = _records(out, "train_fine")
    assert [r[0] for r in recs] == ["aachen_000000_000019", "aachen_000001_000019",
                                    "bremen_000000_000019", "bremen_000001_000019"]
    for name, im, lb in recs:
        np.testing.assert_array_equal(im, truth[name][0])
        np.testing.assert_array_equal(lb, truth[name][1])
    assert set(np.unique(np.concatenate([r[2].ravel() for r in recs]))) <= {0, 1, 13, 18, 255}


def test_labelids_table():
    assert cityscapes.ID_TO_TRAINID[[0, 7, 8, 11, 24, 26, 31, 33, 34]].tolist() == [255, 0, 1, 2, 11, 13, 16, 18, 255]


def test_cityscapes_missing_label(tmp_path):
    _cityscapes_tree(str(tmp_path))
    for p in glob.glob(str(tmp_path / "gtFine/val/lindau/*")):
        os.remove(p)
    with pytest.raises(DataError, match="no label for .*lindau_000000_000019_leftImg8bit.png"):
        cityscapes.build(str(tmp_path), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


# ------------------------------------------------------------------------------- VOC

def test_voc_colour_maps_and_train_aug(tmp_path):
    root = tmp_path / "VOC2012"
    rs = np.random.RandomState(1)
    names = ["2007_000032", "2007_000033", "2007_000039"]
    ids = {}
    for i, n in enumerate(names):
        os.makedirs(root / "JPEGImages", exist_ok=True)
        Image.fromarray(rs.randint(0, 256, size=(7, 9, 3)).astype(np.uint8)).save(
            str(root / "JPEGImages" / f"{n}.jpg"), quality=95)
        lb = rs.randint(0, 21, size=(7, 9))
        lb[0, :] = 255
        ids[n] = lb
        path = str(root / "SegmentationClass" / f"{n}.png")
        if i == 1:  # an RGB colour-map PNG instead of a palette PNG
            _save(path, voc_palette(256)[lb])
        else:
            _save(path, lb, mode="P")
        _save(str(root / "SegmentationClassAug" / f"{n}.png"), np.where(lb == 255, 0, lb))
    os.makedirs(root / "ImageSets" / "Segmentation")
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n2007_000033\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000039\n")
    (tmp_path / "train_aug.txt").write_text("\n".join(names) + "\n")
    out = str(tmp_path / "out")
    sizes = voc.build(str(root), out, splits=("train", "val"), train_aug_list=str(tmp_path / "train_aug.txt"))
    assert sizes == {"train": 2, "val": 1, "train_aug": 3}
    assert len(list_split_files(out, "train")) == 2   # the official 4 shards, at most one per example
    recs = _records(out, "train")
    assert [r[0] for r in recs] == names[:2]
    for name, im, lb in recs:
        np.testing.assert_array_equal(lb, ids[name])
        assert im.shape == (7, 9, 3)
    aug = _records(out, "train_aug")
    np.testing.assert_array_equal(aug[2][2], np.where(ids[names[2]] == 255, 0, ids[names[2]]))


def test_voc_unknown_colour(tmp_path):
    img = Image.new("RGB", (3, 2), (1, 2, 3))
    with pytest.raises(DataError, match=r"label x.png: colour \(1, 2, 3\) at \(y=0, x=0\) is not in the VOC"):
        voc.colour_map_to_ids(img, "x.png")


# ------------------------------------------------------------------------------- ADE20K

def test_ade20k(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    rs = np.random.RandomState(2)
    for sub, n in (("training", 2), ("validation", 1)):
        for i in range(n):
            name = f"ADE_{sub[:5]}_{i:08d}"
            _save(str(root / "images" / sub / f"{name}.jpg"), rs.randint(0, 256, size=(5, 6, 3)), fmt="JPEG")
            _save(str(root / "annotations" / sub / f"{name}.png"), rs.randint(0, 151, size=(5, 6)))
    out = str(tmp_path / "out")
    assert ade20k.build(str(root), out) == {"train": 2, "val": 1}
    assert len(list_split_files(out, "train")) == 2   # the official 4 shards, at most one per example
    recs = _records(out, "val")
    assert recs[0][0] == str(root / "images" / "validation" / "ADE_valid_00000000.jpg")
    raw = np.asarray(Image.open(root / "annotations" / "validation" / "ADE_valid_00000000.png"))
    np.testing.assert_array_equal(recs[0][2], raw)
    ds = pipeline.make_dataset(out, "train", "ade20k", batch_size=2, is_training=True, crop_size=(9, 9))
    b = next(iter(ds))
    assert b["label"].shape.as_list() == [2, 9, 9, 1]
    assert np.all(b["label"].numpy() <= 150)  # ADE20K pads with its ignore label 0
