"""Dataset descriptors: what a TFRecord folder contains (classes, ignore label, split sizes, colours).

The built-ins mirror `research/deeplab/datasets/data_generator.py` (same names, split names and sizes)
so flags like `--dataset=cityscapes --train_split=train_fine` mean what a DeepLab user expects. A new
data set needs no code: `get_descriptor("path/to/my_set.json")` reads a small JSON file::

    {"name": "my_set", "num_classes": 3, "ignore_label": 255,
     "splits_to_sizes": {"train": 120, "val": 30},
     "class_names": ["background", "road", "car"],          # optional
     "palette": [[0, 0, 0], [128, 64, 128], [0, 0, 142]],   # optional (generated if absent)
     "default_train_split": "train", "default_eval_split": "val",   # optional
     "dataset_dir": "."}    # optional: the shards' folder, relative to this file

A descriptor file needs no `--dataset_dir` when it names its folder, or when it sits in the folder that
holds the shards (as `datasets/build_custom_data.py` writes it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence

import numpy as np

from nas_deeplab.data.errors import DataError


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved class index), [n, 3] uint8."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def generated_palette(n: int, seed: int = 0) -> np.ndarray:
    """Distinct-enough colours for data sets without an official colour table (fixed seed)."""
    pal = voc_palette(256)[:n].copy() if n <= 256 else np.zeros((n, 3), np.uint8)
    if n > 256:
        pal = np.random.RandomState(seed).randint(0, 256, size=(n, 3)).astype(np.uint8)
    return pal


@dataclasses.dataclass(frozen=True)
class DatasetDescriptor:
    """Static facts about a segmentation data set stored as official-format TFRecords."""

    name: str
    num_classes: int
    ignore_label: int
    splits_to_sizes: Mapping[str, int]
    class_names: Sequence[str] = ()
    palette: np.ndarray | None = None  # [num_classes, 3] uint8
    train_split: str | None = None
    eval_split: str | None = None
    dataset_dir: str | None = None     # the shards' folder, when a descriptor file tells it

    def __post_init__(self):
        if self.num_classes < 1:
            raise DataError(f"descriptor {self.name!r}: num_classes must be >= 1, got {self.num_classes}")
        if not 0 <= self.ignore_label <= 255:
            raise DataError(f"descriptor {self.name!r}: ignore_label must be in 0..255 (labels are "
                            f"uint8 PNGs), got {self.ignore_label}")
        names = tuple(self.class_names) or tuple(f"class_{i}" for i in range(self.num_classes))
        if len(names) != self.num_classes:
            raise DataError(f"descriptor {self.name!r}: {len(names)} class_names for "
                            f"{self.num_classes} classes")
        object.__setattr__(self, "class_names", names)
        pal = generated_palette(self.num_classes) if self.palette is None else np.asarray(self.palette)
        if pal.shape != (self.num_classes, 3) or pal.min() < 0 or pal.max() > 255:
            raise DataError(f"descriptor {self.name!r}: palette must be [{self.num_classes}, 3] "
                            f"values 0..255, got shape {pal.shape}")
        object.__setattr__(self, "palette", pal.astype(np.uint8))
        object.__setattr__(self, "splits_to_sizes", dict(self.splits_to_sizes))
        for attr in ("train_split", "eval_split"):
            s = getattr(self, attr)
            if s is not None and s not in self.splits_to_sizes:
                raise DataError(f"descriptor {self.name!r}: {attr} {s!r} is not one of "
                                f"{sorted(self.splits_to_sizes)}")

    @property
    def default_train_split(self) -> str:
        return self.train_split or ("train" if "train" in self.splits_to_sizes
                                    else sorted(self.splits_to_sizes)[0])

    @property
    def default_eval_split(self) -> str:
        return self.eval_split or ("val" if "val" in self.splits_to_sizes
                                   else sorted(self.splits_to_sizes)[-1])

    def to_json_dict(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes, "ignore_label": self.ignore_label,
                "splits_to_sizes": dict(self.splits_to_sizes), "class_names": list(self.class_names),
                "palette": self.palette.tolist(), "default_train_split": self.default_train_split,
                "default_eval_split": self.default_eval_split}


CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                      "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
                      "bus", "train", "motorcycle", "bicycle")
CITYSCAPES_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                      (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
                      (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
                      (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
SYNTHETIC_CLASSES = ("background", "disc", "square", "triangle", "ring", "stripes")
SYNTHETIC_PALETTE = ((0, 0, 0), (220, 60, 50), (60, 180, 75), (60, 90, 220), (240, 200, 40),
                     (200, 80, 220))
# Default sizes of the built-in synthetic set (nas_deeplab.data.synthetic builds exactly these).
SYNTHETIC_NUM_TRAIN = 96
SYNTHETIC_NUM_VAL = 24
# The built-in context set (nas_deeplab.data.synthetic_context), where the architecture matters.
SYNTHETIC_CONTEXT_CLASSES = ("background", "small_disc", "large_disc", "square", "nucleus", "ring", "line")
SYNTHETIC_CONTEXT_PALETTE = ((0, 0, 0), (220, 60, 50), (60, 90, 220), (60, 180, 75), (240, 200, 40),
                             (200, 80, 220), (255, 255, 255))
SYNTHETIC_CONTEXT_NUM_TRAIN = 96
SYNTHETIC_CONTEXT_NUM_VAL = 24

_BUILTINS = {
    "cityscapes": DatasetDescriptor(
        "cityscapes", 19, 255,
        {"train_fine": 2975, "train_coarse": 22973, "trainval_fine": 3475, "trainval_coarse": 23473,
         "val_fine": 500, "test_fine": 1525},
        CITYSCAPES_CLASSES, np.array(CITYSCAPES_PALETTE, np.uint8), "train_fine", "val_fine"),
    "pascal_voc_seg": DatasetDescriptor(
        "pascal_voc_seg", 21, 255, {"train": 1464, "train_aug": 10582, "trainval": 2913, "val": 1449},
        VOC_CLASSES, voc_palette(21), "train_aug", "val"),
    "ade20k": DatasetDescriptor(
        "ade20k", 151, 0, {"train": 20210, "val": 2000},
        ("other",) + tuple(f"ade_class_{i}" for i in range(1, 151)), generated_palette(151),
        "train", "val"),
    "synthetic": DatasetDescriptor(
        "synthetic", len(SYNTHETIC_CLASSES), 255, {"train": SYNTHETIC_NUM_TRAIN, "val": SYNTHETIC_NUM_VAL},
        SYNTHETIC_CLASSES, np.array(SYNTHETIC_PALETTE, np.uint8), "train", "val"),
    "synthetic_context": DatasetDescriptor(
        "synthetic_context", len(SYNTHETIC_CONTEXT_CLASSES), 255,
        {"train": SYNTHETIC_CONTEXT_NUM_TRAIN, "val": SYNTHETIC_CONTEXT_NUM_VAL},
        SYNTHETIC_CONTEXT_CLASSES, np.array(SYNTHETIC_CONTEXT_PALETTE, np.uint8), "train", "val"),
}

BUILTIN_NAMES = tuple(_BUILTINS)


def descriptor_from_json_dict(d: dict, source: str = "<dict>") -> DatasetDescriptor:
    required = ("name", "num_classes", "ignore_label", "splits_to_sizes")
    missing = [k for k in required if k not in d]
    if missing:
        raise DataError(f"dataset descriptor {source}: missing key(s) {missing}; required {list(required)}")
    unknown = set(d) - set(required) - {"class_names", "palette", "default_train_split",
                                         "default_eval_split", "dataset_dir"}
    if unknown:
        raise DataError(f"dataset descriptor {source}: unknown key(s) {sorted(unknown)}")
    try:
        return DatasetDescriptor(
            name=str(d["name"]), num_classes=int(d["num_classes"]), ignore_label=int(d["ignore_label"]),
            splits_to_sizes={str(k): int(v) for k, v in dict(d["splits_to_sizes"]).items()},
            class_names=tuple(d.get("class_names", ())),
            palette=None if d.get("palette") is None else np.asarray(d["palette"]),
            train_split=d.get("default_train_split"), eval_split=d.get("default_eval_split"),
            dataset_dir=_records_dir(d.get("dataset_dir"), source))
    except DataError as e:
        raise DataError(f"dataset descriptor {source}: {e}") from None
    except (TypeError, ValueError) as e:
        raise DataError(f"dataset descriptor {source}: {e}") from None


def _records_dir(named: str | None, source: str) -> str | None:
    """The folder a descriptor file's shards are in: its "dataset_dir" (relative to the file), else
    the file's own folder when that holds TFRecord shards, else None (then --dataset_dir is needed)."""
    if not os.path.isfile(source):
        return named
    here = os.path.dirname(os.path.abspath(source))
    if named is not None:
        return os.path.normpath(os.path.join(here, str(named)))
    if any(f.endswith(".tfrecord") for f in os.listdir(here)):
        return here
    return None


def get_descriptor(name_or_path: str | DatasetDescriptor) -> DatasetDescriptor:
    """A built-in name (cityscapes, pascal_voc_seg, ade20k, synthetic, synthetic_context) or a path to a
    JSON descriptor."""
    if isinstance(name_or_path, DatasetDescriptor):
        return name_or_path
    if name_or_path in _BUILTINS:
        return _BUILTINS[name_or_path]
    if name_or_path.endswith(".json") or os.path.isfile(name_or_path):
        try:
            with open(name_or_path, encoding="utf-8") as f:
                d = json.load(f)
        except OSError as e:
            raise DataError(f"cannot read dataset descriptor {name_or_path}: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise DataError(f"dataset descriptor {name_or_path} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise DataError(f"dataset descriptor {name_or_path}: expected a JSON object")
        return descriptor_from_json_dict(d, name_or_path)
    raise DataError(f"unknown dataset {name_or_path!r}: use one of {list(BUILTIN_NAMES)} or a path to "
                    f"a JSON descriptor file")
