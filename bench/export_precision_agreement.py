"""How far do 16-bit exports move a trained model's labels and mIoU, and how much of that is luck?

    python bench/export_precision_agreement.py --checkpoint_path=runs/train --draws=8
    python bench/export_precision_agreement.py --checkpoint_path=runs/train --draws=1 \
        --variants=bfloat16:fold                                       # one export, as written

Each variant is built by the export code (`exporter.serving_model`, the same copy, cast and BN fold a
SavedModel gets) and labels the data set's val split next to the float32 model; the report gives the
share of pixels whose label is unchanged and the mIoU change.

Why several draws: one 16-bit model is one draw of rounding errors. Draw k > 0 re-parameterises the
float32 model (every separable conv: depthwise channel i times r_i, pointwise input row i divided by
r_i, r_i = 2**u, u ~ U(0, 1); no nonlinearity sits between the two, so the float32 function is
unchanged up to float32 rounding of the products: a near-tie pixel may move, and the script refuses a
draw that moves more than 1 in 10,000 float32 labels; each draw's 16-bit labels are compared with that
draw's float32 ones, the moved count recorded) and so re-rounds the depthwise
kernels, the depthwise outputs and the pointwise kernels to 16 bits. The spread over draws is how much
of one export's mIoU change is which way its rounding happened to fall; the other convs keep their
rounding, so the spread is a lower bound. Draw 0 is the model as trained. A variant may name the
weight rounding (`bfloat16:fold:mean_preserving`, calibrated on --calibration_examples training
images, as `export.py --weight_rounding` does).
Writes <output_json> (default: <checkpoint_path>/export_precision_agreement.json).
"""

from __future__ import annotations

import collections
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
# A draw is float32-exact up to the rounding of r * w: more moved labels than this share is a bug.
MAX_FLOAT32_MOVED = 1e-4
FORMS = ("bfloat16:fold", "bfloat16:nofold", "float16:fold", "float16:nofold")


def define_flags() -> None:
    """The flags, defined when run as a script (importing the module for its functions defines none)."""
    flags.DEFINE_string("checkpoint_path", None, "Training run folder or checkpoint prefix.", required=True)
    flags.DEFINE_string("dataset", None, "Data set (default: the run's).")
    flags.DEFINE_string("dataset_dir", None, "Its folder (built-in sets need none).")
    flags.DEFINE_list("variants", ["bfloat16:fold", "bfloat16:fold:mean_preserving", "float16:fold"],
                      f"precision:fold|nofold[:rounding], precision:fold|nofold any of {list(FORMS)}, "
                      "rounding as export.py --weight_rounding (default nearest).")
    flags.DEFINE_integer("calibration_examples", 8, "Training images that calibrate mean_preserving.",
                         lower_bound=1)
    flags.DEFINE_integer("draws", 8, "Rounding draws (1: the model as trained only).", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of the draws.")
    flags.DEFINE_string("output_json", None, "Report file.")


def rounding_draw(model, rng) -> int:
    """Re-parameterise every separable conv of `model` in place without changing its float32 function:
    depthwise channel i times r_i, pointwise input row i divided by r_i (r_i = 2**U(0, 1), computed in
    float64). Returns the number of layers changed."""
    import numpy as np  # noqa: PLC0415

    from nas_deeplab.model import layers  # noqa: PLC0415
    n = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):  # noqa: SLF001
        if not isinstance(layer, layers.SeparableConv2D):
            continue
        dk = np.asarray(layer.depthwise_kernel.numpy(), np.float64)   # [K, K, C, 1]
        pk = np.asarray(layer.pointwise_kernel.numpy(), np.float64)   # [1, 1, C, O]
        r = 2.0 ** rng.uniform(0.0, 1.0, dk.shape[2])
        layer.depthwise_kernel.assign((dk * r[None, None, :, None]).astype(np.float32))
        layer.pointwise_kernel.assign((pk / r[None, None, :, None]).astype(np.float32))
        n += 1
    return n


