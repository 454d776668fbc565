"""Resume helper: tf.train.Checkpoint + CheckpointManager with a metadata file that says what the
checkpoint is for.

Model weights are stored as a flat {variable path: variable} map (`model_variables`), not through
the Keras model object: tf.train.Checkpoint only follows attributes it can track, and Keras 3 layers
kept in plain Python lists are invisible to it (their variables, BN moving statistics included,
would silently be left out). Every entry of `model.variables` is in the map, so a restore is complete
or fails.

A training folder holds `ckpt-<step>.{index,data-*}` (and derived copies such as
`ckpt_precise_bn-<step>`, see `write_derived_checkpoint`), TF's `checkpoint` state file and
`checkpoint_meta.json` (format version, architecture, num_classes, structural model options). On
resume the metadata is compared first (a checkpoint of another architecture or an incompatible
version is refused with a message that lists the differences), then the restore must match every
object of the freshly built model *and* optimizer (slots are built before restoring), so a restore is
never silently partial. TF writes a checkpoint under temporary names and updates the state file last,
and `max_to_keep >= 2` keeps the previous good checkpoint, so a crash mid-save loses nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from typing import Any, Mapping

import tensorflow as tf

from nas_deeplab.io_utils import atomic_write_text

META_FILE = "checkpoint_meta.json"
META_FORMAT = "nas_deeplab.train_checkpoint"
META_VERSION = 1
CHECKPOINT_NAME = "ckpt"


class CheckpointMismatchError(RuntimeError):
    """The checkpoint in a folder was written for another model, or by an incompatible version."""


def build_metadata(architecture, num_classes: int, structure: Mapping[str, Any] | None = None,
                   extra: Mapping[str, Any] | None = None) -> dict:
    """What must be equal for a checkpoint to fit: architecture dict, classes, structural options."""
    arch = architecture.to_dict() if hasattr(architecture, "to_dict") else dict(architecture)
    arch.pop("name", None)  # a renamed but identical architecture still fits
    meta = {"format": META_FORMAT, "version": META_VERSION, "architecture": arch,
            "num_classes": int(num_classes), "structure": dict(structure or {})}
    if extra:
        meta["info"] = dict(extra)  # informative only, not compared
    return meta


def read_metadata(directory: str) -> dict | None:
    path = os.path.join(directory, META_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointMismatchError(f"{path} is unreadable ({e}); cannot tell what the checkpoint in "
                                      f"{directory} is for") from None


def compare_metadata(found: Mapping[str, Any], expected: Mapping[str, Any], where: str) -> None:
    """Raise CheckpointMismatchError listing every difference (ignores the informative 'info')."""
    if found.get("format") != META_FORMAT:
        raise CheckpointMismatchError(f"{where}: {META_FILE} has format {found.get('format')!r}, expected "
                                      f"{META_FORMAT!r}")
    if found.get("version") != META_VERSION:
        raise CheckpointMismatchError(
            f"{where}: checkpoint format version {found.get('version')} is not supported by this version "
            f"of nas_deeplab (version {META_VERSION}); train into a new folder")
    diffs = []
    for key in ("num_classes", "architecture", "structure"):
        a, b = found.get(key), expected.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    diffs.append(f"{key}.{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}")
        elif a != b:
            diffs.append(f"{key}: checkpoint {a!r} vs now {b!r}")
    if diffs:
        raise CheckpointMismatchError(
            f"{where} holds a checkpoint for a different model; refusing to resume from it "
            f"(use another --train_logdir, or the same flags as before):\n  " + "\n  ".join(diffs))


MODEL_KEY = "model_variables"


def model_variable_map(model) -> dict:
    """{variable.path: variable} for every variable of `model` (paths must be unique)."""
    out = {}
    for v in model.variables:
        if v.path in out:
            raise ValueError(f"two model variables share the path {v.path!r}; cannot checkpoint by path")
        out[v.path] = v
    return out


class ResumableCheckpoint:
    """Save/restore {model, optimizer, step, extra trackables} in `directory` (`model` is stored
    as its variable map, see the module docstring).

    Non-chief workers (multi-worker training) must still call `save` (it may run collectives) but
    write into a private temporary folder that is deleted afterwards.
    """

    def __init__(self, directory: str, metadata: Mapping[str, Any], *, max_to_keep: int = 2,
                 is_chief: bool = True, worker_id: int = 0, **trackables):
        if max_to_keep < 2:
            raise ValueError("max_to_keep must be >= 2 so the previous good checkpoint survives")
        self.directory = directory
        self.metadata = dict(metadata)
        self.is_chief = is_chief
        if "model" in trackables:
            trackables[MODEL_KEY] = model_variable_map(trackables.pop("model"))
        self.checkpoint = tf.train.Checkpoint(**trackables)
        write_dir = directory if is_chief else os.path.join(directory, f".worker{worker_id}_tmp")
        self._write_dir = write_dir
        self.manager = tf.train.CheckpointManager(self.checkpoint, write_dir, max_to_keep=max_to_keep,
                                                  checkpoint_name=CHECKPOINT_NAME)

    @property
    def latest(self) -> str | None:
        return tf.train.latest_checkpoint(self.directory)

    def restore_latest(self) -> str | None:
        """Restore the newest checkpoint in the folder, if any; returns its path (None: fresh start).

        Call after the model and the optimizer slots are built (`optimizer.build`)."""
        path = self.latest
        found = read_metadata(self.directory)
        if path is None:
            return None
        if found is None:
            raise CheckpointMismatchError(
                f"{self.directory} has a checkpoint ({os.path.basename(path)}) but no {META_FILE}: it was "
                "not written by nas_deeplab training; use another --train_logdir")
        compare_metadata(found, self.metadata, self.directory)
        status = self.checkpoint.restore(path)
        try:
            status.assert_consumed()
        except AssertionError as e:
            raise CheckpointMismatchError(
                f"{path} does not match the model being trained (partial restore refused): "
                f"{str(e).splitlines()[0][:500]}") from None
        return path

    def save(self, step: int) -> str | None:
        """Write checkpoint `step` (chief: into the folder, with metadata; others: to a temp folder)."""
        path = self.manager.save(checkpoint_number=int(step))
        if self.is_chief:
            meta_path = os.path.join(self.directory, META_FILE)
            if read_metadata(self.directory) != self.metadata:
                atomic_write_text(meta_path, json.dumps(self.metadata, indent=2, sort_keys=True) + "\n")
            return path
        shutil.rmtree(self._write_dir, ignore_errors=True)
        return None


def restore_model_weights(model, path: str, exclude_paths=()) -> str:
    """Initialise `model` from a TF2 checkpoint of ours (a prefix or a run folder): model weights
    only, no optimizer/step. Every model variable must be found (shape mismatches raise), except
    the variables whose paths are in `exclude_paths`: those are not read at all (fine-tuning's
    --initialize_last_layer=false)."""
    prefix = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
    if not prefix:
        raise CheckpointMismatchError(f"no checkpoint found in {path}")
    if not any(k.startswith(MODEL_KEY + "/") for k in tf.train.load_checkpoint(prefix).get_variable_to_shape_map()):
        raise CheckpointMismatchError(f"{prefix} has no '{MODEL_KEY}': it was not written by nas_deeplab "
                                      "training (an official-format checkpoint is loaded by name instead)")
    exclude_paths = set(exclude_paths)
    variables = {p: v for p, v in model_variable_map(model).items() if p not in exclude_paths}
    ckpt = tf.train.Checkpoint(**{MODEL_KEY: variables})
    try:
        status = ckpt.restore(prefix)
        status.expect_partial()  # the optimizer and step in the file are not wanted here
        status.assert_existing_objects_matched()  # every model variable was found
    except AssertionError as e:
        raise CheckpointMismatchError(
            f"{prefix} does not fit this model: {str(e).splitlines()[0][:500]}") from None
    except (ValueError, tf.errors.OpError) as e:
        raise CheckpointMismatchError(f"cannot restore {prefix} into this model: "
                                      f"{str(e).splitlines()[0][:500]}") from None
    return prefix


# -- derived checkpoints (same weights, optimizer and step; some variables replaced) ---------------
INFO_TENSOR = "_NAS_DEEPLAB_CHECKPOINT_INFO"   # JSON string; outside the object graph, ignored on restore
_OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
_STEP_TENSOR = "step/.ATTRIBUTES/VARIABLE_VALUE"


def read_checkpoint_info(prefix: str) -> dict | None:
    """The info a derived checkpoint carries (e.g. {"precise_bn": {...}}), None for a plain one."""
    reader = tf.train.load_checkpoint(prefix)
    if not reader.has_tensor(INFO_TENSOR):
        return None
    raw = reader.get_tensor(INFO_TENSOR)
    return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))


def checkpoint_step(prefix: str) -> int:
    """The number a checkpoint's name ends with (-<n>), else its stored global step, else 0."""
    m = re.search(r"-(\d+)$", prefix)
    if m:
        return int(m.group(1))
    reader = tf.train.load_checkpoint(prefix)
    return int(reader.get_tensor(_STEP_TENSOR)) if reader.has_tensor(_STEP_TENSOR) else 0


