"""Convert ADE20K (ADEChallengeData2016) into official-format TFRecords (4 shards per split).

    python datasets/build_ade20k_data.py --ade_root=ADEChallengeData2016 --output_dir=ade20k/tfrecord
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from nas_deeplab.data import ade20k, builder, script  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("ade_root", None, "The ADEChallengeData2016 folder (images/, annotations/).")
flags.DEFINE_string("output_dir", None, "Where to write the shards.")
flags.DEFINE_list("splits", ["train", "val"], "Splits to convert (train = training, val = validation).")
flags.DEFINE_integer("num_shards", ade20k.NUM_SHARDS, "Shards per split (official: 4).")
flags.DEFINE_float("resize_factor", None, builder.RESIZE_FACTOR_HELP)
flags.mark_flag_as_required("ade_root")
flags.mark_flag_as_required("output_dir")



def _build():
    bad = set(FLAGS.splits) - set(ade20k.SPLITS)
    if bad:
        raise app.UsageError(f"--splits: unknown {sorted(bad)}; use {sorted(ade20k.SPLITS)}")
    sizes = ade20k.build(FLAGS.ade_root, FLAGS.output_dir, FLAGS.splits, FLAGS.num_shards, log=print,
                         resize_factor=FLAGS.resize_factor)
    print(f"wrote {sizes} to {FLAGS.output_dir}")


if __name__ == "__main__":
    script.run(_build)
