"""Write a built-in synthetic segmentation set as official-format TFRecords.

    python datasets/build_synthetic_data.py --output_dir=/tmp/synthetic
    python datasets/build_synthetic_data.py --dataset=synthetic_context --output_dir=/tmp/context

Same --seed (and sizes) -> byte-identical shards. The CLIs build these sets on first use into
$NAS_DEEPLAB_CACHE (or ~/.cache/nas_deeplab)/synthetic-v1 and .../synthetic_context-v1; this script
is for a copy elsewhere.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from nas_deeplab.data import descriptors, script, synthetic, synthetic_context  # noqa: E402
from nas_deeplab.data.errors import DataError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "synthetic_context"],
                  "Which built-in set: synthetic (told apart by colour; smoke tests) or synthetic_context "
                  "(same colours in every class; shape, size, neighbourhood and thin lines decide).")
flags.DEFINE_string("output_dir", None, "Folder to create (must not exist or be empty, see --overwrite).")
flags.DEFINE_integer("seed", synthetic.DEFAULT_SEED, "Generator seed.")
flags.DEFINE_integer("num_train", descriptors.SYNTHETIC_NUM_TRAIN, "Images in split train.")
flags.DEFINE_integer("num_val", descriptors.SYNTHETIC_NUM_VAL, "Images in split val.")
flags.DEFINE_integer("num_shards", synthetic.NUM_SHARDS, "Shards per split.")
flags.DEFINE_float("ignore_prob", 0.3, "Probability that an image has an ignore (255) region "
                   "(--dataset=synthetic only).")
flags.DEFINE_bool("overwrite", False, "Replace an existing, non-empty --output_dir.")
flags.mark_flag_as_required("output_dir")



def _build():
    for name in ("num_train", "num_val", "num_shards"):
        if getattr(FLAGS, name) < 1:
            raise app.UsageError(f"--{name} must be >= 1")
    if FLAGS.dataset == "synthetic_context":
        if FLAGS["ignore_prob"].present:
            raise DataError("--ignore_prob applies to --dataset=synthetic only")
        synthetic_context.build(FLAGS.output_dir, seed=FLAGS.seed, num_train=FLAGS.num_train,
                                num_val=FLAGS.num_val, num_shards=FLAGS.num_shards, overwrite=FLAGS.overwrite)
    else:
        synthetic.build(FLAGS.output_dir, seed=FLAGS.seed, num_train=FLAGS.num_train, num_val=FLAGS.num_val,
                        num_shards=FLAGS.num_shards, overwrite=FLAGS.overwrite, ignore_prob=FLAGS.ignore_prob)
    print(f"wrote {FLAGS.dataset} train ({FLAGS.num_train}) and val ({FLAGS.num_val}) to {FLAGS.output_dir}")


if __name__ == "__main__":
    script.run(_build)
