"""train.py (2 steps, tiny architecture) then eval.py on its folder, both in-process."""

import json
import os
import re

import pytest

from test_train_cli import load_cli, run_cli, run_train, tiny_run_flags

eval_cli = load_cli("eval")


def run_eval(argv):
    return run_cli(eval_cli, argv)


def test_train_then_eval_with_multiscale_flip_and_vis(tmp_path):
    model_flags, train_flags = tiny_run_flags(tmp_path)
    data = str(tmp_path / "data")
    run = str(tmp_path / "run")
    rc, out = run_train(model_flags + train_flags + [f"--train_logdir={run}", "--save_interval_steps=1"])
    assert rc == 0, out
    miou = float(re.search(r"val mIoU: ([0-9.]+)", out).group(1))
    assert 0.0 <= miou <= 1.0
    assert json.load(open(os.path.join(run, "eval", "results.json")))["global_step"] == 2

    # Architecture and head options come from the checkpoint's metadata when not given.
    rc, out = run_eval([f"--checkpoint_path={run}", f"--dataset_dir={data}", f"--output_dir={tmp_path / 'ev'}",
                        "--eval_scales=0.75,1.0", "--add_flipped_images", "--vis"])
    assert rc == 0, out
    res = json.load(open(tmp_path / "ev" / "results.json"))
    assert res["num_images"] == 2 and res["eval_scales"] == [0.75, 1.0] and res["add_flipped_images"]
    assert len([f for f in os.listdir(tmp_path / "ev" / "vis") if f.endswith("_prediction.png")]) == 2
    assert re.search(r"mIoU: [0-9.]+", out)


@pytest.mark.parametrize("argv,needle", [
    ([], "--checkpoint_path"),
    (["--checkpoint_path=/nonexistent/ckpt-1"], "/nonexistent/ckpt-1"),
    (["--checkpoint_path=/tmp", "--eval_scales=0,1"], "--eval_scales"),
])
def test_bad_eval_flags_rejected(argv, needle, capsys):
    rc, _ = run_eval(argv)
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("eval.py: error:") and needle in err, err
