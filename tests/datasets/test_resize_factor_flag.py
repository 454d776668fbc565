"""`--resize_factor` as a user runs it: half-resolution Cityscapes shards, or one clear line."""

import glob
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from nas_deeplab.data.tfrecord import decode_example
from test_build_scripts import run_script



def _tree(root):
    """One Cityscapes train image (16x32, the 1:2 shape of 1024x2048), a trainId label of two halves."""
    name = "aachen_000000_000019"
    img = np.random.RandomState(0).randint(0, 256, (16, 32, 3)).astype(np.uint8)
    lab = np.zeros((16, 32), np.uint8)
    lab[:, 16:] = 18
    for sub, arr in ((f"leftImg8bit/train/aachen/{name}_leftImg8bit.png", img),
                     (f"gtFine/train/aachen/{name}_gtFine_labelTrainIds.png", lab)):
        os.makedirs(os.path.dirname(os.path.join(root, sub)), exist_ok=True)
        Image.fromarray(arr).save(os.path.join(root, sub))


def test_cityscapes_half_resolution(tmp_path):
    _tree(str(tmp_path / "cs"))
    out = tmp_path / "half"
    p = run_script("build_cityscapes_data.py", f"--cityscapes_root={tmp_path / 'cs'}", f"--output_dir={out}",
                "--splits=train", "--num_shards=1", "--resize_factor=0.5")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resized by 0.5" in p.stdout
    (path,) = glob.glob(str(out / "train_fine-*.tfrecord"))
    (rec,) = list(tf.data.TFRecordDataset(path))
    d = decode_example(rec)
    assert d["image"].shape == (8, 16, 3) and (int(d["height"]), int(d["width"])) == (8, 16)
    lab = d["label"].numpy()[..., 0]
    assert (lab[:, :8] == 0).all() and (lab[:, 8:] == 18).all()


def test_bad_factor_is_one_line(tmp_path, value="1.5"):  # 0, < 0, NaN: tests/data/test_build_resize.py
    _tree(str(tmp_path / "cs"))
    p = run_script("build_cityscapes_data.py", f"--cityscapes_root={tmp_path / 'cs'}",
                f"--output_dir={tmp_path / 'out'}", f"--resize_factor={value}")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"build_cityscapes_data.py: error: --resize_factor={float(value)}: must be in (0, 1]"), \
        p.stderr[-2000:]
    assert not glob.glob(str(tmp_path / "out" / "*.tfrecord"))
