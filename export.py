"""Export a trained model: a serving SavedModel, or an official-format (TF1 name-based) checkpoint.

    python export.py --checkpoint_path=runs/train --export_path=out/model --dataset=cityscapes
    python export.py --checkpoint_path=runs/train --export_path=out/tf1 \
        --export_format=official_checkpoint
    python export.py --checkpoint_path=official/model.ckpt-30000 --export_path=out/model \
        --inference_scales=0.75,1.0,1.25 --add_flipped_images

--checkpoint_path takes a training run folder, a TF2 checkpoint prefix of ours, or an official DeepLab
checkpoint (the kind is detected; for an official one the restored / not restored variables are
listed). The architecture, number of classes and head options come from the run's
checkpoint_meta.json (or the official checkpoint's shapes); flags given explicitly must agree.
The SavedModel's `serving_default` signature takes `ImageTensor` uint8 [N, H, W, 3] of any size and
returns `SemanticPredictions` int32 [N, H, W] and `SemanticProbabilities` float32 [N, H, W, C]; its
`predict_labels` signature returns `SemanticPredictions` only (no per-pixel softmax, no float output).
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags

from nas_deeplab.training import flags_common

FLAGS = flags.FLAGS
# Shared with train.py / eval.py: --architecture, --nas_stem_output_num_conv_filters, --atrous_rates,
# --output_stride, --decoder_output_stride, --aspp_with_separable_conv, --decoder_use_separable_conv,
# --dataset. For export only the ones given explicitly count; the rest come from the checkpoint.
flags_common.define_model_flags()
flags_common.define_dataset_flags()

flags.DEFINE_string("checkpoint_path", None, "Training run folder, TF2 checkpoint prefix, or official "
                    "name-based checkpoint (prefix or folder).")
flags.DEFINE_string("export_path", None, "Output folder (must not exist or be empty, see --overwrite).")
flags.DEFINE_enum("export_format", "saved_model", ["saved_model", "official_checkpoint"],
                  "saved_model: serving SavedModel; official_checkpoint: TF1 checkpoint with the "
                  "official DeepLab variable names (published architecture only).")
flags.DEFINE_integer("num_classes", None, "Number of classes when neither --dataset nor the checkpoint "
                     "says.")
flags.DEFINE_multi_string("inference_scales", ["1.0"], "Image scales folded into the SavedModel "
                          "(comma-separated or repeated), probabilities averaged.")
flags.DEFINE_boolean("add_flipped_images", False, "Also run left-right flipped images (SavedModel).")
flags.DEFINE_multi_string("crop_size", None, "Fixed padded size 'height,width' like the official "
                          "exporter (larger images are rejected); default: any size, padded to 32k+1.")
flags.DEFINE_boolean("overwrite", False, "Replace a non-empty --export_path.")
flags.DEFINE_boolean("allow_random_init", False, "Export without --checkpoint_path (random weights; "
                     "for testing the serving path).")
flags.DEFINE_boolean("allow_unpublished_architecture", False, "Write an official-format checkpoint for "
                     "an architecture the official hnasnet code cannot build (names follow the same "
                     "scheme, but the official graph will not match).")

_STRUCTURE_FLAGS = ("atrous_rates", "output_stride", "decoder_output_stride", "aspp_with_separable_conv",
                    "decoder_use_separable_conv")


def config_from_flags(fv=FLAGS):
    """ExportConfig from parsed flags; only explicitly given model/dataset flags are passed on."""
    from nas_deeplab.export.exporter import ExportConfig
    parse = {"atrous_rates": lambda v: list(flags_common.parse_int_list(v, "atrous_rates")),
             "decoder_output_stride": flags_common.parse_decoder_output_stride}
    structure = {}
    for name in _STRUCTURE_FLAGS:
        if fv[name].present:
            structure[name] = parse.get(name, lambda v: v)(fv[name].value)
    return ExportConfig(
        export_path=fv.export_path, checkpoint_path=fv.checkpoint_path, export_format=fv.export_format,
        architecture=fv.architecture, filter_multiplier=fv.nas_stem_output_num_conv_filters,
        dataset=fv.dataset if fv["dataset"].present else None, num_classes=fv.num_classes,
        structure=structure,
        inference_scales=flags_common.parse_float_list(fv.inference_scales, "inference_scales") or (1.0,),
        add_flipped_images=fv.add_flipped_images,
        crop_size=flags_common.parse_size(fv.crop_size, "crop_size", allow_none=True),
        overwrite=fv.overwrite, allow_random_init=fv.allow_random_init,
        allow_unpublished_architecture=fv.allow_unpublished_architecture)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.export_path:
        raise app.UsageError("--export_path is required")
    log = logging.getLogger("nas_deeplab")   # our progress lines; TF's INFO chatter stays hidden
    log.setLevel(logging.INFO)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    try:
        cfg = config_from_flags(FLAGS)
    except flags_common.FlagError as e:
        raise app.UsageError(str(e)) from None
    from nas_deeplab.architecture import ArchitectureError
    from nas_deeplab.export import exporter
    from nas_deeplab.export.official_checkpoint import CheckpointError
    from nas_deeplab.export.saved_model import ExportError as SavedModelExportError
    from nas_deeplab.io_utils import OutputError
    try:
        result = exporter.run_export(cfg)
    except (exporter.ExportError, CheckpointError, SavedModelExportError, ArchitectureError,
            OutputError) as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 2
    print(exporter.describe(result))
    return 0


def run_main():
    app.run(main)


if __name__ == "__main__":
    run_main()