def write_derived_checkpoint(source_prefix: str, name: str, model, changed, info: Mapping[str, Any]) -> str:
    """Write `<folder>/<name>-<step>`: a copy of checkpoint `source_prefix` (every tensor, so model,
    optimizer slots and step restore as from the source and training resumes from it) in which the
    `changed` variables of `model` take their current values, plus `info` (`read_checkpoint_info`).

    Written under a temporary name and renamed; then TF's `checkpoint` state file lists it (atomic
    rewrite), as the newest checkpoint when the source was the newest (an older source keeps the
    newest as it is). Returns the new prefix; an existing one of that name is replaced."""
    source_prefix = os.path.abspath(source_prefix)
    directory = os.path.dirname(source_prefix)
    reader = tf.train.load_checkpoint(source_prefix)
    dtypes = reader.get_variable_to_dtype_map()
    new_prefix = os.path.join(directory, f"{name}-{checkpoint_step(source_prefix)}")
    wanted = {id(v) for v in changed}
    subset = {p: v for p, v in model_variable_map(model).items() if id(v) in wanted}
    if len(subset) != len(wanted):
        raise ValueError("write_derived_checkpoint: `changed` holds variables that are not the model's")
    tensors = {k: reader.get_tensor(k) for k in dtypes if k != INFO_TENSOR}
    with tempfile.TemporaryDirectory(dir=directory, prefix=".derived_") as tmp:
        # The same {path: variable} map under the same key as training's: the same tensor names.
        values = tf.train.load_checkpoint(tf.train.Checkpoint(**{MODEL_KEY: subset}).write(
            os.path.join(tmp, "values")))
        for key in values.get_variable_to_shape_map():
            if not key.startswith(MODEL_KEY + "/"):   # its object graph, a save counter
                continue
            if key not in tensors:
                raise CheckpointMismatchError(f"{source_prefix} has no {key}: it does not hold this model")
            tensors[key] = values.get_tensor(key)
        names = sorted(tensors)
        data = [tf.constant(tensors[k], dtype=dtypes[k]) for k in names]
        names.append(INFO_TENSOR)
        data.append(tf.constant(json.dumps(dict(info), sort_keys=True)))
        tmp_prefix = os.path.join(tmp, "out")
        tf.raw_ops.SaveV2(prefix=tmp_prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=data)
        for f in sorted(os.listdir(tmp), key=lambda f: f.endswith(".index")):   # the index last
            if f.startswith("out."):
                os.replace(os.path.join(tmp, f), new_prefix + f[len("out"):])
    _list_in_state_file(directory, source_prefix, new_prefix)
    return new_prefix


