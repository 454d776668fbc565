"""Dataset descriptors: official built-ins and user JSON descriptors."""

import json

import numpy as np
import pytest

from nas_deeplab.data.descriptors import get_descriptor, voc_palette
from nas_deeplab.data.errors import DataError


def test_builtins_match_official_data_generator():
    c = get_descriptor("cityscapes")
    assert (c.num_classes, c.ignore_label) == (19, 255)
    assert c.splits_to_sizes == {"train_fine": 2975, "train_coarse": 22973, "trainval_fine": 3475,
                                 "trainval_coarse": 23473, "val_fine": 500, "test_fine": 1525}
    assert (c.default_train_split, c.default_eval_split) == ("train_fine", "val_fine")
    assert c.class_names[0] == "road" and c.class_names[18] == "bicycle"
    assert c.palette[0].tolist() == [128, 64, 128] and c.palette[13].tolist() == [0, 0, 142]
    v = get_descriptor("pascal_voc_seg")
    assert (v.num_classes, v.ignore_label, v.default_train_split, v.default_eval_split) == (21, 255, "train_aug", "val")
    assert v.splits_to_sizes == {"train": 1464, "train_aug": 10582, "trainval": 2913, "val": 1449}
    assert v.palette[15].tolist() == [192, 128, 128] and v.class_names[15] == "person"
    a = get_descriptor("ade20k")
    assert (a.num_classes, a.ignore_label, a.splits_to_sizes) == (151, 0, {"train": 20210, "val": 2000})
    assert a.palette.shape == (151, 3) and a.palette.dtype == np.uint8
    s = get_descriptor("synthetic")
    assert (s.num_classes, s.default_train_split, s.default_eval_split) == (6, "train", "val")


def test_voc_palette_known_entries():
    p = voc_palette(256)
    assert p[1].tolist() == [128, 0, 0] and p[20].tolist() == [0, 64, 128] and p[255].tolist() == [224, 224, 192]


def test_json_descriptor(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "num_classes": 3, "ignore_label": 255,
                                "splits_to_sizes": {"tr": 10, "te": 2}, "class_names": ["a", "b", "c"],
                                "default_train_split": "tr", "default_eval_split": "te"}))
    d = get_descriptor(str(path))
    assert (d.name, d.num_classes, d.default_train_split, d.default_eval_split) == ("mine", 3, "tr", "te")
    assert d.palette.shape == (3, 3)
    again = tmp_path / "again.json"
    again.write_text(json.dumps(d.to_json_dict()))
    assert get_descriptor(str(again)).to_json_dict() == d.to_json_dict()


@pytest.mark.parametrize("bad, msg", [
    ({"name": "x", "num_classes": 3, "splits_to_sizes": {}}, "missing key.*ignore_label"),
    ({"name": "x", "num_classes": 2, "ignore_label": 255, "splits_to_sizes": {}, "class_names": ["a"]},
     "1 class_names for 2 classes"),
    ({"name": "x", "num_classes": 2, "ignore_label": 300, "splits_to_sizes": {}}, "ignore_label"),
    ({"name": "x", "num_classes": 2, "ignore_label": 255, "splits_to_sizes": {}, "colours": []}, "unknown key"),
])
def test_bad_json_descriptor_names_file(tmp_path, bad, msg):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=f"bad.json.*{msg}"):
        get_descriptor(str(path))


def test_unknown_name():
    with pytest.raises(DataError, match="unknown dataset 'kitti'.*cityscapes"):
        get_descriptor("kitti")


def test_descriptor_file_tells_its_records_folder(tmp_path):
    import json
    from nas_deeplab.data.synthetic import resolve_dataset
    body = {"name": "mine", "num_classes": 2, "ignore_label": 255, "splits_to_sizes": {"train": 1}}
    alone = tmp_path / "alone.json"
    alone.write_text(json.dumps(body))
    assert get_descriptor(str(alone)).dataset_dir is None           # no shards beside it
    with pytest.raises(DataError, match="needs --dataset_dir"):
        resolve_dataset(str(alone), None)
    (tmp_path / "records").mkdir()
    named = tmp_path / "named.json"
    named.write_text(json.dumps(dict(body, dataset_dir="records")))   # relative to the file
    assert resolve_dataset(str(named), None)[1] == str(tmp_path / "records")
    beside = tmp_path / "records" / "descriptor.json"
    beside.write_text(json.dumps(body))
    (tmp_path / "records" / "train-00000-of-00001.tfrecord").write_bytes(b"")
    assert get_descriptor(str(beside)).dataset_dir == str(tmp_path / "records")
    assert resolve_dataset(str(beside), str(tmp_path))[1] == str(tmp_path)   # the flag still wins
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(dict(body, dataset_dir="nowhere")))
    with pytest.raises(DataError, match="dataset_dir .*nowhere does not exist"):
        resolve_dataset(str(missing), None)
