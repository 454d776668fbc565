"""`export.py` as a library: decide what model a checkpoint holds, build it, restore it, write it out.

What the model is comes, in order of authority, from: the training metadata next to a TF2 checkpoint
(`checkpoint_meta.json`: architecture, num_classes, head structure), the names and shapes stored in
an official-format checkpoint (filter multiplier, cells, classes, separable or regular ASPP and
decoder, decoder stride, atrous branches, image pooling: `official/infer.py`), and the flags. A flag
that contradicts the metadata or the checkpoint is an error that names both values: exporting a
model different from the one trained would only fail later, or silently serve garbage. The restore
must then be complete (`official/restore.py`): an export never carries randomly initialised weights
unless asked to with --allow_random_init.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Sequence

from nas_deeplab import architecture as arch_lib
from nas_deeplab.export import saved_model as sm
from nas_deeplab.official import checkpoint as oc
from nas_deeplab.official import infer
from nas_deeplab.official import restore as restore_lib
from nas_deeplab.io_utils import OutputError, check_writable_dir, atomic_directory

log = logging.getLogger(__name__)

# saved_model: serving; official_checkpoint: research/deeplab; keras: a .keras file (Keras 3 users);
# features: a backbone SavedModel (end points out); tflite: one .tflite file for devices.
FORMATS = ("saved_model", "official_checkpoint", "keras", "features", "tflite")
# --precision: the type the SavedModel computes in (its inputs and outputs keep their dtypes).
PRECISIONS = ("float32", "bfloat16", "float16")
# Default calibration set sizes (--representative_examples): int8 ranges need many images; the
# per-tap input means of --weight_rounding are averages and settle within a few (the README's
# figures used 8).
TFLITE_CALIBRATION_EXAMPLES = 100
ROUNDING_CALIBRATION_EXAMPLES = 8
PRECISION_FORMATS = ("saved_model", "features")   # the formats --precision / --fold_batch_norm apply to
SINGLE_FILE_FORMATS = ("keras", "tflite")   # --export_path is the file itself
OFFICIAL_PREFIX_NAME = "model.ckpt"
STRUCTURE_KEYS = ("atrous_rates", "output_stride", "decoder_output_stride", "aspp_with_separable_conv",
                  "decoder_use_separable_conv")
RUN_METADATA_FILE = "checkpoint_meta.json"   # written by nas_deeplab.training.checkpointing
# ModelOptions fields an official checkpoint fixes (official/infer.py), besides num_classes.
INFERRED_OPTIONS = ("aspp_with_separable_conv", "decoder_use_separable_conv", "decoder_output_stride",
                    "add_image_level_feature", "aspp_convs_filters", "decoder_filters")


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
    precise_bn_batches: int = 0                   # >0: precise BN first (training/precise_bn.py)
    precise_bn_batch_size: int | None = None   # None: the run's training batch size
    dataset_dir: str | None = None                # int8 TFLite calibration data (default: the run's)
    tflite_quantization: str = "none"             # none | float16 | int8 (export/tflite.py)
    representative_split: str | None = None       # int8: the split its calibration images come from
    representative_examples: int | None = None    # None: 100 for int8 TFLite, 8 for --weight_rounding
    tflite_allow_select_tf_ops: bool = False
    precision: str = "float32"                    # float32 | bfloat16 | float16 (SavedModels)
    fold_batch_norm: bool | None = None           # None: fold for 16-bit precisions only
    weight_rounding: str = "nearest"              # nearest | mean_preserving (16-bit; export/rounding.py)


@dataclasses.dataclass
class ExportResult:
    path: str
    export_format: str
    architecture: arch_lib.Architecture
    num_classes: int
    restore: restore_lib.RestoreInfo | None
    model: Any = None             # the Keras model that was exported (restored; 16-bit / folded copy)
    architecture_source: str | None = None   # the flag or file the architecture was taken from
    format_result: Any = None     # tflite: the TFLiteResult (size, quantization, ops left in float)
    precision: str = "float32"    # the type the exported SavedModel computes in
    batch_norm_folded: int = 0    # BNs folded into the conv before them (0: not folded)
    weight_rounding: str = "nearest"   # how the 16-bit weights were rounded (export/rounding.py)


# -- deciding what the model is --------------------------------------------------------------------

def _arch_diffs(a: arch_lib.Architecture, b: arch_lib.Architecture) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} vs {db[k]!r}" for k in ("operations", "hiddenstate_indices", "backbone",
                                                     "filter_multiplier") if da[k] != db[k]]


RUN_FOLDER_KEY = "_run_folder"   # added to the metadata read by find_run_metadata: where it was


def _run_architecture_file(meta: dict, arch: arch_lib.Architecture):
    """(name, path) of the run's architecture.json (train.py writes it; the metadata drops the name)
    when it describes `arch`, else (None, the metadata file)."""
    folder = meta.get(RUN_FOLDER_KEY, "")
    path = os.path.join(folder, "architecture.json")
    try:
        named = arch_lib.Architecture.load(path)
    except arch_lib.ArchitectureError:
        return None, os.path.join(folder, RUN_METADATA_FILE)
    if _arch_diffs(named, arch):
        return None, os.path.join(folder, RUN_METADATA_FILE)
    return named.name, path


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
            data[RUN_FOLDER_KEY] = folder
            return data
    return None


def _official_heads(cfg: ExportConfig, facts: infer.CheckpointFacts, arch, prefix: str) -> dict[str, Any]:
    """The head options of an official checkpoint, from its names and shapes; explicit flags must
    agree (a contradiction is refused naming both), the rest are taken from the checkpoint."""
    if facts.num_classes is None or not facts.has_heads:
        raise ExportError(f"{prefix} has no {'ASPP (aspp0/weights)' if not facts.has_heads else infer.LOGITS}: "
                          "a backbone-only checkpoint is no model to export; fine-tune it first with "
                          f"train.py --tf_initial_checkpoint={prefix} --initialize_last_layer=false")
    try:
        implied = infer.implied_options(facts, arch, cfg.structure.get("decoder_output_stride"))
    except oc.CheckpointError as e:
        raise ExportError(f"{prefix}: {e}") from None
    asked = {k: v for k, v in cfg.structure.items() if k in INFERRED_OPTIONS}
    if "atrous_rates" in cfg.structure:
        asked["num_atrous_rates"] = len(cfg.structure["atrous_rates"] or ())
    for c in infer.conflicts(implied, asked):
        flag = infer.FLAG[c.key]
        given = ((",".join(str(r) for r in cfg.structure["atrous_rates"]) or "none")
                 if c.key == "num_atrous_rates" else infer.flag_value(c.key, c.asked).split("=", 1)[1])
        raise ExportError(f"--{flag}={given} contradicts checkpoint {prefix}: it has "
                          f"{infer.describe(c.key, c.implied.value)} ({c.implied.evidence}); leave --{flag} "
                          "unset to use the checkpoint's")
    structure = {k: imp.value for k, imp in implied.items() if k in INFERRED_OPTIONS}
    n_rates = implied["num_atrous_rates"].value
    if "atrous_rates" not in cfg.structure:
        if n_rates == 0:
            structure["atrous_rates"] = []
        elif n_rates != infer.DEFAULT_NUM_ATROUS_RATES:
            raise ExportError(f"{prefix} has {n_rates} atrous ASPP branches (aspp1..aspp{n_rates}), and a "
                              f"checkpoint does not store the rates: pass --atrous_rates with {n_rates} values")
    structure.update(cfg.structure)
    return structure


def _step_from_prefix(prefix: str) -> int | None:
    m = re.search(r"-(\d+)$", prefix)
    return int(m.group(1)) if m else None


def resolve_model(cfg: ExportConfig, prefix: str | None, kind: str | None):
    """(Architecture, num_classes, structure dict, dataset descriptor or None, where the architecture
    came from) for this export."""
    meta = find_run_metadata(prefix) if prefix and kind == oc.KIND_TF2 else None
    facts = infer.read_facts(oc.variable_shapes(prefix), prefix) if prefix and kind == oc.KIND_OFFICIAL else None
    where = prefix or "--allow_random_init"

    # architecture
    arch, arch_source = None, None
    if cfg.architecture:
        arch_source = f"--architecture={cfg.architecture}"
        try:
            arch = arch_lib.resolve(cfg.architecture, cfg.filter_multiplier)
        except arch_lib.ArchitectureError as e:
            raise ExportError(f"--architecture: {e}") from None
    if meta and meta.get("architecture"):
        try:
            meta_arch = arch_lib.Architecture.from_dict(meta["architecture"], source=RUN_METADATA_FILE)
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
        if arch is None:
            name, source = _run_architecture_file(meta, meta_arch)
            arch = dataclasses.replace(meta_arch, name=name) if name else meta_arch
            arch_source = source
    if arch is None:
        f = cfg.filter_multiplier
        if kind == oc.KIND_OFFICIAL:
            # The published path starts at level 0, so cell 0's filters are F itself.
            f = f or facts.cell_0_filters or 20   # 20: the official flag default
            arch = arch_lib.published(f, name="published")
            arch_source = "the official checkpoint (its only architecture)"
        elif kind is None and cfg.allow_random_init:
            from nas_deeplab.training.model_config import ModelConfig
            arch = ModelConfig(filter_multiplier=f).resolve_architecture()  # train.py's default
            arch_source = "train.py's default (random weights)"
        else:
            raise ExportError(f"cannot tell the architecture of {where}: no {RUN_METADATA_FILE} "
                              "next to it; pass --architecture (preset or architecture.json)")
    if facts is not None:
        problems = infer.backbone_problems(facts, arch)
        if problems:
            raise ExportError(f"{where} is an official checkpoint of another backbone than the requested "
                              f"architecture: " + "; ".join(problems))

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
                  (RUN_METADATA_FILE, (meta or {}).get("num_classes")),
                  (f"{infer.LOGITS} in the checkpoint", facts.num_classes if facts else None)]
    given = [(src, int(n)) for src, n in candidates if n is not None]
    if not given:
        raise ExportError(f"cannot tell the number of classes of {where}: pass --dataset (or --num_classes)")
    if len({n for _, n in given}) > 1:
        raise ExportError("the number of classes disagrees: " + ", ".join(f"{s} says {n}" for s, n in given))
    num_classes = given[0][1]

    # head structure: metadata or the official checkpoint's names, explicit flags only if they agree
    if facts is not None:
        return arch, num_classes, _official_heads(cfg, facts, arch, prefix), descriptor, arch_source
    structure = {}
    if meta and isinstance(meta.get("structure"), dict):
        structure.update({k: v for k, v in meta["structure"].items() if k in STRUCTURE_KEYS})
    for k, v in cfg.structure.items():
        if k in structure and _norm(structure[k]) != _norm(v):
            raise ExportError(f"--{k}={v!r} contradicts the checkpoint's training metadata "
                              f"({k}={structure[k]!r}); leave it unset to use the checkpoint's")
        structure[k] = v
    return arch, num_classes, structure, descriptor, arch_source


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def build_model(arch, num_classes: int, structure: dict[str, Any]):
    """The inference model (no strategy scope, no step variable: drop path is off at inference)."""
    from nas_deeplab.model.deeplab import ModelOptions, build_deeplab
    kw = dict(structure)
    if "atrous_rates" in kw:
        kw["atrous_rates"] = tuple(kw["atrous_rates"] or ())
    try:
        model = build_deeplab(arch, ModelOptions(num_classes=num_classes, **kw))
    except (TypeError, ValueError) as e:
        raise ExportError(f"invalid model options: {e}") from None
    return model, model.options   # the options with the path-derived defaults filled in


def folds_batch_norm(cfg: ExportConfig) -> bool:
    """--fold_batch_norm, default (None): fold for a 16-bit SavedModel, where TF's remapper does not
    fuse conv + BN itself; a float32 one already runs them as one fused oneDNN kernel."""
    if cfg.fold_batch_norm is None:
        return cfg.export_format in PRECISION_FORMATS and cfg.precision != "float32"
    return bool(cfg.fold_batch_norm)


def serving_model(model, arch, num_classes: int, structure: dict[str, Any], precision: str = "float32",
                  fold: bool = False, weight_rounding: str = "nearest", calibration_images=None):
    """(model to export, number of BNs folded) for a restored float32 `model`.

    float32: `model` itself, its BNs folded in place when `fold`. 16-bit: a copy built under the Keras
    dtype policy of that type, the float32 weights cast into it: with `fold`, the pure policy
    (weights stored in 16 bits; the kernels are folded in float64 from the float32 values and rounded
    once), without it the mixed one (float32 weights, cast at each call), so the BN statistics are
    not rounded to 16 bits. The logits layer computes in float32 under either (heads.Logits).
    `weight_rounding="mean_preserving"` (16-bit only) rounds the kernels and folded biases so that no
    output channel's mean shifts (export/rounding.py), calibrated on `calibration_images` (float32
    [1, H, W, 3] batches of raw 0..255 pixels)."""
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from nas_deeplab.export import bn_folding, rounding  # noqa: PLC0415
    from nas_deeplab.training import precision as precision_lib  # noqa: PLC0415
    if precision not in PRECISIONS:
        raise ExportError(f"--precision={precision!r}: choose one of {list(PRECISIONS)}")
    _check_weight_rounding(weight_rounding, precision)
    if weight_rounding != "nearest" and not calibration_images:
        raise ExportError(f"--weight_rounding={weight_rounding} needs calibration images "
                          "(--representative_split, --representative_examples)")
    values = bn_folding.folded_values(model) if fold else None
    if precision == "float32":
        return model, (bn_folding.apply(model, values) if fold else 0)
    with precision_lib.keras_policy(precision if fold else f"mixed_{precision}"):
        target, _ = build_model(arch, num_classes, structure)
    source = {v.path: v for v in model.variables}
    if len(source) != len(model.variables) or set(source) != {v.path for v in target.variables}:
        raise ExportError(f"--precision={precision}: the {precision} model's variables differ from the "
                          "restored model's")
    for v in target.variables:
        v.assign(tf.cast(source[v.path], v.dtype))
    n = bn_folding.apply(target, values) if fold else 0
    if weight_rounding == "mean_preserving":
        means = rounding.input_means(model, calibration_images)
        by_path = {v.path: v for v in target.variables}
        skip = rounding.float32_conv_layers(target)
        for path, value in rounding.mean_preserving_values(model, means, precision, values, skip).items():
            by_path[path].assign(tf.cast(value, by_path[path].dtype))   # exact: representable
    for v in target.variables:
        if v.dtype in ("float16", "bfloat16") and not np.isfinite(np.asarray(v.numpy(), np.float32)).all():
            raise ExportError(f"--precision={precision}: {v.path} has values outside the {precision} "
                              "range" + (" after folding BN (try --nofold_batch_norm)" if fold else ""))
    _check_kernels(target, precision)
    return target, n


def _check_kernels(model, precision: str) -> None:
    """Run the model once on a small image: a TF build without the kernels for `precision` on this
    machine fails here, naming the flag, not when a client first calls the SavedModel."""
    import tensorflow as tf  # noqa: PLC0415
    try:
        # Unknown H, W as in the SavedModel's signatures (at static shapes TF 2.21's remapper fails on
        # some folded 16-bit graphs, "Mutation::Apply error", and then leaves them unfused).
        run = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        out = run(tf.fill([1, 33, 33, 3], 127.5))
        ok = bool(tf.reduce_all(tf.math.is_finite(out)))
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
        first = (e.message or str(e)).strip().splitlines()[0]
        raise ExportError(f"--precision={precision}: this TensorFlow cannot run the {precision} model on "
                          f"this machine ({first[:200]}); use --precision=float32 or bfloat16") from None
    if not ok:
        raise ExportError(f"--precision={precision}: the {precision} model computes non-finite logits "
                          "on a uniform grey image; use --precision=float32 or bfloat16")


# -- the export ------------------------------------------------------------------------------------

def _check_export_path(path: str, overwrite: bool, export_format: str = "saved_model") -> None:
    if not path:
        raise ExportError("--export_path is required")
    if export_format in SINGLE_FILE_FORMATS:
        if os.path.isdir(path):
            raise OutputError(f"--export_path {path} is a folder; --export_format={export_format} writes one "
                              f"file (e.g. model.{export_format})")
        if os.path.exists(path) and not overwrite:
            raise OutputError(f"--export_path {path} exists (pass --overwrite to replace it)")
    elif os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)) and not overwrite:
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
    _check_export_path(cfg.export_path, cfg.overwrite, cfg.export_format)
    _check_format_flags(cfg)
    if not cfg.checkpoint_path and not cfg.allow_random_init:
        raise ExportError("no --checkpoint_path given: refusing to export a randomly initialised model "
                          "(pass --allow_random_init to do so on purpose, e.g. to test serving)")
    prefix = kind = None
    if cfg.checkpoint_path:
        prefix = oc.resolve_checkpoint_prefix(cfg.checkpoint_path)
        kind = oc.checkpoint_kind(prefix)
    arch, num_classes, structure, descriptor, arch_source = resolve_model(cfg, prefix, kind)
    if cfg.export_format == "official_checkpoint":
        oc.check_official_compatible(arch, cfg.allow_unpublished_architecture)
    if cfg.precise_bn_batches:
        prefix = _precise_bn(cfg, prefix, kind)
    model, options = build_model(arch, num_classes, structure)

    info = None
    if prefix:
        info = restore_lib.restore_weights(model, prefix, refuse_unused=True)   # complete or an error
    else:
        log.warning("WARNING: exporting a randomly initialised model (--allow_random_init)")

    source = {"checkpoint": prefix, "checkpoint_kind": kind,
              "restored": len(info.restored) if info else 0,
              "not_restored": list(info.excluded) if info else None,
              "precise_bn": _precise_bn_info(prefix, kind)}
    extra = None
    folded = 0
    if cfg.export_format in PRECISION_FORMATS:
        calibration = None
        if cfg.weight_rounding != "nearest":
            calibration = _calibration_images(cfg, prefix, descriptor)
        model, folded = serving_model(model, arch, num_classes, structure, cfg.precision,
                                      folds_batch_norm(cfg), cfg.weight_rounding, calibration)
    if cfg.export_format == "keras":
        from nas_deeplab.export.keras_format import save_keras
        path = save_keras(model, cfg.export_path, overwrite=cfg.overwrite)
    elif cfg.export_format == "features":
        from nas_deeplab.export.features_model import export_features_model
        path = export_features_model(model, cfg.export_path, overwrite=cfg.overwrite,
                                     metadata={"source.json": source,
                                               "dataset.json": _dataset_asset(descriptor, num_classes)},
                                     precision=cfg.precision, batch_norm_folded=folded,
                                     weight_rounding=cfg.weight_rounding)
    elif cfg.export_format == "tflite":
        from nas_deeplab.export import tflite
        representative = None
        if cfg.tflite_quantization == "int8":
            rep_descriptor, rep_dir = _calibration_data(cfg, prefix, descriptor)
            representative = tflite.representative_images_from_split(
                rep_dir, cfg.representative_split, rep_descriptor, cfg.crop_size,
                cfg.representative_examples or TFLITE_CALIBRATION_EXAMPLES)
        extra = tflite.export_tflite(model, cfg.export_path, cfg.crop_size, cfg.tflite_quantization,
                                     representative, num_classes, cfg.inference_scales,
                                     cfg.add_flipped_images, cfg.tflite_allow_select_tf_ops, cfg.overwrite)
        path = extra.path
    elif cfg.export_format == "saved_model":
        metadata = {
            "architecture.json": arch.to_json(),
            "dataset.json": _dataset_asset(descriptor, num_classes),
            "model_options.json": {k: (list(v) if isinstance(v, tuple) else v)
                                   for k, v in dataclasses.asdict(options).items()},
            "source.json": source,
        }
        path = sm.export_saved_model(model, cfg.export_path, num_classes=num_classes, metadata=metadata,
                                     inference_scales=cfg.inference_scales,
                                     add_flipped_images=cfg.add_flipped_images, crop_size=cfg.crop_size,
                                     overwrite=cfg.overwrite, precision=cfg.precision,
                                     batch_norm_folded=folded, weight_rounding=cfg.weight_rounding)
    else:
        from nas_deeplab.official.names import official_variable_map
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
    return ExportResult(path, cfg.export_format, arch, num_classes, info, model, arch_source, extra,
                        cfg.precision if cfg.export_format in PRECISION_FORMATS else "float32", folded,
                        cfg.weight_rounding)


_PRECISION_HINTS = {"official_checkpoint": "checkpoints stay float32",
                    "keras": "a .keras file keeps the float32 weights; load it under a Keras dtype "
                             "policy such as mixed_bfloat16 instead",
                    "tflite": "use --tflite_quantization=float16|int8 instead"}


def _check_format_flags(cfg: ExportConfig) -> None:
    """The format's own flags, checked before anything is built (one line naming the flag)."""
    if cfg.precision not in PRECISIONS:
        raise ExportError(f"--precision={cfg.precision!r}: choose one of {list(PRECISIONS)}")
    if cfg.export_format not in PRECISION_FORMATS:
        if cfg.precision != "float32":
            raise ExportError(f"--precision={cfg.precision} applies to --export_format=saved_model|features "
                              f"only (got --export_format={cfg.export_format}: "
                              f"{_PRECISION_HINTS[cfg.export_format]})")
        if cfg.fold_batch_norm:
            raise ExportError("--fold_batch_norm applies to --export_format=saved_model|features only (got "
                              f"--export_format={cfg.export_format})")
        if cfg.weight_rounding != "nearest":
            raise ExportError(f"--weight_rounding={cfg.weight_rounding} applies to --export_format="
                              f"saved_model|features only (got --export_format={cfg.export_format})")
    else:
        _check_weight_rounding(cfg.weight_rounding, cfg.precision)
    if cfg.export_format == "keras":
        from nas_deeplab.export.keras_format import check_keras_path
        check_keras_path(cfg.export_path)
    if cfg.export_format != "tflite":
        if cfg.tflite_quantization != "none":
            raise ExportError("--tflite_quantization applies to --export_format=tflite "
                              f"only (got --export_format={cfg.export_format})")
        if cfg.representative_split and cfg.weight_rounding == "nearest":
            raise ExportError("--representative_split applies to --export_format=tflite (int8) and to "
                              f"--weight_rounding=mean_preserving only (got --export_format={cfg.export_format})")
        if cfg.representative_examples is not None and cfg.representative_examples < 1:
            raise ExportError(f"--representative_examples must be >= 1, got {cfg.representative_examples}")
        return
    from nas_deeplab.export import tflite
    tflite.check_crop_size(cfg.crop_size)
    tflite.check_quantization(cfg.tflite_quantization)
    if cfg.tflite_quantization == "int8" and not cfg.representative_split:
        raise ExportError("--tflite_quantization=int8 needs --representative_split (e.g. train): the "
                          "converter calibrates the integer ranges on those images")
    if cfg.representative_examples is not None and cfg.representative_examples < 1:
        raise ExportError(f"--representative_examples must be >= 1, got {cfg.representative_examples}")


