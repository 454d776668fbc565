"""The search's input (paper Sec. 5.1): scale flags reach the pipeline, are validated and recorded.

A tiny data set is built with `--resize_factor`-style downsampling (258x258 sources -> 129x129 records),
then `search.py` flags go through `config_from_flags` into the `Searcher`, whose trainA batches are
compared with the records read back independently: with scale 1.0 every crop is a plain window of a
record (possibly flipped); with scale 0.5 fixed the record is resized to int(129 * 0.5) = 64 (DeepLab's
`randomly_scale`, align_corners) and padded to the 65 crop, checked against a numpy resize.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import app, flags
from absl.testing import flagsaver
from PIL import Image

import search
from nas_deeplab.data import builder
from nas_deeplab.data.tfrecord import decode_example, list_split_files
from nas_deeplab.search import searcher

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CROP = 65


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """(dataset folder, [(image uint8 [129,129,3], label [129,129])]) of a 4-image set at half size."""
    root = tmp_path_factory.mktemp("half")
    rs = np.random.RandomState(0)
    os.makedirs(root / "img")
    os.makedirs(root / "lab")
    for i in range(4):
        Image.fromarray(rs.randint(0, 256, (258, 258, 3)).astype(np.uint8)).save(root / "img" / f"s{i}.png")
        Image.fromarray(rs.randint(0, 3, (258, 258)).astype(np.uint8)).save(root / "lab" / f"s{i}.png")
    out = root / "records"
    builder.build_custom(str(root / "img"), str(root / "lab"), str(out), num_classes=3, num_shards=1,
                         resize_factor=0.5)
    recs = []
    for p in list_split_files(str(out), "train"):
        for r in tf.data.TFRecordDataset(p):
            d = decode_example(r)
            recs.append((d["image"].numpy(), d["label"].numpy()[..., 0]))
    assert all(im.shape == (129, 129, 3) for im, _ in recs)
    return str(out), recs


def _config(argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["search.py"] + argv)
    return search.config_from_flags()


def _small(out, data_dir, *extra):
    return [f"--output_dir={out}", f"--dataset={data_dir}/descriptor.json", f"--dataset_dir={data_dir}",
            f"--crop_size={CROP}", "--batch_size=2", "--filter_multiplier=1", "--num_layers=1",
            "--num_blocks=1", "--strategy=one_device", *extra]


def _train_a_batches(config, n=2):
    s = searcher.Searcher(config, log=lambda *a: None)
    it = s._dataset("trainA", 0)
    batches = [next(it) for _ in range(n)]
    return [(b["image"].numpy(), b["label"].numpy()[..., 0]) for b in batches]


def _find_window(crop, recs):
    """(record, y, x, flipped) of the window of a record equal to `crop` exactly, or None."""
    for flipped in (False, True):
        c = crop[:, ::-1] if flipped else crop
        for k, (im, _) in enumerate(recs):
            ys, xs = np.nonzero((im[: 129 - CROP + 1, : 129 - CROP + 1] == c[0, 0]).all(-1))
            for y, x in zip(ys, xs):
                if np.array_equal(im[y:y + CROP, x:x + CROP].astype(np.float32), c):
                    return k, y, x, flipped
    return None


def test_paper_preset_has_no_random_scale_and_crops_are_plain_windows(tmp_path, records):
    data_dir, recs = records
    with flagsaver.flagsaver():
        cfg = _config(["--preset=paper"] + _small(tmp_path / "s", data_dir))
    assert (cfg.min_scale_factor, cfg.max_scale_factor) == (1.0, 1.0)
    assert (cfg.epochs, cfg.arch_start_epoch) == (40, 20)  # the rest of the preset still applies
    seen = set()
    for images, labels in _train_a_batches(cfg):
        for image, label in zip(images, labels):
            hit = _find_window(image, recs)
            assert hit is not None, "crop is not a plain window of any record"
            k, y, x, flipped = hit
            want = recs[k][1][y:y + CROP, x:x + CROP]
            np.testing.assert_array_equal(label, want[:, ::-1] if flipped else want)
            seen.add(k)
    assert len(seen) <= 2  # trainA: half of the 4 records


def _align_corners_bilinear(image, n):
    """DeepLab's resize (align_corners=True) of a square image to n x n, in numpy, float64."""
    N = image.shape[0]
    src = np.arange(n) * (N - 1) / (n - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, N - 1)
    f = src - i0
    x = image.astype(np.float64)
    rows = x[i0] * (1 - f)[:, None, None] + x[i1] * f[:, None, None]
    return rows[:, i0] * (1 - f)[None, :, None] + rows[:, i1] * f[None, :, None]


