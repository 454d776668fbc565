"""Cityscapes -> official-format TFRecords (the layout of official `build_cityscapes_data.py`).

Reads leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and gtFine/<split>/<city>/
<name>_gtFine_labelTrainIds.png; when the trainId PNGs are absent (cityscapesScripts'
createTrainIdLabelImgs not run) the *_gtFine_labelIds.png are converted with the official table.
Splits are written as train_fine / val_fine / test_fine in 10 shards; image/filename is the base name
without `_leftImg8bit` (e.g. aachen_000000_000019), as the official builder writes it.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from nas_deeplab.data import builder
from nas_deeplab.data.errors import DataError

NUM_SHARDS = 10
NUM_CLASSES, IGNORE_LABEL = 19, 255
SPLITS = {"train": "train_fine", "val": "val_fine", "test": "test_fine"}

# cityscapesScripts labels.py: label id -> trainId (255 = ignored in evaluation).
_ID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                  25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
ID_TO_TRAINID = np.full(256, IGNORE_LABEL, np.uint8)
for _id, _tid in _ID_TO_TRAINID.items():
    ID_TO_TRAINID[_id] = _tid


def labelids_to_trainids(label, path):
    arr = builder.default_label_fn(label, path)
    return ID_TO_TRAINID[arr]


def find_split(root: str, split: str) -> tuple[list[builder.Pair], bool]:
    """Pairs of one raw split (train/val/test) and whether labelIds had to be converted."""
    img_root = os.path.join(root, "leftImg8bit", split)
    if not os.path.isdir(img_root):
        raise DataError(f"Cityscapes images not found: {img_root} does not exist")
    images = sorted(glob.glob(os.path.join(img_root, "*", "*_leftImg8bit.png")))
    if not images:
        raise DataError(f"no Cityscapes images match {os.path.join(img_root, '*', '*_leftImg8bit.png')}")
    pairs, converted = [], None
    for img in images:
        city = os.path.basename(os.path.dirname(img))
        name = os.path.basename(img)[: -len("_leftImg8bit.png")]
        base = os.path.join(root, "gtFine", split, city, name + "_gtFine_")
        train_ids, label_ids = base + "labelTrainIds.png", base + "labelIds.png"
        if os.path.isfile(train_ids):
            use_conv = False
            lab = train_ids
        elif os.path.isfile(label_ids):
            use_conv = True
            lab = label_ids
        else:
            raise DataError(f"no label for {img}: neither {train_ids} nor {label_ids} exists")
        if converted is None:
            converted = use_conv
        elif converted != use_conv:
            raise DataError(f"split {split}: some images have *_labelTrainIds.png and some only "
                            f"*_labelIds.png (first mismatch: {lab})")
        pairs.append(builder.Pair(name, img, lab))
    return pairs, bool(converted)


def build(cityscapes_root: str, output_dir: str, splits=("train", "val"), num_shards: int = NUM_SHARDS,
          log=None, resize_factor: float | None = None) -> dict[str, int]:
    """Write <train_fine|val_fine|test_fine>-*.tfrecord; validates every split before writing.
    `resize_factor=0.5` writes the half-resolution (512x1024) set the paper searches on (Sec. 5.1)."""
    builder.check_resize_factor(resize_factor)
    found = {s: find_split(cityscapes_root, s) for s in splits}
    for s, (pairs, conv) in found.items():
        builder.validate_pairs(pairs, NUM_CLASSES, IGNORE_LABEL,
                               labelids_to_trainids if conv else None, log, s)
    sizes = {}
    for s, (pairs, conv) in found.items():
        if log and conv:
            log(f"{s}: no *_labelTrainIds.png, converting *_labelIds.png with the official table")
        sizes[SPLITS.get(s, s)] = builder.build_split(
            pairs, output_dir, SPLITS.get(s, s), num_classes=NUM_CLASSES, ignore_label=IGNORE_LABEL,
            num_shards=num_shards, label_fn=labelids_to_trainids if conv else None, log=log,
            validated=True, resize_factor=resize_factor)
    return sizes
