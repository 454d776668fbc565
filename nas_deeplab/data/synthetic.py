"""The built-in synthetic segmentation set: the offline default for every CLI.

Scenes of textured shapes on a textured background, drawn with numpy from a seeded RandomState (the
legacy MT19937 stream is stable across numpy versions and machines), PNG-encoded with Pillow and
written as official-format TFRecords. Classes differ in colour statistics, texture and shape, so a
small network learns them quickly, yet overlaps, noise, size variety and a shared "confuser" colour
keep it from being trivial. Same seed -> same bytes.

Classes: 0 background (low-frequency grey-brown noise), 1 disc (red, smooth), 2 square (green,
checkerboard), 3 triangle (blue, speckled), 4 ring (yellow, radial shading), 5 stripes (magenta/cyan
diagonal stripes). Optional ignore regions (label 255) are small rectangles of pure noise.
"""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
from PIL import Image

from nas_deeplab.data import descriptors
from nas_deeplab.data.errors import DataError
from nas_deeplab.data.tfrecord import ShardWriter, encode_example
from nas_deeplab.io_utils import OutputError, atomic_directory

CACHE_ENV = "NAS_DEEPLAB_CACHE"
CACHE_NAME = "synthetic-v1"  # bump when the generator's output changes
DEFAULT_SEED = 0
MIN_SIZE, MAX_SIZE = 97, 161
NUM_SHARDS = 2
COMPLETE_MARK = "descriptor.json"

_COLOURS = {1: (210, 60, 50), 2: (60, 170, 70), 3: (50, 80, 210), 4: (230, 200, 40), 5: (200, 70, 210)}


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _background(rs, h, w):
    # Low-frequency noise: a coarse random grid upsampled (nearest+box blur) plus fine noise.
    gh, gw = h // 16 + 2, w // 16 + 2
    coarse = rs.uniform(70, 150, size=(gh, gw, 1)) + rs.uniform(-15, 15, size=(1, 1, 3))
    up = np.kron(coarse, np.ones((16, 16, 1)))[:h, :w]
    k = 9
    pad = np.pad(up, ((k, k), (k, k), (0, 0)), mode="edge")
    cs = pad.cumsum(0).cumsum(1)
    blur = (cs[2 * k:, 2 * k:] - cs[:-2 * k, 2 * k:] - cs[2 * k:, :-2 * k] + cs[:-2 * k, :-2 * k])
    blur = blur[:h, :w] / (2 * k) ** 2
    return blur * np.array([1.0, 0.9, 0.75]) + rs.normal(0, 6, size=(h, w, 3))


def _shape_mask(cls, rs, yy, xx, h, w):
    size = rs.uniform(0.12, 0.32) * min(h, w)
    cy, cx = rs.uniform(0.1 * h, 0.9 * h), rs.uniform(0.1 * w, 0.9 * w)
    dy, dx = yy - cy, xx - cx
    if cls == 1:  # disc
        return dy ** 2 + dx ** 2 <= size ** 2
    if cls == 2:  # square (rotated)
        a = rs.uniform(0, np.pi / 2)
        u, v = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
        return (np.abs(u) <= size) & (np.abs(v) <= size)
    if cls == 3:  # triangle: intersection of three half-planes
        a0 = rs.uniform(0, 2 * np.pi)
        m = np.ones_like(yy, bool)
        for j in range(3):
            a = a0 + j * 2 * np.pi / 3
            m &= dx * np.cos(a) + dy * np.sin(a) <= size * 0.6
        return m
    if cls == 4:  # ring
        r2 = dy ** 2 + dx ** 2
        return (r2 <= size ** 2) & (r2 >= (size * rs.uniform(0.45, 0.7)) ** 2)
    # stripes: a rectangle region (the texture carries the stripes)
    hh, ww = size * rs.uniform(0.6, 1.3), size * rs.uniform(0.6, 1.3)
    return (np.abs(dy) <= hh) & (np.abs(dx) <= ww)