def test_fixed_scale_half_resizes_before_the_crop(tmp_path, records):
    data_dir, recs = records
    with flagsaver.flagsaver():
        cfg = _config(_small(tmp_path / "s", data_dir, "--min_scale_factor=0.5", "--max_scale_factor=0.5"))
    assert (cfg.min_scale_factor, cfg.max_scale_factor, cfg.scale_factor_step_size) == (0.5, 0.5, 0.25)
    small = [(_align_corners_bilinear(im, 64), lb[np.floor(np.arange(64) * 128 / 63 + 0.5).astype(int)]
              [:, np.floor(np.arange(64) * 128 / 63 + 0.5).astype(int)]) for im, lb in recs]
    for images, labels in _train_a_batches(cfg):
        for image, label in zip(images, labels):
            # 129 * 0.5 -> 64 rows and columns, padded (127.5 / ignore 255) to 65 at the bottom and
            # right; the only crop offset is (0, 0). A flip moves the pad column to the left.
            flipped = not (image[:, 64] == 127.5).all()
            if flipped:
                image, label = image[:, ::-1], label[:, ::-1]
            assert (image[64] == 127.5).all() and (image[:, 64] == 127.5).all()
            assert (label[64] == 255).all() and (label[:, 64] == 255).all()
            errs = [np.abs(image[:64, :64] - ref).max() for ref, _ in small]
            k = int(np.argmin(errs))
            assert errs[k] < 1e-3, errs
            np.testing.assert_array_equal(label[:64, :64], small[k][1])


@pytest.mark.parametrize("argv, msg", [
    (["--min_scale_factor=0"], r"--min_scale_factor must be > 0, got 0.0"),
    (["--min_scale_factor=1.5", "--max_scale_factor=1.25"],
     r"--max_scale_factor=1.25 must be >= --min_scale_factor=1.5"),
    (["--scale_factor_step_size=-0.25"], r"--scale_factor_step_size must be >= 0"),
])
def test_bad_scale_flags_are_refused_with_exit_2(tmp_path, argv, msg, capsys):
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["search.py", f"--output_dir={tmp_path / 's'}"] + argv)
        assert search.main(["search.py"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("search.py: error:") and re.search(msg, err), err
    assert not os.path.exists(tmp_path / "s")


def test_bad_scale_flag_cli_exit_status(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "search.py"), f"--output_dir={tmp_path / 's'}",
                        "--max_scale_factor=-1"], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == ("search.py: error: --max_scale_factor=-1.0 must be >= "
                                                 "--min_scale_factor=1.0")


def test_scale_is_recorded_and_a_resume_with_another_scale_is_refused(tmp_path, records):
    data_dir, _ = records
    out = tmp_path / "s"
    with flagsaver.flagsaver():
        cfg = _config(_small(out, data_dir, "--min_scale_factor=0.75", "--max_scale_factor=1.25",
                             "--scale_factor_step_size=0"))
    first = searcher.Searcher(cfg, log=lambda *a: None)
    first.manager.save(checkpoint_number=0)  # as if the search had run and been interrupted
    first._save_config()
    saved = json.loads((out / "search_config.json").read_text())
    assert (saved["min_scale_factor"], saved["max_scale_factor"], saved["scale_factor_step_size"]) == \
        (0.75, 1.25, 0.0)
    with flagsaver.flagsaver():
        other = _config(_small(out, data_dir, "--min_scale_factor=0.75", "--max_scale_factor=2.0",
                               "--scale_factor_step_size=0"))
    with pytest.raises(searcher.SearchError, match=r"--max_scale_factor=1.25 \(now 2.0\)"):
        searcher.Searcher(other, log=lambda *a: None)._save_config()
