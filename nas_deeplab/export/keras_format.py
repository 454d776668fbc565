"""The native Keras 3 format: one `.keras` file (config + weights) that `keras.saving.load_model`
reads back with no custom_objects, once `nas_deeplab` is imported (every layer is registered, see
`nas_deeplab/model/serialization.py`).

For Keras users who want the model as a Keras object (fine-tuning, `model.predict`, another Keras
pipeline). The model reloads with identical outputs and variable paths, so its weights also still
map to the official names. Not kept: the drop-path step (a reloaded model starts at step 0, which
inference never reads) and optimizer state (resume training from the TF2 checkpoints instead).

The file is written under a temporary name in the same folder, then renamed: a crash never
leaves a half-written `.keras` file where a good one was expected.
"""

from __future__ import annotations

import contextlib
import os
import zipfile

import keras

import nas_deeplab.model.keras_backbone  # noqa: F401  (registers every layer and the models)
from nas_deeplab.io_utils import OutputError

SUFFIX = ".keras"


class KerasFormatError(ValueError):
    """A .keras path or file that cannot be used; the message names it."""


def check_keras_path(path: str) -> None:
    """Refuse a path without the .keras suffix (call it before any work, e.g. in export.py)."""
    if not str(path).endswith(SUFFIX):
        raise KerasFormatError(f"{path}: a Keras model file must end in {SUFFIX}")


def save_keras(model: keras.Model, path: str, overwrite: bool = False) -> str:
    """Write `model` (a built DeepLab or AutoDeepLabBackbone) to `path` (ending .keras) atomically.
    An existing file is refused unless `overwrite`. Returns the absolute path."""
    check_keras_path(path)
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not overwrite:
        raise OutputError(f"{path} exists (pass --overwrite to replace it)")
    if os.path.isdir(path):
        raise OutputError(f"{path} is a folder, not a .keras file")
    folder, base = os.path.split(path)
    # Keras insists on the suffix, so the temporary name keeps it.
    tmp = os.path.join(folder, f".{base[:-len(SUFFIX)]}.tmp-{os.getpid()}{SUFFIX}")
    try:
        os.makedirs(folder, exist_ok=True)
        model.save(tmp, overwrite=True)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)
    return path


def load_keras(path: str, compile: bool = False) -> keras.Model:
    """The model saved by `save_keras` (or any `.keras` file of nas_deeplab models)."""
    check_keras_path(path)
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise KerasFormatError(f"{path}: no such .keras file")
    if not zipfile.is_zipfile(path):
        raise KerasFormatError(f"{path}: not a .keras file (not a zip archive)")
    return keras.saving.load_model(path, compile=compile)
