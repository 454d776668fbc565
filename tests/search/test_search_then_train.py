"""The searched-architecture path end to end: search.py, then train.py and eval.py on its
architecture.json with default model flags (heads derived from the path, decoder on)."""

import json

import pytest
from absl import flags
from absl.testing import flagsaver

import search
from nas_deeplab import architecture
from nas_deeplab.model import end_points
from test_eval_cli import run_eval
from test_train_cli import run_train


def _structure(logdir):
    return json.loads((logdir / "checkpoint_meta.json").read_text())["structure"]


def test_search_then_train_and_eval_with_default_flags(tmp_path):
    from nas_deeplab.data import synthetic
    data = str(tmp_path / "data")
    synthetic.build(data, num_train=4, num_val=2)
    out = tmp_path / "search"
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["search.py", f"--output_dir={out}", f"--dataset_dir={data}", "--epochs=2",
                     "--steps_per_epoch=1", "--arch_start_epoch=1", "--crop_size=33", "--batch_size=2",
                     "--filter_multiplier=2", "--num_layers=3", "--num_blocks=2", "--val_steps=1"])
        assert search.main(["search.py"]) == 0
    arch_path = str(out / "architecture.json")
    arch = architecture.Architecture.load(arch_path)
    stride = end_points.output_stride(arch.backbone)
    logdir = tmp_path / "train"
    rc, text = run_train([f"--architecture={arch_path}", f"--dataset_dir={data}", f"--train_logdir={logdir}",
                          "--training_number_of_steps=2", "--train_batch_size=2", "--train_crop_size=33,33",
                          "--strategy=one_device"])
    assert rc == 0, text
    assert "val mIoU" in text
    structure = _structure(logdir)
    assert structure["output_stride"] == stride
    assert structure["atrous_rates"] == list(end_points.default_atrous_rates(stride))
    assert structure["decoder_output_stride"] == end_points.default_decoder_output_stride(arch.backbone)
    rc, text = run_eval([f"--checkpoint_path={logdir}", f"--dataset_dir={data}"])
    assert rc == 0, text
    assert "mIoU" in text

    # Export names the searched architecture and where it came from, and serves labels of the input size.
    import numpy as np
    import tensorflow as tf
    from nas_deeplab.export import exporter
    result = exporter.run_export(exporter.ExportConfig(str(tmp_path / "exported"), checkpoint_path=str(logdir)))
    described = exporter.describe(result)
    assert f"architecture searched (F=2, path {list(arch.backbone)}) from " in described, described
    assert str(logdir / "architecture.json") in described, described
    served = tf.saved_model.load(result.path).signatures["predict_labels"]
    labels = served(ImageTensor=tf.constant(np.full((1, 37, 41, 3), 90, np.uint8)))["SemanticPredictions"]
    assert labels.shape == (1, 37, 41)


@pytest.mark.parametrize("backbone,stride,decoder", [((0, 1, 2), 16, 4), ((0, 0, 0), 4, None)])
def test_train_with_default_flags_builds_the_path_heads(tmp_path, backbone, stride, decoder):
    from nas_deeplab.data import synthetic
    data = str(tmp_path / "data")
    synthetic.build(data, num_train=2, num_val=1)
    arch_path = str(tmp_path / "arch.json")
    architecture.Architecture(("separable_3x3_2", "skip_connect"), (1, 0), backbone, 2,
                              name="searched").save(arch_path)
    logdir = tmp_path / "train"
    rc, text = run_train([f"--architecture={arch_path}", f"--dataset_dir={data}", f"--train_logdir={logdir}",
                          "--training_number_of_steps=1", "--train_batch_size=2", "--train_crop_size=33,33",
                          "--strategy=one_device", "--eval_after_training=false"])
    assert rc == 0, text
    structure = _structure(logdir)
    assert (structure["output_stride"], structure["decoder_output_stride"]) == (stride, decoder)
    assert structure["atrous_rates"] == [96 // stride * k for k in (1, 2, 3)]
    rc, _ = run_train([f"--architecture={arch_path}", f"--dataset_dir={data}", f"--train_logdir={tmp_path / 'x'}",
                       "--output_stride=8"])
    assert rc == 2
