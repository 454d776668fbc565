"""The built-in context set: classes that only shape, size, neighbourhood and resolution tell apart.

The built-in `synthetic` set is solved by colour alone, so every architecture looks alike on it. Here
every region -- background included -- is painted from the same 8-colour palette (a random permutation
per image, plus pixel noise), so every class has the same per-pixel colour distribution and a per-pixel
rule can do no better than "all background". What separates the classes, and what a network needs:

- 0 background: coarse stripes (period 14-20 px). Texture frequency; a window of ~9 px.
- 1 small disc (radius 5-8), fine stripes (period 4-6), on its own. Object size (vs 2) and neighbourhood
  (vs 4): context reaching past the disc and ~10-20 px around it.
- 2 large disc (radius 14-20), the same fine stripes. Object size: a receptive field covering the disc
  (30-40 px); its interior looks exactly like that of a small disc.
- 3 square (half side 5-8, rotated), the same fine stripes. Shape: a window covering the object (~15 px).
- 4 nucleus: a small disc drawn exactly like class 1, at the centre of a ring (class 5), 6-10 px from
  the ring's inner edge. Neighbourhood: a receptive field reaching the ring (~20-30 px).
- 5 ring: an annulus 4-6 px wide (outer radius 15-24) of the same fine stripes. Shape: a thin curved
  band; a window of ~15 px.
- 6 line: straight segments ~4 px wide, one solid colour. Thin structure: high-resolution features (a
  prediction at stride 4 can keep a line, one at stride 8 or 16 cannot).

So a per-pixel rule fails on 1-6 (its best, a colour lookup table, scores val mIoU 0.117: all
background), a 9-px receptive field on 1, 3, 4 (and partly 2, 5), and a network predicting at stride 8
or coarser on 6 (and 5). Size and texture frequency are cues, so train without random scaling
(`--min_scale_factor=1 --max_scale_factor=1`; the search presets already use none).
Fixed 129x129 images (training crop 129, search crop 65), no ignore regions. Drawn with numpy from a
seeded RandomState (MT19937: stable across numpy versions and machines), PNG-encoded, written as
official-format TFRecords like `synthetic`. Same seed -> same bytes.
"""

from __future__ import annotations

import json
import os

import numpy as np

from nas_deeplab.data import descriptors, synthetic
from nas_deeplab.data.tfrecord import ShardWriter, encode_example
from nas_deeplab.io_utils import atomic_directory

NAME = "synthetic_context"
CACHE_NAME = "synthetic_context-v1"  # bump when the generator's output changes
DEFAULT_SEED = 0
IMAGE_SIZE = 129
NUM_SHARDS = 2
NOISE_STD = 8.0
LINE_HALF_WIDTH = 2.0  # ~4 px lines: a stride-4 prediction can keep them, stride 8 or 16 cannot
BACKGROUND, SMALL_DISC, LARGE_DISC, SQUARE, NUCLEUS, RING, LINE = range(7)

# Shared by every class; well apart and away from 0/255 so noise is not clipped unevenly.
PALETTE = np.array([(200, 60, 50), (60, 170, 70), (50, 80, 210), (225, 200, 40), (190, 70, 200),
                    (40, 190, 200), (215, 215, 215), (80, 80, 80)], np.float64)


def _stripes(rs, yy, xx, period, colours):
    """Binary stripes (half the pixels each colour) at a random angle and phase, [H, W, 3]."""
    a = rs.uniform(0, np.pi)
    band = np.floor((xx * np.cos(a) + yy * np.sin(a)) / (period / 2) + rs.uniform(0, 2)) % 2
    return colours[band.astype(np.int64)]


def _place(rs, placed, radius, size, gap=3.0, tries=200):
    """A centre keeping the disc of `radius` inside the image and `gap` px clear of `placed`
    [(cy, cx, r)], or None when none was found in `tries` draws."""
    for _ in range(tries):
        cy, cx = rs.uniform(radius + 1, size - 1 - radius, size=2)
        if all((cy - py) ** 2 + (cx - px) ** 2 >= (radius + pr + gap) ** 2 for py, px, pr in placed):
            placed.append((cy, cx, radius))
            return cy, cx
    return None


