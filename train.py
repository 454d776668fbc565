r"""Train Auto-DeepLab (official DeepLab `train.py` flags), then evaluate the eval split.

    python train.py                                   # quick demo: published cell/path at F=8 on the
                                                      # built-in synthetic set, a few minutes on 2 CPUs
    python train.py --architecture=auto_deeplab_s --dataset=cityscapes --dataset_dir=/data/cityscapes \
        --train_crop_size=769,769 --train_batch_size=16 --training_number_of_steps=500000 \
        --base_learning_rate=0.05 --drop_path_keep_prob=0.7 --train_logdir=runs/s
    python train.py --print_summary --architecture=auto_deeplab_s --dataset=cityscapes \
        --aspp_with_separable_conv=false --decoder_use_separable_conv=false

Run the same command again to resume from the newest checkpoint in --train_logdir (automatic;
bit-exact with --deterministic). Several machines: start the same command on each with
--strategy=multi_worker and TF_CONFIG naming the cluster and this task, e.g. on the first of two
  TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
--train_batch_size stays the global batch; each worker reads its own shard of the records; worker 0
(or "chief") writes checkpoints and summaries, the others write to temporary folders. On Cloud TPU
the same loop runs under tf.distribute.TPUStrategy (not wired to a flag here).
--print_summary builds the model only (no data is read; --dataset only sets the number of classes)
and ends with `trainable_params: <int>` and `multiply_adds: <int>` (convolution multiply-adds:
H_out*W_out*k*k*C_in*C_out, depthwise H_out*W_out*k*k*C; at --summary_input_size, default 1024,2048).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from nas_deeplab.training import flags_common

FLAGS = flags.FLAGS

def define_flags(f=FLAGS) -> None:
    """Define train.py's flags on `f` (once); tests pass their own flags.FlagValues."""
    if "train_logdir" in f:
        return
    flags_common.define_model_flags(f)
    flags_common.define_dataset_flags(f)
    flags_common.define_runtime_flags(f)
    flags_common.define_thread_flags(f)
    flags.DEFINE_string("train_logdir", None, "Where checkpoints and summaries go (default "
                        "runs/train_<architecture>_<dataset>); an existing run there is resumed.",
                        flag_values=f)
    flags.DEFINE_string("train_split", None, "Split to train on (default: the data set's train split, e.g. "
                        "train_fine for cityscapes).", flag_values=f)
    flags.DEFINE_integer("train_batch_size", 8, "GLOBAL batch size (split over replicas and workers).",
                         flag_values=f)
    flags.DEFINE_list("train_crop_size", "65,65", "Training crop 'height,width' (official default 513,513; "
                      "use k*32+1 sizes such as 321, 513, 769).", flag_values=f)
    flags.DEFINE_integer("training_number_of_steps", 200, "Number of training steps.", flag_values=f)
    flags.DEFINE_float("base_learning_rate", 0.08, "Base learning rate of the poly schedule (paper: 0.05).",
                       flag_values=f)
    flags.DEFINE_float("learning_power", 0.9, "Poly schedule power.", flag_values=f)
    flags.DEFINE_integer("slow_start_step", 0, "Train with slow_start_learning_rate for this many steps.",
                         flag_values=f)
    flags.DEFINE_float("slow_start_learning_rate", 1e-4, "Learning rate during the slow start.",
                       flag_values=f)
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.", flag_values=f)
    flags.DEFINE_float("weight_decay", 4e-5, "L2 weight decay (slim convention: wd * sum(w^2) / 2).",
                       flag_values=f)
    flags.DEFINE_float("drop_path_keep_prob", 1.0, "ScheduledDropPath keep probability (1.0: off).",
                       flag_values=f)
    flags.DEFINE_boolean("fine_tune_batch_norm", True, "Train BN statistics (false: BN uses its moving "
                         "statistics and drop path is off, as in the official code).", flag_values=f)
    flags.DEFINE_float("batch_norm_decay", None, "BN moving-average decay (official 0.9997). Default: "
                       "0.9997, or 1 - 10/training_number_of_steps for runs under 33,333 steps so the "
                       "moving statistics used at evaluation converge.", flag_values=f)
    flags.DEFINE_float("min_scale_factor", 0.5, "Minimum random scale for augmentation.", flag_values=f)
    flags.DEFINE_float("max_scale_factor", 2.0, "Maximum random scale for augmentation.", flag_values=f)
    flags.DEFINE_float("scale_factor_step_size", 0.25, "Random scale step (0: uniform).", flag_values=f)
    flags.DEFINE_string("tf_initial_checkpoint", None, "Initial weights: a checkpoint of ours (TF2) or an "
                        "official DeepLab (TF1 name-based) checkpoint; ignored when resuming. Every model "
                        "variable must be in it (else an error names what is missing), except the last "
                        "layers under --initialize_last_layer=false.", flag_values=f)
    flags.DEFINE_boolean("initialize_last_layer", True, "Official DeepLab flag: false leaves the last layers "
                         "out of the --tf_initial_checkpoint restore (they start from their initial values), "
                         "to fine-tune with another number of classes or other heads.", flag_values=f)
    flags.DEFINE_boolean("last_layers_contain_logits_only", False, "Official DeepLab flag: with "
                         "--initialize_last_layer=false, leave out only the logits (default: the logits, "
                         "image pooling, ASPP, concat projection and decoder).", flag_values=f)
    flags.DEFINE_integer("save_interval_steps", 100, "Checkpoint every this many steps (and at the end).",
                         flag_values=f)
    flags.DEFINE_integer("save_summaries_steps", 10, "TensorBoard scalars every this many steps.",
                         flag_values=f)
    flags.DEFINE_integer("log_steps", 10, "Progress line every this many steps.", flag_values=f)
    flags.DEFINE_integer("num_cpu_replicas", 0, "Without GPUs, split the CPU into this many logical "
                         "devices for --strategy=mirrored (testing multi-replica code paths).",
                         flag_values=f)
    flags.DEFINE_boolean("skip_corrupt_records", False, "Skip (and count) bad TFRecords instead of stopping.",
                         flag_values=f)
    flags.DEFINE_boolean("eval_after_training", True, "Evaluate the eval split at the end and print mIoU.",
                         flag_values=f)
    flags.DEFINE_integer("precise_bn_batches", 0, "Precise BN after training (before the closing "
                         "evaluation): recompute every BN's statistics on this many batches of the training "
                         "split preprocessed as for evaluation (full size) and store them as a new checkpoint "
                         "ckpt_precise_bn-<step> (0: off). Use it after short runs on small crops.",
                         flag_values=f)
    flags_common.define_precise_bn_batch_size_flag(f)
    flags.DEFINE_boolean("print_summary", False, "Print the layer table, trainable_params and multiply_adds "
                         "of the model, then exit (reads no data).", flag_values=f)
    flags.DEFINE_list("summary_input_size", "1024,2048", "Input 'height,width' for --print_summary "
                      "multiply-adds (the paper's Table 2 uses 1024x2048).", flag_values=f)


