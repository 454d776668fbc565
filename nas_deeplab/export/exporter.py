"""`export.py` as a library: decide what model a checkpoint holds, build it, restore it, write it out.

What the model is comes, in order of authority, from: the training metadata next to a TF2 checkpoint
(`checkpoint_meta.json`: architecture, num_classes, head structure), the shapes stored in an
official-format checkpoint (filter multiplier, number of classes), and the flags. A flag that
contradicts the metadata or the checkpoint is an error that names both values: exporting a model
different from the one trained would only fail later, or silently serve garbage.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Sequence

from nas_deeplab import architecture as arch_lib
from nas_deeplab.export import official_checkpoint as oc
from nas_deeplab.export import restore as restore_lib
from nas_deeplab.export import saved_model as sm
from nas_deeplab.io_utils import OutputError, check_writable_dir, atomic_directory

log = logging.getLogger(__name__)

FORMATS = ("saved_model", "official_checkpoint")
OFFICIAL_PREFIX_NAME = "model.ckpt"
STRUCTURE_KEYS = ("atrous_rates", "output_stride", "decoder_output_stride", "aspp_with_separable_conv",
                  "decoder_use_separable_conv")


class ExportError(ValueError):
    """An export request that cannot be carried out; the message names the flag or file."""


@dataclasses.dataclass
class ExportConfig:
    """Parsed export flags. `None` means "not given": take it from the checkpoint / its metadata."""

    export_path: str
    checkpoint_path: str | None = None
    export_format: str = "saved_model"
    architecture: str | None = None
    filter_multiplier: int | None = None          # --nas_stem_output_num_conv_filters
    dataset: str | None = None
    num_classes: int | None = None
    structure: dict[str, Any] = dataclasses.field(default_factory=dict)  # explicit head flags only
    inference_scales: Sequence[float] = (1.0,)
    add_flipped_images: bool = False
    crop_size: Sequence[int] | None = None
    overwrite: bool = False
    allow_random_init: bool = False
    allow_unpublished_architecture: bool = False


@dataclasses.dataclass
class ExportResult:
    path: str
    export_format: str
    architecture: arch_lib.Architecture
    num_classes: int
    restore: restore_lib.RestoreInfo | None
    model: Any = None             # the restored Keras model that was exported


# -- deciding what the model is --------------------------------------------------------------------

def _arch_diffs(a: arch_lib.Architecture, b: arch_lib.Architecture) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} vs {db[k]!r}" for k in ("operations", "hiddenstate_indices", "backbone",
                                                     "filter_multiplier") if da[k] != db[k]]


def _official_facts(prefix: str) -> dict[str, int]:
    """Filter multiplier and number of classes read off an official checkpoint's shapes."""
    shapes = oc.variable_shapes(prefix)
    facts = {}
    if "hnasnet/cell_0/1x1/weights" in shapes:
        facts["filter_multiplier"] = int(shapes["hnasnet/cell_0/1x1/weights"][-1])
    if "logits/semantic/weights" in shapes:
        facts["num_classes"] = int(shapes["logits/semantic/weights"][-1])
    return facts


def _step_from_prefix(prefix: str) -> int | None:
    m = re.search(r"-(\d+)$", prefix)
    return int(m.group(1)) if m else None


