"""The build scripts in datasets/ as a user runs them: they write shards, or fail in one clear line."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_script(name, *args):
    """datasets/<name> in a subprocess, as a user runs it (TF quiet)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, os.path.join(ROOT, "datasets", name), *args],
                          capture_output=True, text=True, timeout=300, env=env, check=False)


def test_synthetic_script_writes_official_shards(tmp_path):
    out = tmp_path / "syn"
    p = run_script("build_synthetic_data.py", f"--output_dir={out}", "--num_train=4", "--num_val=2",
                "--num_shards=2")
    assert p.returncode == 0, p.stderr[-2000:]
    assert sorted(os.path.basename(f) for f in glob.glob(str(out / "*.tfrecord"))) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
        "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]


@pytest.mark.parametrize("name,flag", [("build_cityscapes_data.py", "--cityscapes_root"),
                                       ("build_voc2012_data.py", "--voc_root"),
                                       ("build_ade20k_data.py", "--ade_root")])
def test_missing_source_folder_is_one_clear_line(tmp_path, name, flag):
    missing = tmp_path / "nowhere"
    p = run_script(name, f"{flag}={missing}", f"--output_dir={tmp_path / 'out'}")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "error:" in p.stderr and str(missing) in p.stderr, p.stderr[-2000:]
    assert not glob.glob(str(tmp_path / "out" / "*.tfrecord"))
