"""Initialise a model from a checkpoint, completely or not at all: ours (TF2) or official (TF1).

`train.py --tf_initial_checkpoint` and `export.py --checkpoint_path` both come here; the kind is read
from the checkpoint itself (TF2 checkpoints carry their object graph). The rule is stricter than
official DeepLab's (its train.py restores with ignore_missing_vars=True and only logs what it
skipped): every model variable is restored except those the caller leaves out on purpose, the
official `--initialize_last_layer=false` scopes (`names.last_layer_scopes`). A variable the
checkpoint lacks, or holds with another shape or dtype, is an error naming it, and nothing is
assigned. An official checkpoint is first compared with what its names and shapes imply
(`infer.py`), so that a mismatch names the flag that fixes it. Export also refuses checkpoint entries
that the model leaves unused (a different model was saved there), other than `global_step` and
optimizer slots (`<variable>/Momentum`, `<variable>/ExponentialMovingAverage`, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import tensorflow as tf

from nas_deeplab.official import infer
from nas_deeplab.official.checkpoint import (GLOBAL_STEP, KIND_OFFICIAL, KIND_TF2, OBJECT_GRAPH_KEY,
                                             CheckpointError, checkpoint_kind, reader,
                                             resolve_checkpoint_prefix)
from nas_deeplab.official.names import BACKBONE_SCOPE, HEAD_SCOPES, in_scopes

FINE_TUNE_HINT = ("to fine-tune with new last layers, pass --initialize_last_layer=false (official "
                  "DeepLab's flag; add --last_layers_contain_logits_only to keep the ASPP and decoder)")


def _shown(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", ... (+{len(names) - n})" if len(names) > n else "")


@dataclasses.dataclass
class RestoreReport:
    """What `restore_official` did: names restored, model names excluded on purpose (not assigned),
    and checkpoint entries the model does not use (global_step, optimizer slots, other heads)."""

    restored: list[str]
    excluded: list[str]
    unused: list[str]


def _is_model_entry(name: str, variables: Mapping[str, object]) -> bool:
    """A checkpoint entry that looks like a model variable (not global_step, not a slot of one)."""
    if name == GLOBAL_STEP or ("/" in name and name.rsplit("/", 1)[0] in variables):
        return False
    return name.startswith(BACKBONE_SCOPE + "/") or in_scopes(name, HEAD_SCOPES)


def restore_official(variables: Mapping[str, object], path: str, exclude_scopes: Sequence[str] = (),
                     refuse_unused: bool = False) -> RestoreReport:
    """Assign checkpoint values to `{official name: variable}`, all of them except the names under
    `exclude_scopes`; every name, shape and dtype is checked before anything is assigned.

    `refuse_unused`: also refuse checkpoint entries that look like model variables but are not
    in `variables` (outside the excluded scopes), i.e. a checkpoint of a bigger or other model."""
    prefix = resolve_checkpoint_prefix(path)
    rd = reader(prefix)
    shapes, dtypes = rd.get_variable_to_shape_map(), rd.get_variable_to_dtype_map()
    if OBJECT_GRAPH_KEY in shapes:
        raise CheckpointError(f"{prefix} is a TF2 object-based checkpoint (written by train.py), not an "
                              "official name-based one; load it with tf.train.Checkpoint(model=...)")
    excluded = [n for n in variables if in_scopes(n, exclude_scopes)]
    wanted = [n for n in variables if not in_scopes(n, exclude_scopes)]
    missing = [n for n in wanted if n not in shapes]
    if missing and len(missing) == len(wanted):
        raise CheckpointError(f"checkpoint {prefix} holds none of the model's variables (the model expects "
                              f"e.g. {_shown(wanted, 3)}; the checkpoint has {_shown(sorted(shapes), 3)})")
    if missing:
        only_heads = all(in_scopes(n, HEAD_SCOPES) for n in missing)
        raise CheckpointError(
            f"checkpoint {prefix} lacks {len(missing)} of the {len(wanted)} variables to restore: "
            f"{_shown(missing)}; a partial restore is refused"
            + (f" ({FINE_TUNE_HINT})" if only_heads else " (another architecture or filter multiplier?)"))
    errors = []
    for name in wanted:
        var = variables[name]
        want = tuple(int(d) for d in var.shape)
        got = tuple(int(d) for d in shapes[name])
        want_dtype, got_dtype = tf.as_dtype(var.dtype), tf.as_dtype(dtypes[name])
        if want != got:
            errors.append(f"{name}: checkpoint has shape {list(got)}, model expects {list(want)}")
        elif got_dtype != want_dtype and not (got_dtype.is_floating and want_dtype.is_floating):
            errors.append(f"{name}: checkpoint dtype {got_dtype.name}, model expects {want_dtype.name}")
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise CheckpointError(f"checkpoint {prefix} does not fit the model (architecture, filter multiplier "
                              f"or model options differ?): " + "; ".join(errors[:5]) + more)
    restored = set(wanted)
    unused = sorted(k for k in shapes if k not in restored)
    stray = [k for k in unused if _is_model_entry(k, variables) and not in_scopes(k, exclude_scopes)]
    if refuse_unused and stray:
        raise CheckpointError(f"checkpoint {prefix} holds {len(stray)} model variables this model does not "
                              f"have: {_shown(stray)}; it was saved from a different model")
    for name in wanted:
        var = variables[name]
        value = rd.get_tensor(name)
        if value.dtype != tf.as_dtype(var.dtype).as_numpy_dtype:
            value = value.astype(tf.as_dtype(var.dtype).as_numpy_dtype)
        var.assign(value)
    return RestoreReport(wanted, excluded, unused)


# -- a whole model from either kind of checkpoint ----------------------------------------------------

@dataclasses.dataclass
class RestoreInfo:
    """Where the weights came from and what was left out on purpose."""

    prefix: str
    kind: str                 # KIND_TF2 or KIND_OFFICIAL
    restored: list[str]       # official names (official kind) or variable paths (TF2)
    excluded: list[str]       # official names left at their initial values (--initialize_last_layer=false)
    unused: list[str]         # official kind: checkpoint entries not used

    def summary(self) -> str:
        total = len(self.restored) + len(self.excluded)
        what = "TF2 checkpoint" if self.kind == KIND_TF2 else "official-format checkpoint"
        if not self.excluded:
            head = f"restored all {total} model variables from {what} {self.prefix}"
        else:
            head = (f"restored {len(self.restored)} of {total} model variables from {what} {self.prefix}; "
                    f"{len(self.excluded)} left at their initial values by --initialize_last_layer=false: "
                    + _shown(self.excluded))
        if self.unused:
            head += f"\n  checkpoint entries not used ({len(self.unused)}): {_shown(self.unused, 10)}"
        return head


def _restore_tf2(model, prefix: str, exclude_scopes: Sequence[str]) -> tuple[list[str], list[str]]:
    """(restored paths, excluded official names) from a training checkpoint of ours (a flat
    variable map, so the restore is complete or fails, and a failure assigns nothing); its optimizer
    and step are ignored."""
    from nas_deeplab.training import checkpointing
    excluded, exclude_paths = [], set()
    if exclude_scopes:
        from nas_deeplab.official.names import official_variable_map
        for name, var in official_variable_map(model).items():
            if in_scopes(name, exclude_scopes):
                excluded.append(name)
                exclude_paths.add(var.path)
    before = [v.numpy() for v in model.variables]   # TF restores variable by variable: undo a failure
    try:
        checkpointing.restore_model_weights(model, prefix, exclude_paths=exclude_paths)
    except checkpointing.CheckpointMismatchError as e:
        for var, value in zip(model.variables, before):
            var.assign(value)
        hint = "" if exclude_scopes or f"has no '{checkpointing.MODEL_KEY}'" in str(e) else f" ({FINE_TUNE_HINT})"
        raise CheckpointError(str(e) + hint) from None
    return [v.path for v in model.variables if v.path not in exclude_paths], excluded


def _fit_problem(c: infer.Conflict) -> str:
    fix = infer.flag_value(c.key, c.implied.value)
    if c.key == "num_classes":
        fix = FINE_TUNE_HINT
    else:
        fix = (f"pass {fix}" if fix else "no flag builds that") + " (or --initialize_last_layer=false)"
    return (f"it has {infer.describe(c.key, c.implied.value)} ({c.implied.evidence}), the model "
            f"{infer.describe(c.key, c.asked)}: {fix}")


def check_fits(model, prefix: str, exclude_scopes: Sequence[str] = ()) -> None:
    """Refuse an official checkpoint whose names/shapes contradict the model's architecture or
    options (outside `exclude_scopes`), naming the flag that fixes each difference."""
    arch, options = getattr(model, "arch", None), getattr(model, "options", None)
    if arch is None or options is None:
        return   # not a DeepLab model (e.g. a backbone alone): the restore checks names and shapes
    shapes = reader(prefix).get_variable_to_shape_map()
    facts = infer.read_facts(shapes, prefix)
    problems = infer.backbone_problems(facts, arch)
    if not problems:
        implied = infer.implied_options(facts, arch, options.decoder_output_stride, exclude_scopes)
        problems = [_fit_problem(c) for c in infer.conflicts(implied, infer.asked_by_options(options))]
    if problems:
        raise CheckpointError(f"checkpoint {prefix} does not fit the model: " + "; ".join(problems))


def restore_weights(model, checkpoint_path: str, exclude_scopes: Sequence[str] = (),
                    refuse_unused: bool = False,
                    name_map_fn: Callable[[object], Mapping[str, object]] | None = None) -> RestoreInfo:
    """Load a TF2 (ours) or official-format checkpoint into `model`, every variable except those
    under `exclude_scopes` (official names); raises CheckpointError if the checkpoint is missing,
    unreadable or does not fit (see the module docstring)."""
    prefix = resolve_checkpoint_prefix(checkpoint_path)
    kind = checkpoint_kind(prefix)
    if kind == KIND_TF2:
        restored, excluded = _restore_tf2(model, prefix, exclude_scopes)
        return RestoreInfo(prefix, kind, restored, excluded, [])
    if name_map_fn is None:
        from nas_deeplab.official.names import official_variable_map as name_map_fn
    name_map = name_map_fn(model)
    named = {id(v) for v in name_map.values()}
    nameless = [v.path for v in model.variables if id(v) not in named]
    if nameless:
        raise CheckpointError(f"{len(nameless)} model variables have no official name ({_shown(nameless)}), "
                              "so an official checkpoint cannot restore them")
    check_fits(model, prefix, exclude_scopes)
    report = restore_official(name_map, prefix, exclude_scopes, refuse_unused=refuse_unused)
    return RestoreInfo(prefix, KIND_OFFICIAL, report.restored, report.excluded, report.unused)