def resolve_model(cfg: ExportConfig, prefix: str | None, kind: str | None):
    """(Architecture, num_classes, structure dict, dataset descriptor or None) for this export."""
    meta = restore_lib.find_run_metadata(prefix) if prefix and kind == oc.KIND_TF2 else None
    facts = _official_facts(prefix) if prefix and kind == oc.KIND_OFFICIAL else {}
    where = prefix or "--allow_random_init"

    # architecture
    arch = None
    if cfg.architecture:
        try:
            arch = arch_lib.resolve(cfg.architecture, cfg.filter_multiplier)
        except arch_lib.ArchitectureError as e:
            raise ExportError(f"--architecture: {e}") from None
    if meta and meta.get("architecture"):
        try:
            meta_arch = arch_lib.Architecture.from_dict(meta["architecture"], source=restore_lib.RUN_METADATA_FILE)
        except arch_lib.ArchitectureError as e:
            raise ExportError(str(e)) from None
        if arch is None and cfg.filter_multiplier:
            arch = meta_arch.with_filter_multiplier(cfg.filter_multiplier)
        if arch is not None:
            diffs = _arch_diffs(arch, meta_arch)
            if diffs:
                raise ExportError(f"the flags ask for another architecture than the checkpoint {where} was "
                                  f"trained with (flags vs checkpoint):\n  " + "\n  ".join(diffs)
                                  + "\nleave --architecture/--nas_stem_output_num_conv_filters unset to "
                                    "use the checkpoint's")
        arch = arch or meta_arch
    if arch is None:
        f = cfg.filter_multiplier or facts.get("filter_multiplier")
        if kind == oc.KIND_OFFICIAL:
            arch = arch_lib.published(f or 20, name="published")   # 20: the official flag default
        elif kind is None and cfg.allow_random_init:
            from nas_deeplab.training.model_config import ModelConfig
            arch = ModelConfig(filter_multiplier=f).resolve_architecture()  # train.py's default
        else:
            raise ExportError(f"cannot tell the architecture of {where}: no {restore_lib.RUN_METADATA_FILE} "
                              "next to it; pass --architecture (preset or architecture.json)")
    if facts.get("filter_multiplier") and facts["filter_multiplier"] != arch.filter_multiplier:
        raise ExportError(f"{where} is an official checkpoint with filter multiplier "
                          f"{facts['filter_multiplier']} (hnasnet/cell_0/1x1/weights), but the requested "
                          f"architecture has {arch.filter_multiplier} "
                          "(--nas_stem_output_num_conv_filters / --architecture)")

    # dataset and classes
    descriptor = None
    if cfg.dataset:
        from nas_deeplab.data.descriptors import get_descriptor
        try:
            descriptor = get_descriptor(cfg.dataset)
        except ValueError as e:
            raise ExportError(f"--dataset: {e}") from None
    candidates = [("--num_classes", cfg.num_classes),
                  ("--dataset", descriptor.num_classes if descriptor else None),
                  (restore_lib.RUN_METADATA_FILE, (meta or {}).get("num_classes")),
                  ("logits/semantic/weights in the checkpoint", facts.get("num_classes"))]
    given = [(src, int(n)) for src, n in candidates if n is not None]
    if not given:
        raise ExportError(f"cannot tell the number of classes of {where}: pass --dataset (or --num_classes)")
    if len({n for _, n in given}) > 1:
        raise ExportError("the number of classes disagrees: " + ", ".join(f"{s} says {n}" for s, n in given))
    num_classes = given[0][1]

    # head structure: metadata, overridden by explicit flags only if they agree
    structure = {}
    if meta and isinstance(meta.get("structure"), dict):
        structure.update({k: v for k, v in meta["structure"].items() if k in STRUCTURE_KEYS})
    for k, v in cfg.structure.items():
        if k in structure and _norm(structure[k]) != _norm(v):
            raise ExportError(f"--{k}={v!r} contradicts the checkpoint's training metadata "
                              f"({k}={structure[k]!r}); leave it unset to use the checkpoint's")
        structure[k] = v
    return arch, num_classes, structure, descriptor


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def build_model(arch, num_classes: int, structure: dict[str, Any]):
    """The inference model (no strategy scope, no step variable: drop path is off at inference)."""
    from nas_deeplab.model.deeplab import ModelOptions, build_deeplab
    kw = dict(structure)
    if "atrous_rates" in kw:
        kw["atrous_rates"] = tuple(kw["atrous_rates"] or ())
    try:
        options = ModelOptions(num_classes=num_classes, **kw)
    except (TypeError, ValueError) as e:
        raise ExportError(f"invalid model options: {e}") from None
    return build_deeplab(arch, options), options


# -- the export ------------------------------------------------------------------------------------

def _check_export_path(path: str, overwrite: bool) -> None:
    if not path:
        raise ExportError("--export_path is required")
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)) and not overwrite:
        raise OutputError(f"--export_path {path} exists and is not empty (pass --overwrite to replace it)")
    # Fail before building anything if the folder that will receive the export is not writable.
    check_writable_dir(os.path.dirname(os.path.abspath(path)), "the folder of --export_path")


def _dataset_asset(descriptor, num_classes: int) -> dict:
    if descriptor is not None:
        return descriptor.to_json_dict()
    from nas_deeplab.data.descriptors import generated_palette
    return {"name": None, "num_classes": num_classes,
            "class_names": [f"class_{i}" for i in range(num_classes)],
            "palette": generated_palette(num_classes).tolist()}