def _check_weight_rounding(weight_rounding: str, precision: str) -> None:
    """--weight_rounding is known and has 16-bit weights to round (one line naming the flag)."""
    from nas_deeplab.export.rounding import ROUNDINGS
    if weight_rounding not in ROUNDINGS:
        raise ExportError(f"--weight_rounding={weight_rounding!r}: choose one of {list(ROUNDINGS)}")
    if weight_rounding != "nearest" and precision == "float32":
        raise ExportError(f"--weight_rounding={weight_rounding} applies to 16-bit --precision only "
                          "(float32 weights are not rounded)")


def _calibration_data(cfg: ExportConfig, prefix: str | None, descriptor):
    """(descriptor, dataset_dir) of the int8 calibration images: --dataset/--dataset_dir, else the run's."""
    from nas_deeplab.data.synthetic import resolve_dataset
    from nas_deeplab.training.evaluator import run_dataset
    dataset, dataset_dir = cfg.dataset, cfg.dataset_dir
    if dataset is None and prefix:
        dataset, run_dir = run_dataset(os.path.dirname(prefix))
        dataset_dir = dataset_dir or run_dir
    calib_descriptor, calib_dir = resolve_dataset(dataset, dataset_dir)
    if cfg.representative_split not in calib_descriptor.splits_to_sizes:
        raise ExportError(f"--representative_split={cfg.representative_split}: {calib_descriptor.name} has the "
                          f"splits {sorted(calib_descriptor.splits_to_sizes)}")
    return calib_descriptor, calib_dir