def default_logdir(model_config, dataset: str) -> str:
    arch = model_config.resolve_architecture()
    name = arch.name if model_config.architecture is None or arch.name != "custom" else \
        os.path.splitext(os.path.basename(model_config.architecture))[0]
    f = f"_f{arch.filter_multiplier}" if model_config.filter_multiplier else ""
    ds = os.path.splitext(os.path.basename(dataset))[0]
    return os.path.join("runs", f"train_{name}{f}_{ds}")


def train_config_from_flags(f=FLAGS):
    from nas_deeplab.training.trainer import TrainConfig
    model = flags_common.model_config_from_flags(f)
    model.structure()   # the head flags checked against the architecture's path before any work
    return TrainConfig(
        model=model, train_logdir=f.train_logdir or default_logdir(model, f.dataset),
        dataset=f.dataset, dataset_dir=f.dataset_dir, train_split=f.train_split,
        train_batch_size=f.train_batch_size,
        train_crop_size=flags_common.parse_size(f.train_crop_size, "train_crop_size"),
        min_scale_factor=f.min_scale_factor, max_scale_factor=f.max_scale_factor,
        scale_factor_step_size=f.scale_factor_step_size, **flags_common.resize_options_from_flags(f),
        training_number_of_steps=f.training_number_of_steps, base_learning_rate=f.base_learning_rate,
        learning_power=f.learning_power, slow_start_step=f.slow_start_step,
        slow_start_learning_rate=f.slow_start_learning_rate, momentum=f.momentum,
        weight_decay=f.weight_decay, drop_path_keep_prob=f.drop_path_keep_prob,
        fine_tune_batch_norm=f.fine_tune_batch_norm,
        batch_norm_decay=f.batch_norm_decay, tf_initial_checkpoint=f.tf_initial_checkpoint,
        initialize_last_layer=f.initialize_last_layer,
        last_layers_contain_logits_only=f.last_layers_contain_logits_only,
        strategy=f.strategy, num_cpu_replicas=f.num_cpu_replicas, deterministic=f.deterministic,
        seed=f.seed, mixed_precision=f.mixed_precision, save_interval_steps=f.save_interval_steps,
        summary_interval_steps=max(1, f.save_summaries_steps), log_interval_steps=max(1, f.log_steps),
        skip_corrupt_records=f.skip_corrupt_records, precise_bn_batches=f.precise_bn_batches,
        precise_bn_batch_size=f.precise_bn_batch_size)


