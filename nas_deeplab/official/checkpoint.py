"""TF1 name-based checkpoints that the official DeepLab code reads and writes: locate, inspect, write.

The official `research/deeplab` tooling (`train.py --tf_initial_checkpoint`, `eval.py`,
`export_model.py`, `tf.train.list_variables`) only knows variables by their slim names
(`hnasnet/cell_3/comb_iter_0/left/atrous_5x5/weights`, `aspp0/BatchNorm/moving_mean`, ...).
Our training writes TF2 object-based checkpoints, whose keys are object paths instead. Given an
ordered `{official name: variable}` map (`names.official_variable_map`):

* `write_official_checkpoint` writes a V2 bundle (`.index` + `.data-00000-of-00001`) under those
  names, in creation order, plus the `checkpoint` state file, atomically (temporary prefix, renamed
  data then index; the state file last, so a reader never finds a half-written checkpoint).
* `checkpoint_kind` tells an official-format checkpoint from one of ours; `variable_shapes` lists
  what one holds. The way back (with the completeness rule) is `restore.py`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from typing import Mapping

import numpy as np
import tensorflow as tf

from nas_deeplab.io_utils import OutputError, atomic_write_text

GLOBAL_STEP = "global_step"
# Key every TF2 object-based checkpoint carries (the serialized object graph).
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
DATA_SUFFIX = ".data-00000-of-00001"
INDEX_SUFFIX = ".index"
STATE_FILE = "checkpoint"

KIND_OFFICIAL = "official"
KIND_TF2 = "tf2"

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model; the message says which."""


# -- locating and inspecting checkpoints ---------------------------------------------------------

def resolve_checkpoint_prefix(path: str) -> str:
    """A checkpoint prefix from a prefix, a `.index`/`.data-*` file name, or a folder.

    For a folder the `checkpoint` state file decides (as `tf.train.latest_checkpoint` does); without
    one, the newest `*.index` in the folder or its `checkpoints/` subfolder is taken.
    """
    if not path:
        raise CheckpointError("no checkpoint path given")
    path = os.path.expanduser(path)
    for suffix in (INDEX_SUFFIX, DATA_SUFFIX):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    if os.path.isdir(path):
        for folder in (path, os.path.join(path, "checkpoints")):
            if not os.path.isdir(folder):
                continue
            latest = tf.train.latest_checkpoint(folder)
            if latest and os.path.exists(latest + INDEX_SUFFIX):
                return latest
            indexes = [f for f in os.listdir(folder) if f.endswith(INDEX_SUFFIX) and not f.startswith(".")]
            if indexes:
                newest = max(indexes, key=lambda f: os.path.getmtime(os.path.join(folder, f)))
                return os.path.join(folder, newest[: -len(INDEX_SUFFIX)])
        raise CheckpointError(f"no checkpoint found in folder {path} (expected a 'checkpoint' state "
                              "file or *.index files, also looked in its checkpoints/ subfolder)")
    if not os.path.exists(path + INDEX_SUFFIX):
        if os.path.exists(path):
            raise CheckpointError(f"{path} is a file but not a TF checkpoint (no {path}{INDEX_SUFFIX})")
        raise CheckpointError(f"checkpoint not found: {path} (no {path}{INDEX_SUFFIX})")
    return path


def reader(prefix: str):
    """A checkpoint reader; unreadable files raise CheckpointError naming the prefix."""
    try:
        return tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        msg = getattr(e, "message", None) or str(e)
        raise CheckpointError(f"cannot read checkpoint {prefix}: {msg.strip().splitlines()[0]}") from None


def variable_shapes(prefix: str) -> "collections.OrderedDict[str, tuple[int, ...]]":
    """{name: shape} stored in a checkpoint (sorted by name, as the index stores them)."""
    shapes = reader(prefix).get_variable_to_shape_map()
    return collections.OrderedDict((k, tuple(shapes[k])) for k in sorted(shapes))


def checkpoint_kind(path: str) -> str:
    """'tf2' for a TF2 object-based checkpoint (ours), 'official' for a TF1 name-based one."""
    prefix = resolve_checkpoint_prefix(path)
    return KIND_TF2 if OBJECT_GRAPH_KEY in reader(prefix).get_variable_to_shape_map() else KIND_OFFICIAL


