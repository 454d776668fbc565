"""Generic builder: a folder of images + a folder of single-channel label PNGs -> official TFRecords.

The form of the official VOC builder: labels share the image's base name, and an optional list file
per split names the images (one base name per line). Every pair is validated before anything is
written (image decodable, label single-channel after the optional conversion, sizes equal, label
values in [0, num_classes) or the ignore label); a problem raises `DataError` naming the source files.
Shards are written atomically (`ShardWriter`). Image bytes are stored as they are (JPEG or PNG, as
the official builders do); labels are re-encoded as 8-bit greyscale PNGs, because TF's PNG decoder
would expand a palette PNG to colours instead of returning its indices.

`resize_factor` (e.g. 0.5 for the paper's half-resolution Cityscapes search input) downsamples every
pair once, at build time, after validation at the source size: see `resized_size` and `resize_pair`.
"""

from __future__ import annotations

import io
import math
import os
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from nas_deeplab.data.errors import DataError
from nas_deeplab.data.tfrecord import ShardWriter, encode_example, sniff_format

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
# --resize_factor of the datasets/build_*_data.py scripts (not train.py's official --resize_factor,
# which rounds on-the-fly resizes to factor*k+1 sizes).
RESIZE_FACTOR_HELP = ("Downsample every image and label once, at build time, by this factor in (0, 1] (0.5: "
                      "Cityscapes 1024x2048 -> 512x1024, the paper's search input). Sides become "
                      "round-half-up(side * factor); images bilinear (antialiased) stored as PNG, labels "
                      "nearest neighbour; image/height and image/width hold the new size. Default: as is.")
LabelFn = Callable[[Image.Image, str], np.ndarray]


class Pair(tuple):
    """(name, image_path, label_path or None); `name` goes into image/filename."""

    __slots__ = ()

    def __new__(cls, name: str, image: str, label: str | None):
        return super().__new__(cls, (name, image, label))

    name = property(lambda self: self[0])
    image = property(lambda self: self[1])
    label = property(lambda self: self[2])


def read_list_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            names = [ln.strip() for ln in f if ln.strip()]
    except OSError as e:
        raise DataError(f"cannot read list file {path}: {e.strerror or e}") from None
    if not names:
        raise DataError(f"list file {path} names no images")
    return names


def _find_image(image_dir: str, base: str, exts: Sequence[str]) -> str | None:
    for ext in exts:
        p = os.path.join(image_dir, base + ext)
        if os.path.isfile(p):
            return p
    return None


def find_pairs(image_dir: str, label_dir: str | None, list_file: str | None = None,
               image_exts: Sequence[str] = IMAGE_EXTS, label_ext: str = ".png",
               label_suffix: str = "") -> list[Pair]:
    """Pairs by base name: image `<name>.<ext>` goes with label `<name><label_suffix>.png`; with
    `list_file` exactly the names listed (in that order), else all images in `image_dir` (sorted).
    A missing image or label is a DataError naming the path searched and the naming rule."""
    if not os.path.isdir(image_dir):
        raise DataError(f"image folder {image_dir} does not exist")
    if label_dir is not None and not os.path.isdir(label_dir):
        raise DataError(f"label folder {label_dir} does not exist")
    if list_file is not None:
        names = read_list_file(list_file)
    else:
        names = sorted(os.path.splitext(f)[0] for f in os.listdir(image_dir)
                       if os.path.splitext(f)[1].lower() in image_exts)
        if not names:
            raise DataError(f"no images ({'/'.join(image_exts)}) in {image_dir}")
    pairs = []
    for n in names:
        img = _find_image(image_dir, n, image_exts)
        if img is None:
            src = f" (listed in {list_file})" if list_file else ""
            raise DataError(f"image {os.path.join(image_dir, n)}{{{','.join(image_exts)}}} not found{src}")
        lab = None
        if label_dir is not None:
            lab = os.path.join(label_dir, n + label_suffix + label_ext)
            if not os.path.isfile(lab):
                raise DataError(f"label {lab} for image {img} not found (a label is named after its "
                                f"image: <name>{label_suffix}{label_ext}; see --label_suffix)")
        pairs.append(Pair(n, img, lab))
    return pairs