def run_export(cfg: ExportConfig) -> ExportResult:
    if cfg.export_format not in FORMATS:
        raise ExportError(f"--export_format={cfg.export_format!r}: choose one of {list(FORMATS)}")
    _check_export_path(cfg.export_path, cfg.overwrite)
    if not cfg.checkpoint_path and not cfg.allow_random_init:
        raise ExportError("no --checkpoint_path given: refusing to export a randomly initialised model "
                          "(pass --allow_random_init to do so on purpose, e.g. to test serving)")
    prefix = kind = None
    if cfg.checkpoint_path:
        prefix = oc.resolve_checkpoint_prefix(cfg.checkpoint_path)
        kind = oc.checkpoint_kind(prefix)
    arch, num_classes, structure, descriptor = resolve_model(cfg, prefix, kind)
    if cfg.export_format == "official_checkpoint":
        oc.check_official_compatible(arch, cfg.allow_unpublished_architecture)
    model, options = build_model(arch, num_classes, structure)

    info = None
    if prefix:
        info = restore_lib.restore_weights(model, prefix)
        log.info("%s", info.summary())
        if info.missing:
            log.warning("WARNING: %d model variables were not in %s and keep their random initial values",
                        len(info.missing), prefix)
    else:
        log.warning("WARNING: exporting a randomly initialised model (--allow_random_init)")

    if cfg.export_format == "saved_model":
        metadata = {
            "architecture.json": arch.to_json(),
            "dataset.json": _dataset_asset(descriptor, num_classes),
            "model_options.json": {k: (list(v) if isinstance(v, tuple) else v)
                                   for k, v in dataclasses.asdict(options).items()},
            "source.json": {"checkpoint": prefix, "checkpoint_kind": kind,
                            "restored": len(info.restored) if info else 0,
                            "not_restored": list(info.missing) if info else None},
        }
        path = sm.export_saved_model(model, cfg.export_path, num_classes=num_classes, metadata=metadata,
                                     inference_scales=cfg.inference_scales,
                                     add_flipped_images=cfg.add_flipped_images, crop_size=cfg.crop_size,
                                     overwrite=cfg.overwrite)
    else:
        from nas_deeplab.model.official_names import official_variable_map
        step = None
        if kind == oc.KIND_TF2:
            step = _step_from_prefix(prefix)
        elif kind == oc.KIND_OFFICIAL and oc.GLOBAL_STEP in oc.variable_shapes(prefix):
            import tensorflow as tf
            step = int(tf.train.load_checkpoint(prefix).get_tensor(oc.GLOBAL_STEP))
        step = 0 if step is None else step
        name = f"{OFFICIAL_PREFIX_NAME}-{step}"
        with atomic_directory(cfg.export_path, overwrite=cfg.overwrite) as tmp:
            oc.write_official_checkpoint(official_variable_map(model), os.path.join(tmp, name),
                                         global_step=step)
            with open(os.path.join(tmp, "architecture.json"), "w", encoding="utf-8") as f:
                f.write(arch.to_json())
            with open(os.path.join(tmp, "official_flags.txt"), "w", encoding="utf-8") as f:
                f.write(official_flags(arch, options))
        path = os.path.abspath(cfg.export_path)
    return ExportResult(path, cfg.export_format, arch, num_classes, info, model)


def official_flags(arch, options) -> str:
    """The official DeepLab flags that build the graph this checkpoint fits."""
    lines = ["--model_variant=nas_hnasnet",
             f"--nas_stem_output_num_conv_filters={arch.filter_multiplier}",
             f"--output_stride={options.output_stride}"]
    lines += [f"--atrous_rates={r}" for r in options.atrous_rates]
    if options.decoder_output_stride is not None:
        lines.append(f"--decoder_output_stride={options.decoder_output_stride}")
    lines.append(f"--aspp_with_separable_conv={str(options.aspp_with_separable_conv).lower()}")
    lines.append(f"--decoder_use_separable_conv={str(options.decoder_use_separable_conv).lower()}")
    lines.append(f"# num_classes={options.num_classes} (dataset descriptor of the official data_generator)")
    return "\n".join(lines) + "\n"


def describe(result: ExportResult) -> str:
    out = [f"wrote {result.export_format} to {result.path}",
           f"  architecture {result.architecture.name} (F={result.architecture.filter_multiplier}), "
           f"{result.num_classes} classes"]
    if result.restore is not None:
        out.append("  " + result.restore.summary().replace("\n", "\n  "))
    if result.export_format == "saved_model":
        out.append(f"  serve: signature '{sm.SIGNATURE_KEY}', input {sm.INPUT_NAME} uint8 [N,H,W,3]; "
                   f"outputs {sm.PREDICTIONS}, {sm.PROBABILITIES}; signature '{sm.LABELS_SIGNATURE_KEY}': "
                   f"{sm.PREDICTIONS} only")
    return "\n".join(out)
