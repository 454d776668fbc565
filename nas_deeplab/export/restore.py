"""Initialise a model from whatever checkpoint the user points at: ours (TF2) or official (TF1).

`export.py --checkpoint_path` (and `train.py --tf_initial_checkpoint`) accept a training run folder, a
TF2 checkpoint prefix of ours, or an official-format name-based checkpoint. The kind is read from the
checkpoint itself (TF2 checkpoints carry their object graph), so the user never has to say which.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Callable, Mapping

from nas_deeplab.export import official_checkpoint as oc

log = logging.getLogger(__name__)

RUN_METADATA_FILE = "checkpoint_meta.json"   # written by nas_deeplab.training.checkpointing


@dataclasses.dataclass
class RestoreInfo:
    """Where the weights came from and how completely they were restored."""

    prefix: str
    kind: str                 # oc.KIND_TF2 or oc.KIND_OFFICIAL
    restored: list[str]
    missing: list[str]
    unused: list[str]

    @property
    def complete(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        if self.kind == oc.KIND_TF2:
            return f"restored all {len(self.restored)} model variables from {self.prefix} (TF2 checkpoint)"
        head = (f"official-format checkpoint {self.prefix}: restored {len(self.restored)} of "
                f"{len(self.restored) + len(self.missing)} variables")
        lines = [head]
        if self.missing:
            lines.append(f"  NOT restored ({len(self.missing)}, left at their initial values): "
                         + ", ".join(self.missing[:10]) + (" ..." if len(self.missing) > 10 else ""))
        if self.unused:
            lines.append(f"  checkpoint entries not used ({len(self.unused)}): "
                         + ", ".join(self.unused[:10]) + (" ..." if len(self.unused) > 10 else ""))
        return "\n".join(lines)


def find_run_metadata(checkpoint_path: str) -> dict | None:
    """The training metadata (architecture, num_classes, model structure) next to a checkpoint."""
    path = os.path.expanduser(checkpoint_path)
    folders = [path] if os.path.isdir(path) else [os.path.dirname(os.path.abspath(path))]
    folders.append(os.path.dirname(os.path.abspath(folders[0].rstrip(os.sep))))  # run/checkpoints/
    for folder in folders:
        meta = os.path.join(folder, RUN_METADATA_FILE)
        if os.path.isfile(meta):
            try:
                with open(meta, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise oc.CheckpointError(f"{meta} is unreadable ({e})") from None
            if not isinstance(data, dict):
                raise oc.CheckpointError(f"{meta}: expected a JSON object")
            return data
    return None


def _restore_tf2(model, prefix: str) -> list[str]:
    """Model weights from a training checkpoint (train.py's format: a flat variable map, so the
    restore is complete or fails); the optimizer and step in it are ignored."""
    from nas_deeplab.training import checkpointing
    try:
        checkpointing.restore_model_weights(model, prefix)
    except checkpointing.CheckpointMismatchError as e:
        raise oc.CheckpointError(str(e)) from None
    return [v.path for v in model.variables]


def restore_weights(model, checkpoint_path: str,
                    name_map_fn: Callable[[object], Mapping[str, object]] | None = None,
                    require_all: bool = False) -> RestoreInfo:
    """Load a TF2 (ours) or official-format checkpoint into `model`; raises CheckpointError if it
    is missing, unreadable or does not fit (names or shapes)."""
    prefix = oc.resolve_checkpoint_prefix(checkpoint_path)
    kind = oc.checkpoint_kind(prefix)
    if kind == oc.KIND_TF2:
        return RestoreInfo(prefix, kind, _restore_tf2(model, prefix), [], [])
    if name_map_fn is None:
        from nas_deeplab.model.official_names import official_variable_map as name_map_fn
    report = oc.restore_official(name_map_fn(model), prefix, require_all=require_all)
    return RestoreInfo(prefix, kind, report.restored, report.missing, report.unused)