def default_label_fn(label: Image.Image, path: str) -> np.ndarray:
    """Class ids as stored: greyscale ('L') or palette indices ('P', as VOC SegmentationClass)."""
    if label.mode not in ("L", "P"):
        raise DataError(f"label {path} is not a single-channel PNG (mode {label.mode}); convert it to "
                        f"class ids or pass a label conversion")
    return np.asarray(label, np.uint8)


def _load_image(path: str) -> tuple[bytes, int, int]:
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            w, h = im.size
            try:
                sniff_format(data)
            except DataError:  # another format Pillow reads: store as PNG
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format="PNG")
                data = buf.getvalue()
    except OSError as e:
        raise DataError(f"image {path} cannot be decoded: {e}") from None
    return data, h, w


def _load_label(path: str, label_fn: LabelFn) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            arr = label_fn(im, path)
    except OSError as e:
        raise DataError(f"label {path} cannot be decoded: {e}") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(f"label {path} is not single-channel (shape {arr.shape})")
    return arr


def check_resize_factor(factor: float | None) -> float | None:
    """None (or 1: keep the source size) or a factor in (0, 1]; anything else is a DataError naming the
    flag. Above 1 is refused: upsampling at build time adds no information, only storage; the input
    pipeline's random scale (--min/max_scale_factor) enlarges on the fly."""
    if factor is None:
        return None
    if not (isinstance(factor, (int, float)) and 0 < factor <= 1):  # also refuses NaN
        raise DataError(f"--resize_factor={factor}: must be in (0, 1] (e.g. 0.5 for half resolution)")
    return float(factor)


def resized_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """Size after `resize_factor`: each side round-half-up(side * factor), at least 1 pixel.

    Cityscapes 1024x2048 at 0.5 gives 512x1024 (the paper's half resolution); VOC 375x500 gives
    188x250. The resize then maps the whole source onto the whole target, so the effective scale of
    each axis is new/old (0.5013 for 375 -> 188), not exactly `factor`.
    """
    return (max(1, math.floor(height * factor + 0.5)), max(1, math.floor(width * factor + 0.5)))


def resize_pair(image: Image.Image, label: np.ndarray | None, factor: float):
    """(PNG bytes, height, width, label or None) of a pair resized by `factor`.

    Image: Pillow BILINEAR, a triangle filter widened by 1/factor when shrinking (the same filter as
    tf.image.resize(..., "bilinear", antialias=True)), so every source pixel contributes; not DeepLab's
    align_corners resize, which at 2x point-samples (aliasing) and stretches the grid by (H-1)/(h-1).
    Label: nearest neighbour with the same pixel-centre geometry (target pixel i takes source pixel
    floor((i + 0.5) * old/new)), so no new label values appear. The image is stored as PNG (lossless)
    whatever the source format, so a JPEG source is not compressed twice."""
    h, w = resized_size(image.height, image.width, factor)
    small = image.convert("RGB").resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    if label is not None:
        label = np.asarray(Image.fromarray(label.astype(np.uint8), mode="L").resize((w, h), Image.NEAREST))
    return buf.getvalue(), h, w, label


def check_pair(pair: Pair, num_classes: int, ignore_label: int, label_fn: LabelFn | None = None,
               resize_factor: float | None = None):
    """Validate and return (image_bytes, height, width, label_png_bytes or None), resized by
    `resize_factor` (after validation at the source size) unless it is None or 1."""
    data, h, w = _load_image(pair.image)
    resize = check_resize_factor(resize_factor) not in (None, 1.0)
    if pair.label is None:
        if resize:
            with Image.open(pair.image) as im:
                data, h, w, _ = resize_pair(im, None, resize_factor)
        return data, h, w, None
    lab = _load_label(pair.label, label_fn or default_label_fn)
    if lab.shape != (h, w):
        raise DataError(f"image {pair.image} is {h}x{w} but label {pair.label} is "
                        f"{lab.shape[0]}x{lab.shape[1]}")
    bad = (lab >= num_classes) & (lab != ignore_label) | (lab < 0)
    if bad.any():
        vals = sorted(np.unique(lab[bad]).tolist())
        raise DataError(f"label {pair.label} (image {pair.image}) has values {vals[:10]} outside "
                        f"[0, {num_classes}) other than ignore {ignore_label}")
    if resize:
        with Image.open(pair.image) as im:
            data, h, w, lab = resize_pair(im, lab, resize_factor)
    buf = io.BytesIO()
    Image.fromarray(lab.astype(np.uint8), mode="L").save(buf, format="PNG")
    return data, h, w, buf.getvalue()


