"""Official DeepLab TFRecord format: example encoding/decoding, shard naming and atomic shard writing.

Keys and types are exactly those of `research/deeplab/datasets/build_data.py image_seg_to_tfexample`
and the parser of `data_generator.py`, so shards written by the official `build_*_data.py` scripts load
here unchanged and ours load in the official reader. Images are decoded by content
(`tf.image.is_jpeg`), as the official reader does; the `image/format` field is informative only.
"""

from __future__ import annotations

import glob
import os
import re

import tensorflow as tf

from nas_deeplab.data.errors import DataError

SHARD_PATTERN = "%s-%05d-of-%05d.tfrecord"
SPLIT_GLOB = "%s-*"

# The official data_generator parser spec (image/channels is written but not parsed).
FEATURE_SPEC = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/filename": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/format": tf.io.FixedLenFeature((), tf.string, default_value="jpeg"),
    "image/height": tf.io.FixedLenFeature((), tf.int64, default_value=0),
    "image/width": tf.io.FixedLenFeature((), tf.int64, default_value=0),
    "image/segmentation/class/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/segmentation/class/format": tf.io.FixedLenFeature((), tf.string, default_value="png"),
}


def sniff_format(data: bytes) -> str:
    """'jpeg' or 'png' from the file's magic bytes (what `image/format` should say)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    raise DataError("image bytes are neither JPEG nor PNG")


def _bytes(v: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _int64(v: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))


def encode_example(image_data: bytes, filename: str | bytes, height: int, width: int,
                   seg_data: bytes | None, image_format: str | None = None,
                   seg_format: str = "png") -> bytes:
    """Serialized tf.train.Example, field for field as official `image_seg_to_tfexample`."""
    fmt = image_format or sniff_format(image_data)
    if isinstance(filename, str):
        filename = filename.encode("utf-8")
    feature = {
        "image/encoded": _bytes(image_data),
        "image/filename": _bytes(filename),
        "image/format": _bytes(fmt.encode()),
        "image/height": _int64(height),
        "image/width": _int64(width),
        "image/channels": _int64(3),
        "image/segmentation/class/encoded": _bytes(seg_data or b""),
        "image/segmentation/class/format": _bytes(seg_format.encode()),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)  # sorted map keys: same input, same bytes


def decode_image(content: tf.Tensor, channels: int) -> tf.Tensor:
    """JPEG or PNG by content (official `_decode_image`), uint8 [H, W, channels]."""
    img = tf.cond(tf.image.is_jpeg(content),
                  lambda: tf.image.decode_jpeg(content, channels=channels),
                  lambda: tf.image.decode_png(content, channels=channels, dtype=tf.uint8))
    img.set_shape([None, None, channels])
    return img


def parse_example(serialized: tf.Tensor) -> dict:
    return tf.io.parse_single_example(serialized, FEATURE_SPEC)


def decode_example(serialized: tf.Tensor, ignore_label: int = 255) -> dict:
    """Parse and decode one record: image uint8 [H,W,3], label uint8 [H,W,1], filename.

    A record without label bytes (official test splits) gets a label filled with `ignore_label`.
    """
    f = parse_example(serialized)
    image = decode_image(f["image/encoded"], 3)
    seg = f["image/segmentation/class/encoded"]
    shape = tf.shape(image)
    label = tf.cond(tf.strings.length(seg) > 0,
                    lambda: decode_image(seg, 1),
                    lambda: tf.fill([shape[0], shape[1], 1], tf.constant(ignore_label, tf.uint8)))
    label.set_shape([None, None, 1])
    return {"image": image, "label": label, "filename": f["image/filename"],
            "height": tf.cast(f["image/height"], tf.int32), "width": tf.cast(f["image/width"], tf.int32)}


def shard_path(output_dir: str, split: str, shard: int, num_shards: int) -> str:
    return os.path.join(output_dir, SHARD_PATTERN % (split, shard, num_shards))


def list_split_files(dataset_dir: str, split: str) -> list[str]:
    """Sorted shard paths of `split` (official glob `<split>-*`); DataError naming the pattern if none."""
    pattern = os.path.join(dataset_dir, SPLIT_GLOB % split)
    if not os.path.isdir(dataset_dir):
        raise DataError(f"dataset folder {dataset_dir} does not exist (looking for {pattern})")
    # Skip our own in-progress temp files (".<name>.tmp-*" never match "<split>-*", but be explicit).
    files = sorted(p for p in glob.glob(pattern) if not os.path.basename(p).startswith("."))
    if not files:
        present = sorted({os.path.basename(p).split("-")[0] for p in glob.glob(
            os.path.join(dataset_dir, "*.tfrecord"))})
        hint = f"; splits present: {present}" if present else ""
        raise DataError(f"no TFRecord files for split {split!r}: nothing matches {pattern}{hint}")
    _check_complete(files, pattern)
    return files


def _check_complete(files: list[str], pattern: str) -> None:
    """Shards named `-NNNNN-of-MMMMM`: all M must be present (an interrupted build is not a split)."""
    totals = {}
    for p in files:
        m = re.search(r"-(\d{5})-of-(\d{5})\.tfrecord$", os.path.basename(p))
        if m:
            totals.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if len(totals) > 1:
        raise DataError(f"{pattern} matches shards of {len(totals)} different builds (-of-"
                        f"{', -of-'.join('%05d' % t for t in sorted(totals))}); remove the stale ones")
    for total, seen in totals.items():
        missing = sorted(set(range(total)) - seen)
        if missing:
            raise DataError(f"incomplete split: {pattern} has {len(seen)} of {total} shards "
                            f"(missing shard numbers {missing[:10]}); rebuild the data set")


class ShardWriter:
    """Writes examples in contiguous blocks over `num_shards` shards, each shard atomically.

    Each shard is written to `.<name>.tmp-<pid>` and renamed to its final name only when complete, so
    an interrupted build leaves no file that matches the reader's `<split>-*` glob.
    Use as a context manager; records are assigned to shards in order, `ceil(n / num_shards)` per shard
    (the official builders' layout), so `num_examples` must be known up front.
    """

    def __init__(self, output_dir: str, split: str, num_shards: int, num_examples: int):
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self.output_dir, self.split, self.num_shards = output_dir, split, num_shards
        self.per_shard = max(1, -(-num_examples // num_shards))
        self.num_examples = num_examples
        self._count = 0
        self._shard = -1
        self._writer = None
        self._tmp = None
        self.paths: list[str] = []
        os.makedirs(output_dir, exist_ok=True)

    def _open(self, shard: int):
        self._close_current(commit=True)
        final = shard_path(self.output_dir, self.split, shard, self.num_shards)
        self._tmp = os.path.join(self.output_dir, f".{os.path.basename(final)}.tmp-{os.getpid()}")
        self._final = final
        self._writer = tf.io.TFRecordWriter(self._tmp)
        self._shard = shard

    def _close_current(self, commit: bool):
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        if commit:
            os.replace(self._tmp, self._final)
            self.paths.append(self._final)
        else:
            try:
                os.remove(self._tmp)
            except OSError:
                pass

    def write(self, serialized: bytes):
        shard = min(self._count // self.per_shard, self.num_shards - 1)
        if shard != self._shard:
            self._open(shard)
        self._writer.write(serialized)
        self._count += 1

    def close(self):
        """Commit the open shard and create any remaining (empty) shards so the count is complete."""
        self._close_current(commit=True)
        for shard in range(self._shard + 1, self.num_shards):
            self._open(shard)
            self._close_current(commit=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self._close_current(commit=False)
        return False
