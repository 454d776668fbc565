"""Coloured prediction PNGs with the data set's palette (official vis.py style: <name>_prediction.png)."""

from __future__ import annotations

import io
import os
import re

import numpy as np
from PIL import Image

from nas_deeplab.io_utils import atomic_write_bytes


def colorize(labels: np.ndarray, palette: np.ndarray, ignore_label: int | None = None) -> np.ndarray:
    """[H, W] class ids -> [H, W, 3] uint8; the ignore label (and anything out of range) is white."""
    palette = np.asarray(palette, np.uint8)
    labels = np.asarray(labels)
    out = np.full(labels.shape + (3,), 255, np.uint8)
    ok = (labels >= 0) & (labels < len(palette))
    if ignore_label is not None:
        ok &= labels != ignore_label
    out[ok] = palette[labels[ok]]
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


class PredictionWriter:
    """Callable for `evaluate_model(on_prediction=...)`: writes prediction (and label) PNGs."""

    def __init__(self, directory: str, palette, ignore_label: int, write_labels: bool = True):
        self.directory, self.palette, self.ignore = directory, palette, ignore_label
        self.write_labels = write_labels
        self.count = 0
        os.makedirs(directory, exist_ok=True)

    def __call__(self, filename: str, prediction: np.ndarray, label: np.ndarray | None = None):
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(filename)) or f"image_{self.count:06d}"
        base = f"{self.count:06d}_{base}"
        atomic_write_bytes(os.path.join(self.directory, base + "_prediction.png"),
                           png_bytes(colorize(prediction, self.palette, self.ignore)))
        if self.write_labels and label is not None:
            atomic_write_bytes(os.path.join(self.directory, base + "_label.png"),
                               png_bytes(colorize(label, self.palette, self.ignore)))
        self.count += 1
