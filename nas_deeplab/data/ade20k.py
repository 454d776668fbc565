"""ADE20K (ADEChallengeData2016) -> official-format TFRecords (4 shards per split).

images/{training,validation}/*.jpg and annotations/{training,validation}/*.png (greyscale ids,
0 = "other", the ignore label; 1..150 classes) become splits train and val. image/filename is the
image path, as the official `build_ade20k_data.py` writes it.
"""

from __future__ import annotations

import os

from nas_deeplab.data import builder
from nas_deeplab.data.errors import DataError

NUM_SHARDS = 4
NUM_CLASSES, IGNORE_LABEL = 151, 0
SPLITS = {"train": "training", "val": "validation"}


def find_split(root: str, split: str) -> list[builder.Pair]:
    sub = SPLITS[split]
    image_dir = os.path.join(root, "images", sub)
    if not os.path.isdir(image_dir):
        raise DataError(f"ADE20K images not found: {image_dir} does not exist")
    pairs = builder.find_pairs(image_dir, os.path.join(root, "annotations", sub),
                               image_exts=(".jpg", ".jpeg", ".png"))
    return [builder.Pair(p.image, p.image, p.label) for p in pairs]


def build(ade_root: str, output_dir: str, splits=("train", "val"), num_shards: int = NUM_SHARDS,
          log=None, resize_factor: float | None = None) -> dict[str, int]:
    """`ade_root` is the ADEChallengeData2016 folder. `resize_factor`: see `builder.build_split`."""
    builder.check_resize_factor(resize_factor)
    jobs = {s: find_split(ade_root, s) for s in splits}
    for s, pairs in jobs.items():
        builder.validate_pairs(pairs, NUM_CLASSES, IGNORE_LABEL, None, log, s)
    return {s: builder.build_split(pairs, output_dir, s, num_classes=NUM_CLASSES, ignore_label=IGNORE_LABEL,
                                   num_shards=num_shards, log=log, validated=True,
                                   resize_factor=resize_factor)
            for s, pairs in jobs.items()}