# -- writing -------------------------------------------------------------------------------------

def _numpy(v) -> np.ndarray:
    if hasattr(v, "numpy"):
        return np.asarray(v.numpy())
    return np.asarray(v)


def _write_state_file(folder: str, prefix_basename: str) -> None:
    atomic_write_text(os.path.join(folder, STATE_FILE),
                      f'model_checkpoint_path: "{prefix_basename}"\n'
                      f'all_model_checkpoint_paths: "{prefix_basename}"\n')


def write_official_checkpoint(variables: Mapping[str, object], prefix: str,
                              global_step: int | None = None) -> str:
    """Write `{official name: variable or array}` as a TF1 name-based checkpoint at `prefix`.

    `global_step` (int64 scalar, as the official train.py creates it) is added when given. Returns
    the prefix. Names must be unique and not contain the TF2 object-graph key.
    """
    if not variables:
        raise CheckpointError("nothing to write: the variable map is empty")
    names = list(variables)
    if OBJECT_GRAPH_KEY in names:
        raise CheckpointError(f"variable name {OBJECT_GRAPH_KEY!r} is reserved")
    tensors = [_numpy(variables[n]) for n in names]
    if global_step is not None:
        if GLOBAL_STEP in variables:
            raise CheckpointError(f"{GLOBAL_STEP!r} given twice (in the map and as global_step=)")
        names.append(GLOBAL_STEP)
        tensors.append(np.asarray(int(global_step), np.int64))

    prefix = os.path.abspath(prefix)
    folder, base = os.path.split(prefix)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create checkpoint folder {folder}: {e.strerror or e}") from e
    tmp = os.path.join(folder, f".{base}.tmp-{os.getpid()}")
    # On failure remove what we wrote, including a data file already renamed into place (without
    # its index it is no checkpoint, and it no longer matches any older index at this prefix).
    tmp_files = [tmp + DATA_SUFFIX, tmp + INDEX_SUFFIX, prefix + DATA_SUFFIX]
    try:
        tf.raw_ops.SaveV2(prefix=tmp, tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=[tf.constant(t) for t in tensors])
        # Data first, index last: the index is what makes a prefix look like a checkpoint.
        os.replace(tmp + DATA_SUFFIX, prefix + DATA_SUFFIX)
        os.replace(tmp + INDEX_SUFFIX, prefix + INDEX_SUFFIX)
    except (OSError, tf.errors.OpError) as e:
        for f in tmp_files:
            with contextlib.suppress(OSError):
                os.remove(f)
        msg = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)
        raise OutputError(f"cannot write checkpoint {prefix}: {msg}") from e
    _write_state_file(folder, base)
    return prefix


# -- whole-model convenience ---------------------------------------------------------------------

UNPUBLISHED_MESSAGE = (
    "architecture {name!r} is not the published Auto-DeepLab cell/path: the official DeepLab code "
    "(nas_network.hnasnet) hard-codes that genotype, so an official-format checkpoint of this network "
    "has names the official graph never creates and cannot be loaded there without editing hnasnet()")


def check_official_compatible(architecture, allow_unpublished: bool = False) -> None:
    """Refuse (or, with `allow_unpublished`, loudly warn) for architectures hnasnet cannot build."""
    if architecture is None or architecture.is_published():
        return
    msg = UNPUBLISHED_MESSAGE.format(name=architecture.name)
    if not allow_unpublished:
        raise CheckpointError(msg + " (pass --allow_unpublished_architecture to write it anyway)")
    log.warning("WARNING: %s. Writing it anyway because --allow_unpublished_architecture is set.", msg)


def export_official_checkpoint(model, prefix: str, architecture=None, global_step: int | None = None,
                               allow_unpublished: bool = False,
                               name_map: Mapping[str, object] | None = None) -> str:
    """Write `model` as an official-format checkpoint at `prefix` (see `write_official_checkpoint`)."""
    check_official_compatible(architecture, allow_unpublished)
    if name_map is None:
        from nas_deeplab.official.names import official_variable_map
        name_map = official_variable_map(model)
    return write_official_checkpoint(name_map, prefix, global_step=global_step)
