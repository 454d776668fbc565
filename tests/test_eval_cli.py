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


def _two_class_set(tmp_path):
    """A 2-class custom data set (3 train / 2 val images) built as a user would, descriptor beside it."""
    import numpy as np
    from PIL import Image
    from nas_deeplab.data import builder
    images, labels, lists = tmp_path / "img", tmp_path / "lab", tmp_path / "lists"
    for d in (images, labels, lists):
        d.mkdir()
    rng = np.random.RandomState(0)
    names = [f"im{i}" for i in range(5)]
    for name in names:
        img = rng.randint(0, 255, (40, 40, 3)).astype(np.uint8)
        Image.fromarray(img).save(images / f"{name}.png")
        Image.fromarray((img[..., 0] > 127).astype(np.uint8)).save(labels / f"{name}.png")
    (lists / "train.txt").write_text("\n".join(names[:3]) + "\n")
    (lists / "val.txt").write_text("\n".join(names[3:]) + "\n")
    out = tmp_path / "records"
    builder.build_custom(str(images), str(labels), str(out), num_classes=2,
                         list_files={"train": str(lists / "train.txt"), "val": str(lists / "val.txt")},
                         num_shards=1, name="two_class")
    return str(out / "descriptor.json")


def test_eval_takes_the_runs_data_set_and_refuses_one_with_other_classes(tmp_path, capsys):
    model_flags, train_flags = tiny_run_flags(tmp_path)
    descriptor = _two_class_set(tmp_path)
    model_flags = [f for f in model_flags if not f.startswith("--dataset_dir")]
    run = tmp_path / "run"
    # The descriptor sits beside its shards: no --dataset_dir needed.
    rc, out = run_train(model_flags + train_flags + [f"--dataset={descriptor}", f"--train_logdir={run}"])
    assert rc == 0, out
    trained = json.load(open(run / "eval" / "results.json"))
    assert trained["dataset"] == "two_class" and len(trained["per_class_iou"]) == 2

    rc, out = run_eval([f"--checkpoint_path={run}", "--eval_scales=0.75,1.0"])   # no --dataset
    assert rc == 0, out
    res = json.load(open(run / "eval" / "results.json"))
    assert res["dataset"] == "two_class" and res["split"] == "val" and res["num_images"] == 2
    kept = sorted(f for f in os.listdir(run / "eval") if f.startswith("results_"))
    assert kept == ["results_step2_scales0.75-1.json", "results_step2_scales1.json"], kept
    assert json.load(open(run / "eval" / "results_step2_scales1.json"))["eval_scales"] == [1.0]

    capsys.readouterr()
    rc, _ = run_eval([f"--checkpoint_path={run}", "--dataset=synthetic"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--dataset=synthetic has 6 classes" in err and "trained with 2" in err, err


def test_eval_in_bfloat16_and_float16_records_the_precision_beside_float32(tmp_path):
    """--mixed_precision builds the eval network under that Keras policy (float32 variables, so the
    same checkpoint restores); each precision keeps its own results file."""
    model_flags, train_flags = tiny_run_flags(tmp_path)
    data, run = str(tmp_path / "data"), str(tmp_path / "run")
    rc, out = run_train(model_flags + train_flags + [f"--train_logdir={run}", "--noeval_after_training"])
    assert rc == 0, out
    results = {}
    for mp in ("none", "mixed_bfloat16", "mixed_float16"):   # float16 forward passes run on CPU kernels
        rc, out = run_eval([f"--checkpoint_path={run}", f"--dataset_dir={data}", f"--output_dir={tmp_path / 'ev'}",
                            f"--mixed_precision={mp}"])
        assert rc == 0, out
        results[mp] = json.load(open(tmp_path / "ev" / "results.json"))
    assert [results[m]["precision"] for m in results] == ["float32", "bfloat16", "float16"]
    names = sorted(f for f in os.listdir(tmp_path / "ev") if f.startswith("results_step"))
    assert names == ["results_step2_scales1.json", "results_step2_scales1_bfloat16.json",
                     "results_step2_scales1_float16.json"]
    # Same images, same valid pixels; the predictions differ at most by 16-bit rounding.
    assert len({results[m]["num_valid_pixels"] for m in results}) == 1
