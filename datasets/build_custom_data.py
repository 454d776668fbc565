r"""Convert any image folder + single-channel label PNG folder into official-format TFRecords.

    python datasets/build_custom_data.py --image_folder=imgs --label_folder=labels \
        --list_folder=lists --num_classes=5 --output_dir=tfrecord

Labels share the image's base name (<name>.png), or add --label_suffix to it (<name><suffix>.png).
With --list_folder, every <split>.txt in it (one base name per line) becomes a split; otherwise all
images become split --split. Never more shards than examples are written. A descriptor.json
is written next to the shards: pass it as --dataset=<output_dir>/descriptor.json to the CLIs.
"""

import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from nas_deeplab.data import builder, script  # noqa: E402
from nas_deeplab.data.errors import DataError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("image_folder", None, "Folder of images (.jpg/.jpeg/.png).")
flags.DEFINE_string("label_folder", None, "Folder of single-channel label PNGs (class ids), one per image: "
                    "image <name>.jpg|.jpeg|.png goes with label <name><label_suffix>.png.")
flags.DEFINE_string("label_suffix", "", "What a label's base name adds to its image's, e.g. "
                    "'_gtFine_labelTrainIds' or '_mask' (default: the same base name).")
flags.DEFINE_string("list_folder", None, "Optional folder of <split>.txt lists (official VOC form).")
flags.DEFINE_string("split", "train", "Split name when no --list_folder is given.")
flags.DEFINE_integer("num_classes", None, "Number of classes (label values 0..num_classes-1).")
flags.DEFINE_integer("ignore_label", 255, "Label value that is ignored.")
flags.DEFINE_string("name", "custom", "Data set name for descriptor.json.")
flags.DEFINE_list("class_names", None, "Optional comma-separated class names.")
flags.DEFINE_integer("num_shards", 4, "Shards per split (at most one per example).")
flags.DEFINE_float("resize_factor", None, builder.RESIZE_FACTOR_HELP)
flags.DEFINE_string("output_dir", None, "Where to write the shards.")
for _f in ("image_folder", "label_folder", "num_classes", "output_dir"):
    flags.mark_flag_as_required(_f)



def _build():
    lists = None
    if FLAGS.list_folder:
        files = sorted(glob.glob(os.path.join(FLAGS.list_folder, "*.txt")))
        if not files:
            raise DataError(f"no list files match {os.path.join(FLAGS.list_folder, '*.txt')}")
        lists = {os.path.splitext(os.path.basename(f))[0]: f for f in files}
    sizes = builder.build_custom(FLAGS.image_folder, FLAGS.label_folder, FLAGS.output_dir,
                                 num_classes=FLAGS.num_classes, ignore_label=FLAGS.ignore_label,
                                 list_files=lists, split=FLAGS.split, num_shards=FLAGS.num_shards,
                                 name=FLAGS.name, class_names=FLAGS.class_names, log=print,
                                 resize_factor=FLAGS.resize_factor, label_suffix=FLAGS.label_suffix)
    print(f"wrote {sizes} to {FLAGS.output_dir}")


if __name__ == "__main__":
    script.run(_build)
