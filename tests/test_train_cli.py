"""train.py in-process on private FlagValues (no global flag state, no subprocess start-up)."""

import importlib.util
import io
import os

import pytest
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_cli(name):
    spec = importlib.util.spec_from_file_location(f"_{name}_cli", os.path.join(ROOT, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_cli = load_cli("train")


def run_cli(cli, argv):
    """Parse argv into fresh flags and run the CLI module in-process -> (exit status, its output)."""
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv([f"{cli.__name__}.py"] + list(argv))
    out = io.StringIO()
    return cli.run(fv, stream=out), out.getvalue()


def run_train(argv):
    return run_cli(train_cli, argv)


def test_print_summary_ends_with_exact_counts_for_s_with_regular_heads():
    rc, out = run_train(["--print_summary", "--architecture=auto_deeplab_s", "--dataset=cityscapes",
                         "--aspp_with_separable_conv=false", "--decoder_use_separable_conv=false",
                         "--summary_input_size=1025,2049", "--dataset_dir=/nonexistent"])
    assert rc == 0
    lines = out.strip().splitlines()
    assert lines[-2] == "trainable_params: 10147427"
    assert lines[-1].startswith("multiply_adds: ") and int(lines[-1].split(": ")[1]) > 300e9
    assert any("logits" in line for line in lines[:-2])  # the layer table came first


@pytest.mark.parametrize("argv,needle", [
    (["--train_crop_size=abc"], "--train_crop_size"),
    (["--train_crop_size=65,65,3"], "--train_crop_size"),
    (["--atrous_rates=6,x"], "--atrous_rates"),
    (["--decoder_output_stride=16"], "--decoder_output_stride"),
    (["--output_stride=16"], "--output_stride"),
    (["--base_learning_rate=-0.1"], "--base_learning_rate"),
    (["--architecture=no_such_preset"], "no_such_preset"),
    (["--architecture=/nonexistent/architecture.json"], "/nonexistent/architecture.json"),
    (["--dataset=cityscapes"], "--dataset_dir"),
    (["--training_number_of_steps=0"], "--training_number_of_steps"),
])
def test_bad_flags_rejected_naming_the_flag(argv, needle, capsys):
    rc, _ = run_train(argv + ["--train_logdir=/tmp/unused"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error:") and needle in err, err


def test_enum_flags_rejected_by_the_parser():
    fv = flags.FlagValues()
    train_cli.define_flags(fv)
    with pytest.raises(flags.IllegalFlagValueError, match="strategy"):
        fv(["train.py", "--strategy=bogus"])


def tiny_run_flags(tmp_path):
    """A 4-example synthetic dataset and a one-cell architecture under tmp_path -> (model flags,
    flags for a 2-step one-device training run)."""
    from nas_deeplab import architecture as arch_lib
    from nas_deeplab.data import synthetic
    data = str(tmp_path / "data")
    synthetic.build(data, num_train=4, num_val=2)
    arch = str(tmp_path / "tiny.json")
    arch_lib.Architecture(("separable_3x3_2", "atrous_3x3", "skip_connect", "avg_pool_3x3"), (1, 0, 2, 0),
                          (0, 1), 4, name="tiny").save(arch)
    model = [f"--architecture={arch}", "--atrous_rates=2", "--decoder_output_stride=none",
             f"--dataset_dir={data}"]
    return model, ["--training_number_of_steps=2", "--train_batch_size=2", "--train_crop_size=33,33",
                   "--strategy=one_device"]


def test_mixed_bfloat16_trains_on_cpu_and_float16_is_refused_up_front(tmp_path, capsys):
    import tensorflow as tf
    model, steps = tiny_run_flags(tmp_path)
    argv = model + steps
    rc, out = run_train(argv + [f"--train_logdir={tmp_path / 'bf16'}", "--mixed_precision=mixed_bfloat16"])
    assert rc == 0, out
    assert "val mIoU" in out
    if tf.config.list_logical_devices("GPU"):
        return  # float16 is supported there
    rc, _ = run_train(argv + [f"--train_logdir={tmp_path / 'f16'}", "--mixed_precision=mixed_float16"])
    assert rc == 2
    assert "--mixed_precision=mixed_float16 needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "f16").exists()  # refused before anything was written