def compare_labels(preds, refs, truths, ignore_label):
    """Counts of one variant's labels against the float32 ones: pixels, equal, and of the changed ones
    those that were right in float32 (right->wrong) and those that became right (wrong->right)."""
    import numpy as np  # noqa: PLC0415
    k = collections.Counter()
    for p, r, g in zip(preds, refs, truths):
        changed = np.asarray(p) != np.asarray(r)
        labelled = np.asarray(g) != ignore_label
        k["pixels"] += int(changed.size)
        k["equal"] += int((~changed).sum())
        k["right_to_wrong"] += int((changed & labelled & (r == g)).sum())
        k["wrong_to_right"] += int((changed & labelled & (p == g)).sum())
    return dict(k)


def summarize(records: list[dict]) -> dict:
    """Per variant over the draws: equal share (min, mean) and mIoU change (mean, std, min, max, the
    largest |change|) in points, from records {variant, draw, equal_fraction, miou_change} (fractions)."""
    import numpy as np  # noqa: PLC0415
    out = {}
    for name in dict.fromkeys(r["variant"] for r in records):
        rs = [r for r in records if r["variant"] == name and "miou_change" in r]
        if not rs:
            out[name] = {"draws": 0, "refused": [r.get("refused") for r in records if r["variant"] == name][0]}
            continue
        d = 100 * np.array([r["miou_change"] for r in rs])
        eq = 100 * np.array([r["equal_fraction"] for r in rs])
        out[name] = {"draws": len(rs), "equal_pct_min": float(eq.min()), "equal_pct_mean": float(eq.mean()),
                     "miou_change_mean": float(d.mean()), "miou_change_std": float(d.std()),
                     "miou_change_min": float(d.min()), "miou_change_max": float(d.max()),
                     "miou_change_max_abs": float(np.abs(d).max())}
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from nas_deeplab.export.rounding import ROUNDINGS  # noqa: PLC0415
    for v in FLAGS.variants:
        form, _, how = v.rpartition(":") if v.count(":") == 2 else (v, "", "nearest")
        if form not in FORMS or how not in ROUNDINGS:
            raise app.UsageError(f"--variants: {v!r} is not precision:fold|nofold[:rounding] with the form one "
                                 f"of {list(FORMS)} and the rounding one of {list(ROUNDINGS)}")
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from bench import common  # noqa: PLC0415
    from nas_deeplab.data.pipeline import make_dataset  # noqa: PLC0415
    from nas_deeplab.data.synthetic import resolve_dataset  # noqa: PLC0415
    from nas_deeplab.export import exporter  # noqa: PLC0415
    from nas_deeplab.io_utils import atomic_write_text  # noqa: PLC0415
    from nas_deeplab.official import checkpoint as oc  # noqa: PLC0415
    from nas_deeplab.official import restore as restore_lib  # noqa: PLC0415
    from nas_deeplab.training import metrics, threads  # noqa: PLC0415
    tf.get_logger().setLevel("ERROR")   # one fresh model per variant and draw: retracing is expected
    print(threads.configure("auto", prefer="op_parallel"), flush=True)
    try:
        prefix = oc.resolve_checkpoint_prefix(FLAGS.checkpoint_path)
        cfg = exporter.ExportConfig(export_path=os.devnull, checkpoint_path=FLAGS.checkpoint_path,
                                    dataset=FLAGS.dataset)
        arch, nc, structure, desc, _ = exporter.resolve_model(cfg, prefix, oc.checkpoint_kind(prefix))
        desc, ddir = resolve_dataset(FLAGS.dataset or (desc.name if desc else None), FLAGS.dataset_dir)
    except (ValueError, OSError) as e:
        raise app.UsageError(str(e)) from None
    model, _ = exporter.build_model(arch, nc, structure)
    restore_lib.restore_weights(model, prefix)
    trained = {v.path: v.numpy() for v in model.variables}
    data = [(e["image"], e["label"][0, :, :, 0].numpy(), int(e["height"][0]), int(e["width"][0]))
            for e in make_dataset(ddir, "val", desc, batch_size=1, is_training=False, eval_pad_stride=32)]
    truths = [lab[:h, :w] for _, lab, h, w in data]
    calibration = [e["image"] for e, _ in zip(
        make_dataset(ddir, "train", desc, batch_size=1, is_training=False, eval_pad_stride=32),
        range(FLAGS.calibration_examples))]

    def labels(m):
        # Unknown H, W as in the SavedModel signatures (TF's remapper then fuses as it does there).
        f = tf.function(lambda x: tf.argmax(m(x, training=False), -1, output_type=tf.int32),
                        input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
        return [f(x)[0, :h, :w].numpy() for x, _, h, w in data]

    def miou(preds):
        cm = np.zeros((nc, nc), np.int64)
        for p, g in zip(preds, truths):
            cm += metrics.confusion_matrix_np(g, p, nc, desc.ignore_label)
        return float(metrics.mean_iou(cm))

    refs = labels(model)
    miou32 = miou(refs)
    print(f"{len(data)} val images, float32 mIoU {100 * miou32:.3f}", flush=True)
    rng = np.random.default_rng(FLAGS.seed)
    records = []
    pixels = sum(int(r.size) for r in refs)
    for draw in range(FLAGS.draws):
        for v in model.variables:
            v.assign(trained[v.path])
        draw_refs, draw_miou32, moved = refs, miou32, 0
        if draw:
            rounding_draw(model, rng)
            draw_refs = labels(model)
            moved = sum(int((a != b).sum()) for a, b in zip(draw_refs, refs))
            if moved > MAX_FLOAT32_MOVED * pixels:
                raise RuntimeError(f"draw {draw}: the re-parameterised float32 model changed {moved} of "
                                   f"{pixels} labels: not the same function")
            draw_miou32 = miou(draw_refs)
        for variant in FLAGS.variants:
            precision, fold, how = (variant.split(":") + ["nearest"])[:3]
            rec = {"variant": variant, "draw": draw, "float32_labels_moved": moved}
            try:
                target, folded = exporter.serving_model(model, arch, nc, structure, precision, fold == "fold",
                                                        how, calibration)
            except exporter.ExportError as e:
                rec["refused"] = str(e)
                print(f"draw {draw} {variant:30s} refused: {e}", flush=True)
                records.append(rec)
                continue
            preds = labels(target)
            k = compare_labels(preds, draw_refs, truths, desc.ignore_label)
            rec.update(k, batch_norm_folded=folded, equal_fraction=k["equal"] / k["pixels"],
                       miou_change=miou(preds) - draw_miou32)
            records.append(rec)
            print(f"draw {draw} {variant:30s} equal {100 * rec['equal_fraction']:.3f}%  mIoU change "
                  f"{100 * rec['miou_change']:+.3f}  (right->wrong {k['right_to_wrong']}, wrong->right "
                  f"{k['wrong_to_right']})", flush=True)
    summary = summarize(records)
    report = {"checkpoint": prefix, "dataset": desc.name, "val_images": len(data), "float32_miou": miou32,
              "draws": FLAGS.draws, "seed": FLAGS.seed, "summary": summary, "records": records,
              "machine": common.machine()}
    out = FLAGS.output_json or os.path.join(
        FLAGS.checkpoint_path if os.path.isdir(FLAGS.checkpoint_path) else os.path.dirname(prefix),
        "export_precision_agreement.json")
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    for name, s in summary.items():
        if not s["draws"]:
            print(f"{name:30s} refused: {s['refused']}")
            continue
        print(f"{name:30s} {s['draws']} draws: equal >= {s['equal_pct_min']:.3f}%, mIoU change "
              f"{s['miou_change_mean']:+.3f} +- {s['miou_change_std']:.3f} points "
              f"(from {s['miou_change_min']:+.3f} to {s['miou_change_max']:+.3f})")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