def _calibration_images(cfg: ExportConfig, prefix: str | None, descriptor) -> list:
    """--weight_rounding calibration: the first --representative_examples (default 8) images of
    --representative_split (default train), preprocessed as for evaluation (full size, padded to 32k+1
    as the serving graph pads), float32 [1, H, W, 3]."""
    from nas_deeplab.data.pipeline import make_dataset
    if not cfg.representative_split:
        cfg = dataclasses.replace(cfg, representative_split="train")
    calib_descriptor, calib_dir = _calibration_data(cfg, prefix, descriptor)
    ds = make_dataset(calib_dir, cfg.representative_split, calib_descriptor, batch_size=1,
                      is_training=False, eval_pad_stride=sm.SIZE_MULTIPLE)
    count = cfg.representative_examples or ROUNDING_CALIBRATION_EXAMPLES
    images = [e["image"] for e, _ in zip(ds, range(count))]
    if not images:
        raise ExportError(f"--representative_split={cfg.representative_split}: no records in {calib_dir}")
    log.info("weight rounding (%s) calibrated on %d images of %s/%s", cfg.weight_rounding, len(images),
             calib_descriptor.name, cfg.representative_split)
    return images


def _precise_bn(cfg: ExportConfig, prefix, kind) -> str:
    """--precise_bn_batches: recompute the BN statistics of the run's checkpoint, store them as a new
    checkpoint in the run folder (training/precise_bn.py) and export that one."""
    if cfg.precise_bn_batches < 0 or (cfg.precise_bn_batch_size is not None and cfg.precise_bn_batch_size < 2):
        raise ExportError("--precise_bn_batches must be >= 0 and --precise_bn_batch_size >= 2")
    if kind != oc.KIND_TF2:
        raise ExportError("--precise_bn_batches needs a training run of ours as --checkpoint_path (an "
                          "official checkpoint has no training data set recorded to recompute BN on)")
    import sys
    from nas_deeplab.training import flags_common
    from nas_deeplab.training.precise_bn import store_precise_checkpoint
    try:
        return store_precise_checkpoint(prefix, cfg.precise_bn_batches, cfg.precise_bn_batch_size,
                                        stream=sys.stderr)
    except Exception as e:  # noqa: BLE001  user errors become one line naming the flag
        msg = flags_common.user_error_message(e)
        if msg is None:
            raise
        raise ExportError(f"--precise_bn_batches: {msg}") from None


