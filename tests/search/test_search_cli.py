"""`search.py` end to end on the built-in data set (tiny settings), and flag errors."""

import json
import os

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

import search
from nas_deeplab import architecture


def _run(argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["search.py"] + argv)
    return search.main(["search.py"])


def _event_tags(folder):
    import tensorflow as tf
    tags = set()
    for name in os.listdir(folder):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            tags |= {v.tag for v in event.summary.value}
    return tags


def test_tiny_search_writes_a_buildable_architecture(tmp_path, capsys):
    out = tmp_path / "s"
    with flagsaver.flagsaver():
        rc = _run([f"--output_dir={out}", "--epochs=2", "--steps_per_epoch=1", "--arch_start_epoch=1",
                   "--crop_size=33", "--batch_size=2", "--filter_multiplier=2", "--num_layers=2",
                   "--num_blocks=5", "--val_steps=1", "--log_every=1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "architecture.json" in text and "backbone" in text and "weight step: first step" in text
    # the three steps were compiled up front and their Python graphs let go (training/compiled_step.py)
    assert "traced the weight, architecture and validation steps in" in text
    assert "releasing their Python graphs freed" in text
    arch = architecture.Architecture.load(str(out / "architecture.json"))
    assert arch.num_layers == 2 and arch.num_blocks == 5 and arch.filter_multiplier == 2
    assert "zero" not in arch.operations
    for name in ("alpha.npy", "beta.npy", "cell.png", "network.png", "search_config.json"):
        assert (out / name).stat().st_size > 0, name
    assert np.load(out / "alpha.npy").shape == (20, 8)
    assert np.load(out / "beta.npy").shape == (2, 4, 3)
    assert any(f.startswith("events") for f in os.listdir(out / "tensorboard"))
    # One architecture step cannot move alpha/beta: warned at the start, reported as the prior.
    assert "warning: only 1 architecture steps" in text and "warning: an epoch is only 1 step" in text
    summary = json.loads((out / "architecture.json").read_text())["search_summary"]
    assert summary["verdict"] == "prior" and summary["arch_steps"] == 1
    alpha, alpha0 = np.load(out / "alpha.npy"), np.load(out / "alpha_start.npy")
    assert summary["alpha_moved"] == pytest.approx(np.abs(alpha - alpha0).max())
    assert 0 < summary["alpha_moved"] < 0.1          # one Adam step of lr 3e-3 moved it, a little
    assert summary["path"]["path"] == list(arch.backbone)
    assert "how decided: prior -- this is the initialisation, not a search result" in text
    tags = _event_tags(out / "tensorboard")
    assert {"arch/alpha_entropy", "arch/beta_entropy", "arch/path_changes", "arch/path"} <= tags, tags
    assert os.path.isdir(out / "checkpoints")
    try:
        from nas_deeplab.model import deeplab
    except ImportError:  # the model package is optional for the search
        pytest.skip("nas_deeplab.model not available")
    model = deeplab.build_deeplab(arch, deeplab.ModelOptions(num_classes=6))  # heads follow the path
    assert model.options.output_stride == 4 * 2 ** arch.backbone[-1]
    assert (model.decoder is not None) == (model.options.output_stride > 4)
    assert model.count_params() > 0


@pytest.mark.parametrize("argv,needle", [
    (["--crop_size=7"], "--crop_size"),
    (["--batch_size=0"], "--batch_size"),
    (["--recompute_levels=0,4"], r"--recompute_levels: [4] not in 0..3"),
    (["--dataset=cityscape"], "unknown dataset 'cityscape'"),
    (["--dataset=cityscapes"], "--dataset=cityscapes needs --dataset_dir"),
    (["--dataset_dir=/nonexistent/records"], "--dataset_dir=/nonexistent/records does not exist"),
])
def test_bad_flags_and_data_give_one_line_and_exit_2(tmp_path, argv, needle, capsys):
    with flagsaver.flagsaver():
        assert _run([f"--output_dir={tmp_path}"] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("search.py: error:") and needle in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not os.listdir(tmp_path)  # nothing written for refused flags or data


def test_bad_thread_flag_is_refused_by_the_parser(tmp_path):
    with flagsaver.flagsaver():
        with pytest.raises(flags.IllegalFlagValueError, match="inter_op_threads"):
            flags.FLAGS(["search.py", "--inter_op_threads=-1"])