def generate_scene(rs: np.random.RandomState, size: int = IMAGE_SIZE):
    """One (image uint8 [size, size, 3], label uint8 [size, size]) pair; draws from `rs` only."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    order = rs.permutation(len(PALETTE))
    bg_colours, object_colours = PALETTE[order[:2]], PALETTE[order[2:]]

    def two_colours():
        return object_colours[rs.choice(len(object_colours), 2, replace=False)]

    image = _stripes(rs, yy, xx, rs.uniform(14, 20), bg_colours)
    label = np.zeros((size, size), np.uint8)

    def paint(mask, cls, texture):
        image[mask] = texture[mask]
        label[mask] = cls

    for _ in range(rs.randint(2, 5)):  # lines first: objects occlude them
        y0, x0 = rs.uniform(0, size, size=2)
        a, length = rs.uniform(0, 2 * np.pi), rs.uniform(30, 80)
        dy, dx = np.sin(a), np.cos(a)
        t = np.clip((yy - y0) * dy + (xx - x0) * dx, 0, length)
        near = (yy - y0 - t * dy) ** 2 + (xx - x0 - t * dx) ** 2 <= LINE_HALF_WIDTH ** 2
        paint(near, LINE, np.broadcast_to(object_colours[rs.randint(len(object_colours))], image.shape))

    def fine():
        return _stripes(rs, yy, xx, rs.uniform(4, 6), two_colours())

    placed = []
    for _ in range(rs.randint(1, 3)):  # rings, each around a nucleus
        r_nuc, gap, width = rs.uniform(5, 8), rs.uniform(6, 10), rs.uniform(4, 6)
        r_out = r_nuc + gap + width
        centre = _place(rs, placed, r_out, size)
        if centre is None:
            continue
        r2 = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2
        paint((r2 <= r_out ** 2) & (r2 > (r_out - width) ** 2), RING, fine())
        ny, nx = centre + rs.uniform(-2, 2, size=2)
        paint((yy - ny) ** 2 + (xx - nx) ** 2 <= r_nuc ** 2, NUCLEUS, fine())
    kinds = [LARGE_DISC] + [SQUARE] * rs.randint(1, 4) + [SMALL_DISC] * rs.randint(2, 5)
    for cls in kinds:
        if cls == SQUARE:
            half = rs.uniform(5, 8)
            centre = _place(rs, placed, half * np.sqrt(2), size)
        else:
            r = rs.uniform(14, 20) if cls == LARGE_DISC else rs.uniform(5, 8)
            centre = _place(rs, placed, r, size)
        if centre is None:
            continue
        dy, dx = yy - centre[0], xx - centre[1]
        if cls == SQUARE:
            a = rs.uniform(0, np.pi / 2)
            u, v = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
            mask = (np.abs(u) <= half) & (np.abs(v) <= half)
        else:
            mask = dy ** 2 + dx ** 2 <= r ** 2
        paint(mask, cls, fine())
    image = image + rs.normal(0, NOISE_STD, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def write_dataset(output_dir: str, seed: int = DEFAULT_SEED,
                  num_train: int = descriptors.SYNTHETIC_CONTEXT_NUM_TRAIN,
                  num_val: int = descriptors.SYNTHETIC_CONTEXT_NUM_VAL, num_shards: int = NUM_SHARDS) -> dict:
    """Write train/val shards + descriptor.json into `output_dir` (must exist). Returns split sizes."""
    sizes = {}
    for split_i, (split, n) in enumerate((("train", num_train), ("val", num_val))):
        rs = np.random.RandomState([seed, split_i])
        with ShardWriter(output_dir, split, num_shards, n) as writer:
            for i in range(n):
                image, label = generate_scene(rs)
                png, seg_png = synthetic.png_bytes(image), synthetic.png_bytes(label)
                writer.write(encode_example(png, f"{NAME}_{split}_{i:05d}", image.shape[0], image.shape[1],
                                            seg_png, "png"))
        sizes[split] = n
    d = descriptors.get_descriptor(NAME).to_json_dict()
    d["splits_to_sizes"] = sizes
    with open(os.path.join(output_dir, synthetic.COMPLETE_MARK), "w", encoding="utf-8") as f:
        json.dump(d, f, indent=1)
    return sizes


def build(output_dir: str, seed: int = DEFAULT_SEED, num_train: int = descriptors.SYNTHETIC_CONTEXT_NUM_TRAIN,
          num_val: int = descriptors.SYNTHETIC_CONTEXT_NUM_VAL, num_shards: int = NUM_SHARDS,
          overwrite: bool = False) -> str:
    """Build the set atomically into `output_dir` (a folder that appears only when complete)."""
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        synthetic.make_shared(tmp)
        write_dataset(tmp, seed, num_train, num_val, num_shards)
    return output_dir


def ensure_builtin_dataset(cache_dir: str | None = None, **build_kwargs) -> str:
    """This set's folder, built on first use (default $NAS_DEEPLAB_CACHE/synthetic_context-v1)."""
    return synthetic.ensure_builtin_dataset(cache_dir, name=NAME, **build_kwargs)
