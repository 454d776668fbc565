"""`search.py` end to end on the built-in data set (tiny settings), and flag errors."""

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


def test_tiny_search_writes_a_buildable_architecture(tmp_path, capsys):
    out = tmp_path / "s"
    with flagsaver.flagsaver():
        rc = _run([f"--output_dir={out}", "--epochs=2", "--steps_per_epoch=1", "--arch_start_epoch=1",
                   "--crop_size=33", "--batch_size=2", "--filter_multiplier=2", "--num_layers=2",
                   "--num_blocks=5", "--val_steps=1", "--log_every=1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "architecture.json" in text and "backbone" in text and "weight step: trace" in text
    arch = architecture.Architecture.load(str(out / "architecture.json"))
    assert arch.num_layers == 2 and arch.num_blocks == 5 and arch.filter_multiplier == 2
    assert "zero" not in arch.operations
    for name in ("alpha.npy", "beta.npy", "cell.png", "network.png", "search_config.json"):
        assert (out / name).stat().st_size > 0, name
    assert np.load(out / "alpha.npy").shape == (20, 8)
    assert np.load(out / "beta.npy").shape == (2, 4, 3)
    assert any(f.startswith("events") for f in os.listdir(out / "tensorboard"))
    assert os.path.isdir(out / "checkpoints")
    try:
        from nas_deeplab.model import deeplab
    except ImportError:  # the model package is optional for the search
        pytest.skip("nas_deeplab.model not available")
    model = deeplab.build_deeplab(arch, deeplab.ModelOptions(num_classes=6, decoder_output_stride=None))
    assert model.count_params() > 0


def test_bad_flags_give_clear_errors(tmp_path):
    from absl import app
    with flagsaver.flagsaver():
        with pytest.raises(app.UsageError, match="--crop_size"):
            _run([f"--output_dir={tmp_path}", "--crop_size=7"])
    with flagsaver.flagsaver():
        with pytest.raises(app.UsageError, match="--batch_size"):
            _run([f"--output_dir={tmp_path}", "--batch_size=0"])
    with flagsaver.flagsaver():
        with pytest.raises(app.UsageError, match=r"--recompute_levels: \[4\] not in 0..3"):
            _run([f"--output_dir={tmp_path}", "--recompute_levels=0,4"])
    with flagsaver.flagsaver():
        with pytest.raises(flags.IllegalFlagValueError, match="inter_op_threads"):
            flags.FLAGS(["search.py", "--inter_op_threads=-1"])
    assert not os.listdir(tmp_path)  # nothing written for refused flags