def _list_in_state_file(directory: str, source_prefix: str, new_prefix: str) -> None:
    state = tf.train.get_checkpoint_state(directory)
    base = os.path.basename
    paths = [base(p) for p in state.all_model_checkpoint_paths] if state else []
    stamps = list(state.all_model_checkpoint_timestamps) if state else []
    stamps = stamps if len(stamps) == len(paths) else [time.time()] * len(paths)
    latest = base(state.model_checkpoint_path) if state and state.model_checkpoint_path else None
    entries = [(p, t) for p, t in zip(paths, stamps) if p != base(new_prefix)]
    now = (base(new_prefix), time.time())
    if latest in (None, base(source_prefix), base(new_prefix)):
        entries.append(now)
        latest = base(new_prefix)
    else:
        after = next((i + 1 for i, (p, _) in enumerate(entries) if p == base(source_prefix)), len(entries))
        entries.insert(after, now)
    # What CheckpointManager itself calls (the public tf.compat.v1 wrapper logs a deprecation notice).
    from tensorflow.python.checkpoint import checkpoint_management
    checkpoint_management.update_checkpoint_state_internal(
        directory, latest, all_model_checkpoint_paths=[p for p, _ in entries],
        all_model_checkpoint_timestamps=[t for _, t in entries],
        last_preserved_timestamp=state.last_preserved_timestamp if state else None,
        save_relative_paths=True)
