r"""Convert PASCAL VOC 2012 (and the SBD train_aug set) into official-format TFRecords (4 shards).

    python datasets/build_voc2012_data.py --voc_root=VOCdevkit/VOC2012 --output_dir=voc/tfrecord \
        [--train_aug_list=train_aug.txt --aug_label_folder=VOCdevkit/VOC2012/SegmentationClassAug]

Colour-map PNGs (SegmentationClass) are turned into class ids (palette indices, or RGB colours
through the VOC colour map; the border colour becomes 255).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from nas_deeplab.data import builder, script, voc  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("voc_root", None, "The VOCdevkit/VOC2012 folder.")
flags.DEFINE_string("output_dir", None, "Where to write the shards.")
flags.DEFINE_list("splits", ["train", "val", "trainval"], "Lists in ImageSets/Segmentation to convert.")
flags.DEFINE_string("train_aug_list", None, "Optional train_aug.txt (10582 names) for split train_aug.")
flags.DEFINE_string("aug_label_folder", None,
                    "SBD-augmented label PNGs (default <voc_root>/SegmentationClassAug).")
flags.DEFINE_integer("num_shards", voc.NUM_SHARDS, "Shards per split (official: 4).")
flags.DEFINE_float("resize_factor", None, builder.RESIZE_FACTOR_HELP)
flags.mark_flag_as_required("voc_root")
flags.mark_flag_as_required("output_dir")



def _build():
    sizes = voc.build(FLAGS.voc_root, FLAGS.output_dir, FLAGS.splits, FLAGS.train_aug_list,
                      FLAGS.aug_label_folder, FLAGS.num_shards, log=print,
                      resize_factor=FLAGS.resize_factor)
    print(f"wrote {sizes} to {FLAGS.output_dir}")


if __name__ == "__main__":
    script.run(_build)
