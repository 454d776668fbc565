"""Small fixtures shared by the data tests: tiny images, PNG/JPEG bytes, hand-made shards."""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from nas_deeplab.data.tfrecord import encode_example, shard_path


def png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def scene(h, w, seed=0, num_classes=3, ignore=255):
    rs = np.random.RandomState(seed)
    image = rs.randint(0, 256, size=(h, w, 3)).astype(np.uint8)
    label = rs.randint(0, num_classes, size=(h, w)).astype(np.uint8)
    label[: h // 4, : w // 4] = ignore
    return image, label


def example(image, label, name, image_bytes=None, label_bytes=None):
    return encode_example(png(image) if image_bytes is None else image_bytes, name, image.shape[0],
                          image.shape[1], png(label) if label_bytes is None else label_bytes, None)


def write_shards(folder, split, records, num_shards=1):
    """records: serialized examples; written in contiguous blocks like ShardWriter."""
    os.makedirs(folder, exist_ok=True)
    per = -(-len(records) // num_shards)
    paths = []
    for s in range(num_shards):
        p = shard_path(folder, split, s, num_shards)
        with tf.io.TFRecordWriter(p) as w:
            for r in records[s * per:(s + 1) * per]:
                w.write(r)
        paths.append(p)
    return paths


def file_hashes(folder):
    """{file name: sha256} of a folder's files (byte-identical builds compare equal)."""
    import hashlib
    import os
    return {n: hashlib.sha256(open(os.path.join(folder, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(folder))}