def validate_pairs(pairs, num_classes, ignore_label, label_fn=None, log=None, what=""):
    for i, p in enumerate(pairs):
        check_pair(p, num_classes, ignore_label, label_fn)
        if log and (i + 1) % 500 == 0:
            log(f"{what}: validated {i + 1}/{len(pairs)}")


def write_descriptor(output_dir: str, name: str, num_classes: int, ignore_label: int,
                     sizes: dict[str, int], class_names=None, palette=None) -> str:
    """descriptor.json next to the shards, so `--dataset=<dir>/descriptor.json` needs no code."""
    import json

    from nas_deeplab.data.descriptors import DatasetDescriptor
    from nas_deeplab.io_utils import atomic_write_text
    d = DatasetDescriptor(name, num_classes, ignore_label, sizes, tuple(class_names or ()), palette)
    path = os.path.join(output_dir, "descriptor.json")
    atomic_write_text(path, json.dumps(d.to_json_dict(), indent=1))
    return path


def build_split(pairs: Sequence[Pair], output_dir: str, split: str, *, num_classes: int,
                ignore_label: int, num_shards: int, label_fn: LabelFn | None = None,
                log: Callable[[str], None] | None = None, validated: bool = False,
                resize_factor: float | None = None) -> int:
    """Validate every pair (unless `validated`), then write `<split>-%05d-of-%05d.tfrecord` shards,
    each pair resized by `resize_factor` (None: source size; image/height and width are the stored size)."""
    check_resize_factor(resize_factor)
    if not pairs:
        raise DataError(f"split {split!r}: no images to write")
    if not validated:
        validate_pairs(pairs, num_classes, ignore_label, label_fn, log, split)
    num_shards = max(1, min(int(num_shards), len(pairs)))   # never an empty shard
    with ShardWriter(output_dir, split, num_shards, len(pairs)) as writer:
        for i, p in enumerate(pairs):
            data, h, w, seg = check_pair(p, num_classes, ignore_label, label_fn, resize_factor)
            writer.write(encode_example(data, p.name, h, w, seg))
            if log and (i + 1) % 500 == 0:
                log(f"{split}: wrote {i + 1}/{len(pairs)}")
    if log:
        scaled = f", resized by {resize_factor}" if resize_factor not in (None, 1.0) else ""
        log(f"{split}: {len(pairs)} examples{scaled} in {num_shards} shard(s) under {output_dir}")
    return len(pairs)


def build_custom(image_dir: str, label_dir: str, output_dir: str, *, num_classes: int,
                 ignore_label: int = 255, list_files: dict[str, str] | None = None,
                 split: str = "train", num_shards: int = 4, label_fn: LabelFn | None = None,
                 name: str = "custom", class_names=None, log=None,
                 resize_factor: float | None = None, label_suffix: str = "") -> dict[str, int]:
    """A custom data set: one split from all images, or one split per list file {split: path}.

    Also writes descriptor.json (name, classes, ignore label, split sizes) next to the shards.
    `resize_factor`: see `build_split`.
    """
    check_resize_factor(resize_factor)  # before any work
    sizes = {}
    jobs: Iterable = (list_files or {split: None}).items()
    all_pairs = {s: find_pairs(image_dir, label_dir, lf, label_suffix=label_suffix) for s, lf in jobs}
    for s, pairs in all_pairs.items():  # validate every split before writing any
        validate_pairs(pairs, num_classes, ignore_label, label_fn, log, s)
    for s, pairs in all_pairs.items():
        sizes[s] = build_split(pairs, output_dir, s, num_classes=num_classes, ignore_label=ignore_label,
                               num_shards=num_shards, label_fn=label_fn, log=log, validated=True,
                               resize_factor=resize_factor)
    write_descriptor(output_dir, name, num_classes, ignore_label, sizes, class_names)
    return sizes