def _precise_bn_info(prefix, kind):
    """What a precise-BN checkpoint records about its statistics (None for any other checkpoint)."""
    if kind != oc.KIND_TF2:
        return None
    from nas_deeplab.training.precise_bn import read_info
    return read_info(prefix)


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
    if not options.add_image_level_feature:
        lines.append("--add_image_level_feature=false")
    lines.append(f"# num_classes={options.num_classes} (dataset descriptor of the official data_generator)")
    return "\n".join(lines) + "\n"


def describe(result: ExportResult) -> str:
    out = [f"wrote {result.export_format} to {result.path}",
           f"  architecture {result.architecture.name} (F={result.architecture.filter_multiplier}, path "
           f"{list(result.architecture.backbone)}) from {result.architecture_source}, "
           f"{result.num_classes} classes"]
    if result.restore is not None:
        out.append("  " + result.restore.summary().replace("\n", "\n  "))
    if result.export_format in PRECISION_FORMATS:
        out.append(f"  computes in {result.precision}" + (
            f", {result.batch_norm_folded} batch norms folded into the convs before them"
            if result.batch_norm_folded else "") + (
            f", weights rounded {result.weight_rounding.replace('_', '-')}"
            if result.precision != "float32" else ""))
    if result.export_format == "saved_model":
        out.append(f"  serve: signature '{sm.SIGNATURE_KEY}', input {sm.INPUT_NAME} uint8 [N,H,W,3]; "
                   f"outputs {sm.PREDICTIONS}, {sm.PROBABILITIES}; signature '{sm.LABELS_SIGNATURE_KEY}': "
                   f"{sm.PREDICTIONS} only")
    elif result.export_format == "keras":
        out.append("  load: import nas_deeplab; keras.saving.load_model(path) (raw 0..255 float "
                   "images [N,H,W,3] in, logits at the input size out)")
    elif result.export_format == "features":
        out.append("  signature 'features': images uint8 [N,H,W,3] -> Stem, Cell_i, features, P2..P5 "
                   "(assets/features_info.json: strides and channels)")
    elif result.export_format == "tflite" and result.format_result is not None:
        out.append("  " + result.format_result.describe().replace("\n", "\n  "))
    return "\n".join(out)
