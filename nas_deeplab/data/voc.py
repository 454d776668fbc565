"""PASCAL VOC 2012 (+ SBD train_aug) -> official-format TFRecords (4 shards per split).

Images: VOCdevkit/VOC2012/JPEGImages/<name>.jpg. Labels: SegmentationClass/<name>.png, colour-map
PNGs; palette ('P') PNGs already hold class ids as indices (what official `remove_gt_colormap.py`
extracts) and RGB PNGs are mapped back through the VOC colour map, the border colour (224,224,192)
becoming 255. Split lists: ImageSets/Segmentation/<split>.txt; `train_aug` uses the SBD-augmented
labels (SegmentationClassAug, greyscale ids) and the train_aug.txt list (e.g. from the DeepLab
SegmentationClassAug release), given by path. image/filename is the list name, as officially.
"""

from __future__ import annotations

import os

import numpy as np

from nas_deeplab.data import builder
from nas_deeplab.data.descriptors import voc_palette
from nas_deeplab.data.errors import DataError

NUM_SHARDS = 4
NUM_CLASSES, IGNORE_LABEL = 21, 255
BORDER_COLOUR = (224, 224, 192)

_PALETTE = voc_palette(256)
_COLOUR_TO_ID = {tuple(int(v) for v in _PALETTE[i]): i for i in range(NUM_CLASSES)}
_COLOUR_TO_ID[BORDER_COLOUR] = IGNORE_LABEL


def colour_map_to_ids(label, path):
    """'P' -> indices; 'L' -> values; 'RGB' -> class ids via the VOC colour map (unknown colour -> error)."""
    if label.mode in ("P", "L"):
        return np.asarray(label, np.uint8)
    rgb = np.asarray(label.convert("RGB"), np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    out = np.full(code.shape, -1, np.int64)
    for colour, cid in _COLOUR_TO_ID.items():
        out[code == ((colour[0] << 16) | (colour[1] << 8) | colour[2])] = cid
    if (out < 0).any():
        ys, xs = np.nonzero(out < 0)
        c = tuple(int(v) for v in rgb[ys[0], xs[0]])
        raise DataError(f"label {path}: colour {c} at (y={ys[0]}, x={xs[0]}) is not in the VOC "
                                f"colour map")
    return out.astype(np.uint8)


def build(voc_root: str, output_dir: str, splits=("train", "val", "trainval"),
          train_aug_list: str | None = None, aug_label_dir: str | None = None,
          num_shards: int = NUM_SHARDS, log=None, resize_factor: float | None = None) -> dict[str, int]:
    """`voc_root` is VOCdevkit/VOC2012. With `train_aug_list`, also writes split train_aug using
    `aug_label_dir` (default <voc_root>/SegmentationClassAug). `resize_factor`: see `builder.build_split`."""
    builder.check_resize_factor(resize_factor)
    image_dir = os.path.join(voc_root, "JPEGImages")
    label_dir = os.path.join(voc_root, "SegmentationClass")
    list_dir = os.path.join(voc_root, "ImageSets", "Segmentation")
    jobs = {}
    for s in splits:
        lf = os.path.join(list_dir, s + ".txt")
        if not os.path.isfile(lf):
            raise DataError(f"VOC split list {lf} not found")
        jobs[s] = builder.find_pairs(image_dir, label_dir, lf, image_exts=(".jpg", ".jpeg", ".png"))
    if train_aug_list:
        aug_dir = aug_label_dir or os.path.join(voc_root, "SegmentationClassAug")
        jobs["train_aug"] = builder.find_pairs(image_dir, aug_dir, train_aug_list)
    for s, pairs in jobs.items():
        builder.validate_pairs(pairs, NUM_CLASSES, IGNORE_LABEL, colour_map_to_ids, log, s)
    return {s: builder.build_split(pairs, output_dir, s, num_classes=NUM_CLASSES,
                                   ignore_label=IGNORE_LABEL, num_shards=num_shards,
                                   label_fn=colour_map_to_ids, log=log, validated=True,
                                   resize_factor=resize_factor)
            for s, pairs in jobs.items()}
