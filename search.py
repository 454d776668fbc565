"""Auto-DeepLab architecture search (hierarchical: cell alpha + network-level beta).

    python search.py                      # small preset on the built-in data set (~1.5 min on 2 CPU cores)
    python search.py --preset=paper --dataset=cityscapes --dataset_dir=/data/cityscapes_half_res_tfrecord
    # records from: python datasets/build_cityscapes_data.py --resize_factor=0.5 ... (paper Sec. 5.1)

Writes to --output_dir: architecture.json (read by train.py / export.py), alpha.npy, beta.npy,
cell.png, network.png, checkpoints/ (automatic resume), tensorboard/, search_config.json.
Every preset value can be overridden by its flag.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One glibc malloc arena per core, applied by `import nas_deeplab` before TF starts its threads: less
# resident heap at the same speed (nas_deeplab/training/memory.py). Set it yourself to override.
os.environ.setdefault("NAS_DEEPLAB_MALLOC_ARENAS", str(os.cpu_count() or 1))

from absl import app, flags  # noqa: E402

from nas_deeplab.training import flags_common  # noqa: E402

# No random scale in either preset: Sec. 5.1 names 321x321 random crops of half-resolution images and no
# scale augmentation (see nas_deeplab/search/searcher.py); the half resolution is built into the records.
_NO_SCALE = dict(min_scale_factor=1.0, max_scale_factor=1.0, scale_factor_step_size=0.25)
PRESETS = {
    # About 95 s on an idle 2-core machine with the built-in data set; demonstrates the mechanics only.
    "small": dict(crop_size=65, batch_size=4, filter_multiplier=4, num_layers=8, num_blocks=5, epochs=6,
                  arch_start_epoch=2, steps_per_epoch=0, val_steps=3, **_NO_SCALE),
    # Paper Sec. 5.1: 321x321 crops, batch 2, 40 epochs, alpha/beta from epoch 20, L=12, B=5, F=8; run it
    # on half-resolution records (datasets/build_cityscapes_data.py --resize_factor=0.5).
    "paper": dict(crop_size=321, batch_size=2, filter_multiplier=8, num_layers=12, num_blocks=5, epochs=40,
                  arch_start_epoch=20, steps_per_epoch=0, val_steps=50, **_NO_SCALE),
}

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "small", sorted(PRESETS), "Settings bundle; any flag below overrides it.")
flags.DEFINE_string("output_dir", "search_output", "Output folder (resumes automatically if it holds "
                    "checkpoints of the same search).")
flags.DEFINE_string("dataset", "synthetic", "Data set name (cityscapes, pascal_voc_seg, ade20k, synthetic, synthetic_context) "
                    "or a JSON descriptor path.")
flags.DEFINE_string("dataset_dir", None, "Folder of <split>-*.tfrecord shards (not needed for the built-in "
                    "synthetic and synthetic_context sets, nor for a descriptor beside its shards).")
flags.DEFINE_integer("epochs", None, "Search epochs (one epoch = one pass over trainA).")
flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch (0: a full pass over trainA).")
flags.DEFINE_integer("arch_start_epoch", None, "First epoch (0-based) with alpha/beta updates.")
flags.DEFINE_float("min_scale_factor", None, "Minimum random scale of the search crops (train.py's DeepLab "
                   "flag). Presets: 1.0, no scaling: the paper (Sec. 5.1) states 321x321 random crops of "
                   "half-resolution images and no scale augmentation; DeepLab's training range is 0.5.")
flags.DEFINE_float("max_scale_factor", None, "Maximum random scale of the search crops (presets: 1.0; "
                   "DeepLab's training range: 2.0).")
flags.DEFINE_float("scale_factor_step_size", None, "Random scale step, scales min, min+step, ..., max "
                   "(0: uniform; presets: 0.25, DeepLab's).")
flags.DEFINE_integer("crop_size", None, "Square training crop (32k+1, e.g. 65, 129, 321).")
flags.DEFINE_integer("batch_size", None, "Global batch size (split over the replicas).")
flags.DEFINE_integer("filter_multiplier", None, "F: a node at stride s has B*F*s/4 filters.")
flags.DEFINE_integer("num_layers", None, "L: layers of the network-level trellis.")
flags.DEFINE_integer("num_blocks", None, "B: blocks per cell.")
flags.DEFINE_integer("num_levels", 4, "Trellis levels: strides 4 .. 4*2**(num_levels-1) (4: 4..32, paper).")
flags.DEFINE_integer("val_steps", None, "Batches of fixed val crops for the per-epoch val mIoU (0: off).")
flags.DEFINE_integer("seed", 0, "Seed of the supernet initialisation and of the data order.")
flags.DEFINE_integer("split_seed", 0, "Seed of the trainA/trainB halves.")
flags.DEFINE_boolean("deterministic", False, "Deterministic ops and data order (exact resume).")
flags.DEFINE_enum("strategy", "mirrored", ["mirrored", "one_device", "multi_worker"],
                  "tf.distribute strategy (multi_worker reads TF_CONFIG).")
flags.DEFINE_integer("num_cpu_replicas", 0, "Split the CPU into this many logical devices (no GPU).")
flags.DEFINE_float("weight_lr", 0.025, "Initial cosine learning rate of the weights.")
flags.DEFINE_float("weight_lr_min", 0.001, "Final cosine learning rate of the weights.")
flags.DEFINE_float("weight_momentum", 0.9, "SGD momentum of the weights.")
flags.DEFINE_float("weight_decay", 3e-4, "Coupled L2 weight decay of the weights.")
flags.DEFINE_float("arch_lr", 3e-3, "Adam learning rate of alpha/beta.")
flags.DEFINE_float("arch_beta_1", 0.5, "Adam beta_1 of alpha/beta (DARTS convention).")
flags.DEFINE_float("arch_beta_2", 0.999, "Adam beta_2 of alpha/beta.")
flags.DEFINE_float("arch_weight_decay", 1e-3, "Coupled L2 weight decay of alpha/beta.")
flags.DEFINE_list("recompute_levels", None, "Recompute only the nodes of these levels in the backward pass "
                  "(0 = stride 4 holds most activations). At crop 321 (paper setting) 0,1 peaks at 4.6 GiB "
                  "instead of 9-10 GiB in float32 (3.3 instead of 4.7 in bfloat16; 3.5 in a whole run with "
                  "the per-epoch validation), weight step +22% (bench/results.json, 2-core AMD EPYC).")
flags.DEFINE_boolean("recompute", False, "Recompute each trellis node in the backward pass: less memory "
                     "(for large crops), more time.")
flags.DEFINE_enum("supernet", "fused", ["fused", "reference"],
                  "fused: the fast supernet (search/supernet.py). reference: the same function written edge "
                  "by edge from the op layers (search/reference.py), to try a new candidate op; small sizes "
                  "only. Measured (AMD EPYC, 2 cores; crop 65, batch 2, L=4 B=5 F=8): 2.2 s per weight "
                  "step vs 0.6 s fused, start-up 6.5 min vs 40-50 s, 5.2 vs 2.0 GiB. Paper size (L=12: 45 "
                  "nodes, not 13): about 3.5x that at crop 65 (~7 s a step, ~20 min start-up, ~18 GiB); "
                  "crop 321 not measured, likely beyond 24 GiB.")
flags.DEFINE_enum("mixed_precision", "none", ["none", "mixed_bfloat16", "mixed_float16"],
                  "Compute the supernet in 16 bits: activations and convs in bfloat16 (CPUs with AMX-BF16 "
                  "or AVX512-BF16, A100/H100, TPUs) or float16 (GPUs; dynamic loss scaling; refused on a "
                  "CPU). Master weights, alpha/beta, softmaxes, BN statistics, losses and optimizers stay "
                  "float32, so checkpoints are the same and a search may resume in another precision.")
flags.DEFINE_enum("recompute_cheap_ops", "auto", ["auto", "on", "off"],
                  "The backward pass recomputes the separable ops' depthwise outputs, the pool mixes and the "
                  "direction sums instead of keeping them: 0.7 GiB less at crop 321 in bfloat16, for one "
                  "more depthwise pass. auto: on with 16-bit --mixed_precision (float32 results stay "
                  "exactly as they were; the recompute changes TF's op fusions, hence round-off).")
flags.DEFINE_integer("log_every", 10, "Progress line / TensorBoard scalars every N steps.")
flags.DEFINE_integer("checkpoint_every", 0, "Also checkpoint every N steps (0: end of each epoch only).")
flags.DEFINE_integer("stop_after_step", None, "Stop (with a checkpoint) after this global step; rerun "
                     "to resume.")


flags_common.define_thread_flags()


def config_from_flags():
    from nas_deeplab.search.searcher import SearchConfig
    preset = dict(PRESETS[FLAGS.preset])
    kw = {}
    for name in ("epochs", "steps_per_epoch", "arch_start_epoch", "crop_size", "batch_size",
                 "filter_multiplier", "num_layers", "num_blocks", "val_steps", "min_scale_factor",
                 "max_scale_factor", "scale_factor_step_size"):
        value = getattr(FLAGS, name)
        kw[name] = preset[name] if value is None else value
    for name in ("num_levels", "output_dir", "dataset", "dataset_dir", "seed", "split_seed", "deterministic", "strategy",
                 "num_cpu_replicas", "weight_lr", "weight_lr_min", "weight_momentum", "weight_decay",
                 "arch_lr", "arch_beta_1", "arch_beta_2", "arch_weight_decay", "recompute", "log_every",
                 "checkpoint_every", "stop_after_step", "mixed_precision", "recompute_cheap_ops"):
        kw[name] = getattr(FLAGS, name)
    levels = preset.get("recompute_levels", []) if FLAGS.recompute_levels is None else FLAGS.recompute_levels
    kw["recompute_levels"] = flags_common.parse_int_list(levels, "recompute_levels")
    kw["supernet"] = FLAGS.supernet
    if kw["arch_start_epoch"] >= kw["epochs"]:
        print(f"note: --arch_start_epoch={kw['arch_start_epoch']} >= --epochs={kw['epochs']}: alpha and beta "
              "will not be updated", flush=True)
    config = SearchConfig(**kw)
    config.validate()
    return config


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from nas_deeplab.cli_startup import import_tensorflow
    import_tensorflow()   # TF's start-up chatter filtered before anything else loads it
    try:
        config = config_from_flags()
    except ValueError as e:   # bad flag: one line, exit status 2, as every CLI here
        return flags_common.report_user_error(e, "search.py")
    # Thousands of small kernels per step: one thread per op, several ops at once (training/threads.py).
    flags_common.apply_thread_flags(FLAGS, prefer="op_parallel")
    from nas_deeplab.training import memory
    print(memory.describe_heap_settings(), flush=True)
    from nas_deeplab.search.searcher import SearchError, run_search
    try:
        result = run_search(config)
    except SearchError as e:
        print(f"search.py: search stopped: {e}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:  # noqa: BLE001  data, output folder, resume mismatch: one clear line
        return flags_common.report_user_error(e, "search.py")
    arch = result.architecture
    state = "finished" if result.finished else f"stopped at step {result.step} (rerun to resume)"
    print(f"\nsearch {state}. architecture: {os.path.abspath(result.architecture_path)}")
    print(f"  backbone (level per layer, 0 = stride 4): {list(arch.backbone)}")
    print(f"  strides: {list(arch.output_strides())}")
    from nas_deeplab.model import end_points
    stride = end_points.output_stride(arch.backbone)
    decoder = end_points.default_decoder_output_stride(arch.backbone)
    heads = (f"decoder on {end_points.decoder_end_point(arch.backbone, decoder)} (stride {decoder})"
             if decoder else "no decoder (the path ends at stride 4)")
    print(f"  train.py builds: output stride {stride}, ASPP rates "
          f"{'/'.join(map(str, end_points.default_atrous_rates(stride)))}, {heads}")
    for i in range(arch.num_blocks):
        (lo, li), (ro, ri) = arch.block(i)
        print(f"  block {i}: {lo}(state {li}) + {ro}(state {ri})")
    print("  (states: 0 = previous cell, 1 = the cell before it, 2+k = block k; pictures: cell.png, "
          "network.png; raw alpha.npy / beta.npy)")
    if result.summary:
        from nas_deeplab.search import decidedness
        for line in decidedness.describe(result.summary):
            print(line)
    return 0


def run_main():
    app.run(main, flags_parser=flags_common.parse_flags_or_exit)


if __name__ == "__main__":
    run_main()
