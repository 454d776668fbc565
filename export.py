r"""Export a trained model: a serving SavedModel, or an official-format (TF1 name-based) checkpoint.

    python export.py --checkpoint_path=runs/train --export_path=out/model --dataset=cityscapes
    python export.py --checkpoint_path=runs/train --export_path=out/tf1 \
        --export_format=official_checkpoint
    python export.py --checkpoint_path=official/model.ckpt-30000 --export_path=out/model \
        --inference_scales=0.75,1.0,1.25 --add_flipped_images

--checkpoint_path takes a training run folder, a TF2 checkpoint prefix of ours, or an official DeepLab
checkpoint (the kind is detected). The architecture, number of classes and head options come from
the run's checkpoint_meta.json, or from an official checkpoint's variable names and shapes (filter
multiplier, classes, separable or regular ASPP/decoder convs, decoder stride, atrous branches);
flags given explicitly must agree. Every model variable must be restored, or nothing is exported.
The SavedModel's `serving_default` signature takes `ImageTensor` uint8 [N, H, W, 3] of any size and
returns `SemanticPredictions` int32 [N, H, W] and `SemanticProbabilities` float32 [N, H, W, C]; its
`predict_labels` signature returns `SemanticPredictions` only (no per-pixel softmax, no float output).
`--precision=bfloat16|float16` makes it compute in 16 bits (same signatures; batch norms folded into
the convs unless --nofold_batch_norm).
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
flags.DEFINE_string("export_path", None, "Output folder (must not exist or be empty, see --overwrite); "
                    "for --export_format=keras|tflite the file (model.keras, model.tflite).")
flags.DEFINE_enum("export_format", "saved_model", ["saved_model", "official_checkpoint", "keras", "features",
                                                   "tflite"],
                  "saved_model: serving SavedModel; official_checkpoint: TF1 checkpoint with the "
                  "official DeepLab variable names (published architecture only); keras: a .keras file "
                  "(keras.saving.load_model after `import nas_deeplab`); features: a backbone "
                  "SavedModel (signature 'features': uint8 images -> end points and P2..P5); tflite: one "
                  ".tflite (uint8 image in, labels out) at a fixed --crop_size.")
flags.DEFINE_enum("tflite_quantization", "none", ["none", "float16", "int8"],
                  "TFLite weights: float32 (none), float16, or full-integer int8 calibrated on "
                  "--representative_split.")
flags.DEFINE_string("representative_split", None, "int8 TFLite and --weight_rounding=mean_preserving: "
                    "the split of the run's data set (or --dataset/--dataset_dir) whose images "
                    "calibrate, e.g. train.")
flags.DEFINE_integer("representative_examples", None, "Calibration images drawn from "
                     "--representative_split (default: 100 for int8 TFLite, 8 for --weight_rounding).")
flags.DEFINE_boolean("tflite_allow_select_tf_ops", False, "TFLite: allow TF select ops for ops the "
                     "TFLite runtime lacks (the app then needs the Flex delegate); they are listed.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16", "float16"],
                  "SavedModel (--export_format=saved_model|features): the type the network computes in; "
                  "inputs and outputs keep their dtypes (uint8 in, int32 labels, float32 probabilities). "
                  "16-bit: weights stored in 16 bits (with --fold_batch_norm) and about half the size; "
                  "bfloat16 pays off on CPUs with AVX512-BF16 or AMX-BF16 and on recent GPUs/TPUs; "
                  "float16 on GPUs (on a CPU it runs, slower than float32, and overflows where "
                  "activations pass 65504: recompute BN statistics first, --precise_bn_batches). "
                  "Other formats have their own (--tflite_quantization).")
flags.DEFINE_boolean("fold_batch_norm", None, "SavedModel: fold every inference batch norm into the conv "
                     "before it (scaled kernel + bias) and remove it from the graph. Default: on for "
                     "16-bit --precision (TF does not fuse 16-bit conv + BN itself), off for float32 "
                     "(TF's remapper already runs conv + BN as one fused kernel).")
flags.DEFINE_enum("weight_rounding", "nearest", ["nearest", "mean_preserving"],
                  "16-bit --precision: how the weights are rounded. nearest: each to its nearest 16-bit "
                  "value. mean_preserving: per output channel, some weights go to their other neighbour "
                  "so that the channel's mean output does not shift (input means from a calibration "
                  "pass over --representative_examples images of --representative_split, default "
                  "train); kept narrow (F=4) models' labels closer to float32, while at F=20 "
                  "nearest was as close (README, Precision).")
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
flags.DEFINE_integer("precise_bn_batches", 0, "Precise BN before exporting (a training run of ours): "
                     "recompute every BN's statistics on this many batches of the run's training split, "
                     "preprocessed as for evaluation (full size), store them as a new checkpoint "
                     "ckpt_precise_bn-<step> in the run folder and export that (0: off).")
flags_common.define_precise_bn_batch_size_flag()
flags.DEFINE_boolean("allow_unpublished_architecture", False, "Write an official-format checkpoint for "
                     "an architecture the official hnasnet code cannot build (names follow the same "
                     "scheme, but the official graph will not match).")

_STRUCTURE_FLAGS = ("atrous_rates", "output_stride", "decoder_output_stride", "aspp_with_separable_conv",
                    "decoder_use_separable_conv")


def config_from_flags(fv=FLAGS):
    """ExportConfig from parsed flags; only explicitly given model/dataset flags are passed on."""
    from nas_deeplab.export.exporter import ExportConfig
    parse = {"atrous_rates": lambda v: list(flags_common.parse_atrous_rates(v)),
             "decoder_output_stride": flags_common.parse_decoder_output_stride}
    structure = {}
    for name in _STRUCTURE_FLAGS:
        if fv[name].present:
            value = parse.get(name, lambda v: v)(fv[name].value)
            if value != "auto":      # 'auto' asks for the default: the checkpoint's, or the path's
                structure[name] = value
    return ExportConfig(
        export_path=fv.export_path, checkpoint_path=fv.checkpoint_path, export_format=fv.export_format,
        architecture=fv.architecture, filter_multiplier=fv.nas_stem_output_num_conv_filters,
        dataset=fv.dataset if fv["dataset"].present else None, num_classes=fv.num_classes,
        dataset_dir=fv.dataset_dir, tflite_quantization=fv.tflite_quantization,
        representative_split=fv.representative_split, representative_examples=fv.representative_examples,
        tflite_allow_select_tf_ops=fv.tflite_allow_select_tf_ops,
        structure=structure,
        inference_scales=flags_common.parse_float_list(fv.inference_scales, "inference_scales") or (1.0,),
        add_flipped_images=fv.add_flipped_images,
        crop_size=flags_common.parse_size(fv.crop_size, "crop_size", allow_none=True),
        overwrite=fv.overwrite, allow_random_init=fv.allow_random_init,
        allow_unpublished_architecture=fv.allow_unpublished_architecture,
        precise_bn_batches=fv.precise_bn_batches, precise_bn_batch_size=fv.precise_bn_batch_size,
        precision=fv.precision, fold_batch_norm=fv.fold_batch_norm, weight_rounding=fv.weight_rounding)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.export_path:
        print("export.py: error: --export_path is required", file=sys.stderr)
        return 2
    from nas_deeplab.cli_startup import import_tensorflow
    import_tensorflow()   # TF's start-up chatter filtered before anything else loads it
    log = logging.getLogger("nas_deeplab")   # our progress lines; TF's INFO chatter stays hidden
    log.setLevel(logging.INFO)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    from nas_deeplab.export import exporter
    try:
        cfg = config_from_flags(FLAGS)
        result = exporter.run_export(cfg)
    except Exception as e:  # noqa: BLE001  flags, checkpoint, data, output: one line, exit 2
        return flags_common.report_user_error(e, "export.py")
    print(exporter.describe(result))
    return 0


def run_main():
    app.run(main, flags_parser=flags_common.parse_flags_or_exit)


if __name__ == "__main__":
    run_main()