def _texture(cls, rs, yy, xx, h, w):
    base = np.array(_COLOURS[cls], np.float64) + rs.uniform(-25, 25, size=3)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    if cls == 2:
        p = rs.randint(4, 8)
        checker = ((yy // p + xx // p) % 2)[..., None]
        img += (checker * 2 - 1) * 30
    elif cls == 3:
        img += rs.normal(0, 25, size=(h, w, 1))
    elif cls == 4:
        img *= (0.75 + 0.25 * np.cos((yy + xx) / rs.uniform(3, 6)))[..., None]
    elif cls == 5:
        period = rs.uniform(5, 9)
        band = (np.floor((yy + xx) / period) % 2)[..., None]
        img = np.where(band > 0, img, np.array([40, 200, 210], np.float64))
    return img


def generate_scene(rs: np.random.RandomState, num_classes: int = 6, ignore_label: int = 255,
                   ignore_prob: float = 0.3):
    """One (image uint8 [H,W,3], label uint8 [H,W]) pair; draws from `rs` only."""
    h, w = rs.randint(MIN_SIZE, MAX_SIZE + 1, size=2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    image = _background(rs, h, w)
    label = np.zeros((h, w), np.uint8)
    n_shapes = rs.randint(3, 7)
    for _ in range(n_shapes):  # later shapes overlap earlier ones
        cls = rs.randint(1, num_classes)
        mask = _shape_mask(cls, rs, yy, xx, h, w)
        tex = _texture(cls, rs, yy, xx, h, w)
        image[mask] = tex[mask]
        label[mask] = cls
    image += rs.normal(0, 8, size=image.shape)
    if rs.uniform() < ignore_prob:
        y0, x0 = rs.randint(0, h - 8), rs.randint(0, w - 8)
        rh, rw = rs.randint(4, 16), rs.randint(4, 16)
        image[y0:y0 + rh, x0:x0 + rw] = rs.uniform(0, 255, size=image[y0:y0 + rh, x0:x0 + rw].shape)
        label[y0:y0 + rh, x0:x0 + rw] = ignore_label
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def write_dataset(output_dir: str, seed: int = DEFAULT_SEED, num_train: int = descriptors.SYNTHETIC_NUM_TRAIN,
                  num_val: int = descriptors.SYNTHETIC_NUM_VAL, num_shards: int = NUM_SHARDS,
                  ignore_prob: float = 0.3) -> dict:
    """Write train/val shards + descriptor.json into `output_dir` (must exist). Returns split sizes."""
    desc = descriptors.get_descriptor("synthetic")
    sizes = {}
    for split_i, (split, n) in enumerate((("train", num_train), ("val", num_val))):
        rs = np.random.RandomState([seed, split_i])
        with ShardWriter(output_dir, split, num_shards, n) as writer:
            for i in range(n):
                image, label = generate_scene(rs, desc.num_classes, desc.ignore_label, ignore_prob)
                writer.write(encode_example(png_bytes(image), f"synthetic_{split}_{i:05d}", image.shape[0],
                                            image.shape[1], png_bytes(label), "png"))
        sizes[split] = n
    d = desc.to_json_dict()
    d["splits_to_sizes"] = sizes
    with open(os.path.join(output_dir, COMPLETE_MARK), "w", encoding="utf-8") as f:
        json.dump(d, f, indent=1)
    return sizes


def build(output_dir: str, seed: int = DEFAULT_SEED, num_train: int = descriptors.SYNTHETIC_NUM_TRAIN,
          num_val: int = descriptors.SYNTHETIC_NUM_VAL, num_shards: int = NUM_SHARDS,
          overwrite: bool = False, ignore_prob: float = 0.3) -> str:
    """Build the set atomically into `output_dir` (a folder that appears only when complete)."""
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        make_shared(tmp)
        write_dataset(tmp, seed, num_train, num_val, num_shards, ignore_prob)
    return output_dir


def make_shared(folder: str) -> None:
    """Give a build's temporary folder the umask's permissions: mkdtemp makes it 0700, and a data set
    folder is normally shared."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)


def _generator(name: str):
    """The module that draws built-in set `name` (its `build`, `CACHE_NAME`, `ensure_builtin_dataset`),
    or None for a data set that is read from disk only. Looked up at call time, so tests can patch it."""
    if name == "synthetic":
        return sys.modules[__name__]
    if name == "synthetic_context":
        from nas_deeplab.data import synthetic_context  # it imports this module: import here
        return synthetic_context
    return None


def default_cache_dir(name: str = "synthetic") -> str:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "nas_deeplab")
    return os.path.join(root, _generator(name).CACHE_NAME)


def ensure_builtin_dataset(cache_dir: str | None = None, name: str = "synthetic", **build_kwargs) -> str:
    """Built-in set `name`'s folder, building it on first use (atomically; later calls are instant).

    `cache_dir` is the data set folder itself (default $NAS_DEEPLAB_CACHE/<CACHE_NAME>, e.g.
    ~/.cache/nas_deeplab/synthetic-v1); `build_kwargs` (seed, num_train, ...) are for tests.
    """
    path = cache_dir or default_cache_dir(name)
    if os.path.isfile(os.path.join(path, COMPLETE_MARK)):
        return path
    if os.path.isdir(path) and os.listdir(path):
        raise DataError(f"{path} exists but holds no complete {name} data set ({COMPLETE_MARK} "
                        f"missing); remove it or point ${CACHE_ENV} elsewhere")
    try:
        _generator(name).build(path, **build_kwargs)
    except (OutputError, OSError):
        # Another process may have won the race to rename its finished build into place.
        if not os.path.isfile(os.path.join(path, COMPLETE_MARK)):
            raise
    return path


def resolve_dataset(dataset_flag: str | None, dataset_dir_flag: str | None):
    """(descriptor, dataset_dir) from the CLI flags --dataset / --dataset_dir.

    `synthetic` (the default) or `synthetic_context` without a folder uses the cached built-in set;
    any other data set needs --dataset_dir, which must exist. A built-in set's folder's own
    descriptor.json (written by its builder) supplies the split sizes it was actually built with.
    """
    name = dataset_flag or "synthetic"
    desc = descriptors.get_descriptor(name)
    generator = _generator(name)
    if not dataset_dir_flag and desc.dataset_dir:
        dataset_dir_flag = desc.dataset_dir        # a descriptor file that names its own folder
        if not os.path.isdir(dataset_dir_flag):
            raise DataError(f"--dataset={name}: its dataset_dir {dataset_dir_flag} does not exist")
    if not dataset_dir_flag:
        if generator is None:
            raise DataError(f"--dataset={name} needs --dataset_dir (a folder of <split>-*.tfrecord "
                            f"shards built by datasets/build_*_data.py)")
        dataset_dir = generator.ensure_builtin_dataset()
    elif not os.path.isdir(dataset_dir_flag):
        raise DataError(f"--dataset_dir={dataset_dir_flag} does not exist")
    else:
        dataset_dir = dataset_dir_flag
    own = os.path.join(dataset_dir, COMPLETE_MARK)
    if generator is not None and os.path.isfile(own):
        built = descriptors.get_descriptor(own)
        if built.num_classes != desc.num_classes or built.ignore_label != desc.ignore_label:
            raise DataError(f"{own} describes {built.num_classes} classes / ignore {built.ignore_label}, "
                            f"not the built-in {name} set's {desc.num_classes} / {desc.ignore_label}")
        desc = built
    return desc, dataset_dir
