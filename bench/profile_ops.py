"""Where the time of a step goes, per op type, in each precision (the TF profiler's framework op stats).

    python bench/profile_ops.py --what=train --size=321 --precisions=none,mixed_bfloat16
    python bench/profile_ops.py --what=serve --size=513 --precisions=none,bfloat16

Why: a 16-bit conv kernel can be several times faster than float32 and the whole network barely so;
the difference is in the ops around the convs (casts, layout reorders, BN, ReLU, resizes). This runs
Auto-DeepLab-S (regular heads, 19 classes) under each Keras dtype policy -- `mixed_bfloat16` (float32
variables, 16-bit compute, casts at every layer), or `bfloat16` / `float16` (16-bit variables too, as
a 16-bit export serves) -- profiles a few steps and prints, per op type, the self time per step and its
share, side by side. `--what=train` profiles an SGD step at batch 2, `--what=serve` a forward pass at
batch 1 (what `predict_labels` runs, before the argmax).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS

POLICIES = ("none", "mixed_bfloat16", "mixed_float16", "bfloat16", "float16")


def define_flags() -> None:
    flags.DEFINE_enum("what", "train", ["train", "serve"], "An SGD step (batch 2) or a forward pass (batch 1).")
    flags.DEFINE_integer("size", 321, "Square input size.")
    flags.DEFINE_list("precisions", ["none", "mixed_bfloat16"], f"Keras dtype policies, of {list(POLICIES)}.")
    flags.DEFINE_integer("steps", 3, "Profiled steps (after one warm-up).")
    flags.DEFINE_integer("top", 18, "Op types shown.")


def op_type_self_times(xplane_paths) -> dict[str, float]:
    """{op type: total self time in microseconds} from the profiler's framework_op_stats table."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin  # noqa: PLC0415
    data, ok = plugin.xspace_to_tools_data(list(xplane_paths), "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"the profiler could not convert {xplane_paths}: {data[:200]!r}")
    table = json.loads(data)[0]
    cols = [c["id"] for c in table["cols"]]
    i_type, i_self = cols.index("type"), cols.index("total_self_time")
    out: dict[str, float] = {}
    for row in table["rows"]:
        values = [c.get("v") for c in row["c"]]
        if values[i_type] in ("IDLE",):
            continue
        out[values[i_type]] = out.get(values[i_type], 0.0) + float(values[i_self] or 0.0)
    return out


def profile(fn, steps: int) -> dict[str, float]:
    """Per-step self time (us) by op type of `fn()`, profiled over `steps` calls after a warm-up."""
    import tensorflow as tf  # noqa: PLC0415
    fn()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            fn()
        tf.profiler.experimental.stop()
        paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        return {k: v / steps for k, v in op_type_self_times(paths).items()}


def make_step(what: str, size: int, policy: str):
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from nas_deeplab import architecture  # noqa: PLC0415
    from nas_deeplab.model import deeplab  # noqa: PLC0415
    from nas_deeplab.training import losses, precision  # noqa: PLC0415
    opts = deeplab.ModelOptions(num_classes=19, aspp_with_separable_conv=False, decoder_use_separable_conv=False)
    with precision.keras_policy("float32" if policy == "none" else policy):
        model = deeplab.build_deeplab(architecture.preset("auto_deeplab_s"), opts)
    if what == "serve":
        x = tf.random.uniform([1, size, size, 3], 0, 255)
        forward = tf.function(lambda t: tf.cast(model(t, training=False), tf.float32))
        return lambda: forward(x).numpy()
    images = tf.random.uniform([2, size, size, 3], 0, 255)
    labels = tf.random.uniform([2, size, size, 1], 0, 19, dtype=tf.int32)
    opt = keras.optimizers.SGD(0.01, momentum=0.9)
    opt.build(model.trainable_variables)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = losses.valid_pixel_mean_loss(model(images, training=True), labels, 255)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss
    return lambda: step().numpy()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    bad = [p for p in FLAGS.precisions if p not in POLICIES]
    if bad:
        raise app.UsageError(f"--precisions: unknown {bad}; choose from {list(POLICIES)}")
    from bench import common  # noqa: PLC0415
    from nas_deeplab.training import threads  # noqa: PLC0415
    print(threads.configure("auto", prefer="op_parallel" if FLAGS.what == "train" else "default"), flush=True)
    stats = {p: profile(make_step(FLAGS.what, FLAGS.size, p), FLAGS.steps) for p in FLAGS.precisions}
    totals = {p: sum(s.values()) for p, s in stats.items()}
    first = FLAGS.precisions[0]
    ops = sorted(set().union(*stats.values()), key=lambda o: -max(s.get(o, 0.0) for s in stats.values()))
    print(f"{common.machine()['cpu']}: Auto-DeepLab-S {FLAGS.what} at {FLAGS.size}, self time per step (ms) "
          f"and share, by op type")
    print(f"{'op type':32s}" + "".join(f"{p:>24s}" for p in FLAGS.precisions))
    for op in ops[:FLAGS.top]:
        print(f"{op:32s}" + "".join(f"{s.get(op, 0.0) / 1e3:14.1f} ({100 * s.get(op, 0.0) / totals[p]:5.1f}%)"
                                     for p, s in stats.items()))
    print(f"{'all ops':32s}" + "".join(f"{totals[p] / 1e3:14.1f} (x{totals[first] / totals[p]:.2f})   "
                                      for p in FLAGS.precisions))
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