def print_summary(f=FLAGS, stream=None) -> None:
    """Build the model (no data read) and print its table, parameter and multiply-add counts."""
    stream = stream or sys.stdout
    from nas_deeplab.data.descriptors import get_descriptor
    from nas_deeplab.model import summary
    model_config = flags_common.model_config_from_flags(f)
    num_classes = get_descriptor(f.dataset).num_classes
    size = flags_common.parse_size(f.summary_input_size, "summary_input_size")
    model, arch = model_config.build(num_classes, input_shape=None, weight_decay=f.weight_decay)
    macs = summary.count_multiply_adds(model, input_size=size)  # traces once at `size` ...
    table = summary.layer_table(model)  # ... and the table reuses the recorded shapes
    print(f"architecture: {arch.name} (F={arch.filter_multiplier}), {num_classes} classes "
          f"({get_descriptor(f.dataset).name}), input {size[0]}x{size[1]}", file=stream)
    print(table, file=stream)
    print(f"trainable_params: {summary.count_trainable_params(model)}", file=stream)
    print(f"multiply_adds: {macs}", file=stream, flush=True)


def describe_run(cfg) -> str:
    """The header train.py prints before any work: what is trained, on what, how long, in which type."""
    from nas_deeplab.data.synthetic import resolve_dataset
    arch = cfg.model.resolve_architecture()
    source = cfg.model.architecture or "the published architecture (default)"
    kind = "the published cell and path" if arch.is_published() else "a searched cell and path"
    heads = cfg.model.structure(arch)
    decoder = heads["decoder_output_stride"]
    if decoder:
        from nas_deeplab.model.end_points import decoder_end_point
        decoder = f"decoder on {decoder_end_point(arch.backbone, decoder)} (stride {decoder})"
    descriptor, dataset_dir = resolve_dataset(cfg.dataset, cfg.dataset_dir)   # its real split sizes
    split = cfg.train_split or descriptor.default_train_split
    size = descriptor.splits_to_sizes.get(split)
    crop = "x".join(map(str, cfg.train_crop_size))
    return "\n".join([
        f"architecture {arch.name}: {kind}, F={arch.filter_multiplier}, from {source}",
        f"  path {list(arch.backbone)}: output stride {heads['output_stride']}, ASPP rates "
        f"{'/'.join(map(str, heads['atrous_rates'])) or 'none'}, {decoder or 'no decoder'}",
        f"data {descriptor.name}, split {split}" + (f" ({size} examples)" if size else "")
        + f" from {dataset_dir}",
        f"crop {crop}, batch {cfg.train_batch_size}, {cfg.training_number_of_steps} steps, precision "
        f"{'float32' if cfg.mixed_precision == 'none' else cfg.mixed_precision}; logs in {cfg.train_logdir}"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from nas_deeplab.cli_startup import import_tensorflow
    import_tensorflow()   # TF's start-up chatter filtered before anything else loads it
    return run(FLAGS)


def run(f, stream=None) -> int:
    """The CLI on parsed flags `f`; returns the exit status (2: bad flags/inputs, 3: non-finite)."""
    stream = stream or sys.stdout
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if f.print_summary:
            print_summary(f, stream)
            return 0
        cfg = train_config_from_flags(f)
        cfg.validate()
        header = describe_run(cfg)
    except ValueError as e:  # FlagError, ArchitectureError, DataError, config validation
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    print(header, file=stream, flush=True)
    flags_common.apply_thread_flags(f, prefer="op_parallel", stream=stream)
    from nas_deeplab.training import trainer
    if cfg.num_cpu_replicas > 1:
        from nas_deeplab.training.distribute import configure_logical_cpus
        configure_logical_cpus(cfg.num_cpu_replicas)
    try:
        result = trainer.train(cfg, stream=stream)
        if f.eval_after_training and result.checkpoint:
            from nas_deeplab.training.evaluator import EvalConfig, evaluate
            res = evaluate(EvalConfig(checkpoint_path=result.checkpoint, model=cfg.model, dataset=cfg.dataset,
                                      dataset_dir=cfg.dataset_dir, **flags_common.resize_options_from_flags(f)),
                           stream=stream)
            print(f"val mIoU: {res['miou']:.4f} (results in {res['results_json']})", file=stream, flush=True)
    except trainer.NonFiniteError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 3
    except Exception as e:  # noqa: BLE001  one clear line for known user errors
        return flags_common.report_user_error(e, "train.py")
    return 0


def run_main():
    define_flags()
    app.run(main, flags_parser=flags_common.parse_flags_or_exit)


if __name__ == "__main__":
    run_main()
