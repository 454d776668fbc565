r"""Evaluate a trained model over a whole split at full resolution (official DeepLab `eval.py` flags).

    python eval.py --checkpoint_path=runs/train_auto_deeplab_demo_f8_synthetic
    python eval.py --checkpoint_path=runs/s --dataset=cityscapes --dataset_dir=/data/cityscapes \
        --eval_scales=0.75,1.0,1.25 --add_flipped_images --vis
    python eval.py --checkpoint_path=runs/s --eval_interval_secs=300 --max_number_of_evaluations=10

Writes results.json (mIoU, per-class IoU, pixel accuracy, confusion matrix) atomically into
--output_dir (default <checkpoint folder>/eval); --vis adds coloured prediction PNGs. Without
--architecture, the architecture and head options recorded with the checkpoint are used; without
--dataset, the data set (and folder) the run was trained on. --precise_bn_batches=N first replaces
the BN moving statistics by precise-BN ones (N batches of training images at full size) and stores
them as a new checkpoint in the run folder, which later evaluations pick as the newest.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from nas_deeplab.training import flags_common

FLAGS = flags.FLAGS

def define_flags(f=FLAGS) -> None:
    """Define eval.py's flags on `f` (once); tests pass their own flags.FlagValues."""
    if "eval_scales" in f:
        return
    flags_common.define_model_flags(f)
    flags_common.define_dataset_flags(f)
    flags_common.define_thread_flags(f)
    flags_common.define_precision_flag(f)
    flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix or a training folder (newest checkpoint).",
                        flag_values=f)
    flags.DEFINE_string("eval_split", None, "Split to evaluate (default: the data set's eval split).",
                        flag_values=f)
    flags.DEFINE_multi_string("eval_scales", ["1.0"], "Scales for multi-scale evaluation (comma list or "
                              "repeated flag); softmax probabilities are averaged.", flag_values=f)
    flags.DEFINE_boolean("add_flipped_images", False, "Also evaluate left-right flipped images.",
                         flag_values=f)
    flags.DEFINE_list("eval_crop_size", None, "Pad every image to 'height,width' (must be >= the image; "
                      "default: each image padded to its own 32k+1 size).", flag_values=f)
    flags.DEFINE_string("output_dir", None, "Where results.json (and vis/) go; default <run>/eval.",
                        flag_values=f)
    flags.DEFINE_string("eval_logdir", None, "Official name of --output_dir.", flag_values=f)
    flags.DEFINE_boolean("vis", False, "Write coloured prediction PNGs (dataset palette) to <output_dir>/vis.",
                         flag_values=f)
    flags.DEFINE_integer("max_images", None, "Evaluate only the first N images.", flag_values=f)
    flags.DEFINE_integer("eval_interval_secs", None, "Continuous evaluation: poll --checkpoint_path (a "
                         "folder) this often and evaluate each new checkpoint.", flag_values=f)
    flags.DEFINE_integer("max_number_of_evaluations", 0, "Continuous evaluation: stop after this many "
                         "(0: until --eval_timeout_secs passes with no new checkpoint).", flag_values=f)
    flags.DEFINE_integer("eval_timeout_secs", 3600, "Continuous evaluation: stop after this long without a "
                         "new checkpoint.", flag_values=f)
    flags.DEFINE_integer("precise_bn_batches", 0, "Precise BN: first recompute every BN's statistics on this "
                         "many batches of the run's training split, preprocessed as for evaluation (full "
                         "size), and store them as a new checkpoint ckpt_precise_bn-<step> in the run folder "
                         "(0: use the moving statistics of training).", flag_values=f)
    flags_common.define_precise_bn_batch_size_flag(f)


def eval_config_from_flags(f=FLAGS):
    from nas_deeplab.training.evaluator import EvalConfig
    if not f.checkpoint_path:
        raise flags_common.FlagError("--checkpoint_path is required (a checkpoint prefix or a run folder)")
    if f.output_dir and f.eval_logdir and f.output_dir != f.eval_logdir:
        raise flags_common.FlagError("--output_dir and --eval_logdir name different folders; give one")
    return EvalConfig(
        checkpoint_path=f.checkpoint_path, model=flags_common.model_config_from_flags(f),
        # Unset: the data set the run was trained on (its train_config.json).
        dataset=f.dataset if f["dataset"].present else None,
        dataset_dir=f.dataset_dir, eval_split=f.eval_split,
        eval_scales=flags_common.parse_float_list(f.eval_scales, "eval_scales"),
        add_flipped_images=f.add_flipped_images,
        eval_crop_size=flags_common.parse_size(f.eval_crop_size, "eval_crop_size", allow_none=True),
        output_dir=f.output_dir or f.eval_logdir, vis=f.vis, max_images=f.max_images,
        eval_interval_secs=f.eval_interval_secs, max_number_of_evaluations=f.max_number_of_evaluations,
        eval_timeout_secs=f.eval_timeout_secs, precise_bn_batches=f.precise_bn_batches,
        precise_bn_batch_size=f.precise_bn_batch_size, mixed_precision=f.mixed_precision,
        **flags_common.resize_options_from_flags(f))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from nas_deeplab.cli_startup import import_tensorflow
    import_tensorflow()   # TF's start-up chatter filtered before anything else loads it
    return run(FLAGS)


def run(f, stream=None) -> int:
    """The CLI on parsed flags `f`; returns the exit status (2: bad flags or inputs)."""
    stream = stream or sys.stdout
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Evaluation runs one large image at a time: TF's default pools (threads inside each conv) win.
    flags_common.apply_thread_flags(f, prefer="default", stream=stream)
    from nas_deeplab.training.evaluator import evaluate
    try:
        cfg = eval_config_from_flags(f)
        cfg.validate()
        res = evaluate(cfg, stream=stream)
    except Exception as e:  # noqa: BLE001  one clear line for known user errors
        return flags_common.report_user_error(e, "eval.py")
    if res:
        print(f"mIoU: {res['miou']:.4f} (results in {res['results_json']})", file=stream, flush=True)
    return 0


def run_main():
    define_flags()
    app.run(main, flags_parser=flags_common.parse_flags_or_exit)


if __name__ == "__main__":
    run_main()
