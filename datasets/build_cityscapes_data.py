r"""Convert Cityscapes (leftImg8bit + gtFine) into official-format TFRecords (10 shards per split).

    python datasets/build_cityscapes_data.py --cityscapes_root=cityscapes --output_dir=cityscapes/tfrecord
    # the paper's search input (Sec. 5.1): half resolution, 512x1024
    python datasets/build_cityscapes_data.py --cityscapes_root=cityscapes --resize_factor=0.5 \
        --output_dir=cityscapes/half_res_tfrecord

Uses gtFine *_labelTrainIds.png, or converts *_labelIds.png with the official id -> trainId table
when the trainId files are absent. Writes train_fine / val_fine (/ test_fine with --splits).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from nas_deeplab.data import builder, cityscapes, script  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("cityscapes_root", None, "Folder holding leftImg8bit/ and gtFine/.")
flags.DEFINE_string("output_dir", None, "Where to write the shards.")
flags.DEFINE_list("splits", ["train", "val"], "Raw splits to convert (train, val, test).")
flags.DEFINE_integer("num_shards", cityscapes.NUM_SHARDS, "Shards per split (official: 10).")
flags.DEFINE_float("resize_factor", None, builder.RESIZE_FACTOR_HELP)
flags.mark_flag_as_required("cityscapes_root")
flags.mark_flag_as_required("output_dir")



def _build():
    bad = set(FLAGS.splits) - set(cityscapes.SPLITS)
    if bad:
        raise app.UsageError(f"--splits: unknown {sorted(bad)}; use {sorted(cityscapes.SPLITS)}")
    sizes = cityscapes.build(FLAGS.cityscapes_root, FLAGS.output_dir, FLAGS.splits, FLAGS.num_shards,
                             log=print, resize_factor=FLAGS.resize_factor)
    print(f"wrote {sizes} to {FLAGS.output_dir}")


if __name__ == "__main__":
    script.run(_build)
