import glob
import io
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab.training.distribute import make_strategy

from training_fixtures import tiny_train_config
from nas_deeplab.training import checkpointing
from nas_deeplab.training.model_config import ModelConfig
from nas_deeplab.training.trainer import NonFiniteError, TrainConfig, train


def _fixed_batches(nan_at_batch):
    """The same 4 images every step (so the loss must fall), with a NaN pixel in batch `nan_at_batch`."""
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 3, size=(4, 33, 33, 1)).astype(np.int32)
    labels[:, :5] = 255
    colour = np.where(labels == 255, 0, labels).astype(np.float32) * 80.0  # class -> brightness
    image = (np.tile(colour, (1, 1, 1, 3)) + rng.uniform(0, 40, (4, 33, 33, 3))).astype(np.float32)

    def dataset_fn(batch_size, seed, num_shards, shard_index):
        assert batch_size == 4

        def make(i):
            poison = tf.where(tf.equal(i, nan_at_batch), float("nan"), 0.0)
            image_i = tf.tensor_scatter_nd_update(tf.constant(image), [[1, 20, 20, 0]], [poison + 10.0])
            return {"image": image_i, "label": tf.constant(labels)}
        return tf.data.Dataset.range(1 << 30).map(make)
    return dataset_fn


def test_two_replicas_lower_the_loss_then_nan_guard_stops_at_the_step(tmp_path, tiny_model_config):
    """One run on 2 replicas (sync BN, global batch 4): 10 clean steps lower the loss; a NaN in the
    11th batch is refused with an error naming step 11 and the loss, and ckpt-10 stays good."""
    stream = io.StringIO()
    cfg = tiny_train_config(tmp_path / "run", tiny_model_config, None, strategy="mirrored",
                            training_number_of_steps=14, save_interval_steps=5, log_interval_steps=1,
                            base_learning_rate=0.05, deterministic=False)
    assert make_strategy("mirrored").num_replicas_in_sync == 2  # tests/conftest.py: 2 CPUs
    with pytest.raises(NonFiniteError) as err:
        train(cfg, dataset_fn=_fixed_batches(nan_at_batch=10), stream=stream)
    msg = str(err.value)
    assert "training step 11" in msg and "loss" in msg and "ckpt-10" in msg
    losses = [float(m) for m in re.findall(r"\| loss ([0-9.e+-]+)", stream.getvalue())]
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses
    reader = tf.train.load_checkpoint(str(tmp_path / "run" / "ckpt-10"))
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), name
    assert tf.train.latest_checkpoint(str(tmp_path / "run")).endswith("ckpt-10")
    assert glob.glob(str(tmp_path / "run" / "train" / "events.out.tfevents.*"))


def _tensors(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def test_resume_is_bit_exact_with_deterministic(tmp_path, trained_run, tiny_model_config, synthetic_dir):
    """6 steps straight == 3 steps, restart (new model, optimizer, input pipeline), 3 more steps."""
    straight = trained_run.train_logdir
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for f in glob.glob(os.path.join(straight, "ckpt-3.*")) + [os.path.join(straight, checkpointing.META_FILE)]:
        shutil.copy(f, resumed)
    (resumed / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\n'
                                        'all_model_checkpoint_paths: "ckpt-3"\n')
    result = train(tiny_train_config(resumed, tiny_model_config, synthetic_dir))
    assert result.resumed_from.endswith("ckpt-3") and result.step == 6
    a, b = _tensors(os.path.join(straight, "ckpt-6")), _tensors(str(resumed / "ckpt-6"))
    assert a.keys() == b.keys()
    n_model = len(tiny_model_config.build(6)[0].variables)  # every variable, BN statistics included
    assert sum(k.startswith(checkpointing.MODEL_KEY + "/") for k in a) == n_model > 50
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The run is complete: running the same command again trains nothing.
    again = train(tiny_train_config(resumed, tiny_model_config, synthetic_dir))
    assert again.step == 6 and again.losses == []


def test_checkpoint_of_another_architecture_is_refused(trained_run, tiny_arch_path, synthetic_dir):
    other = ModelConfig(architecture=tiny_arch_path, filter_multiplier=8, atrous_rates=(2,),
                        decoder_output_stride=None)
    with pytest.raises(checkpointing.CheckpointMismatchError, match="filter_multiplier: checkpoint 4 vs now 8"):
        train(tiny_train_config(trained_run.train_logdir, other, synthetic_dir, training_number_of_steps=9))


@pytest.mark.parametrize("field,value,flag", [
    ("train_batch_size", 0, "--train_batch_size"), ("train_crop_size", (9, 9), "--train_crop_size"),
    ("base_learning_rate", -1.0, "--base_learning_rate"), ("mixed_precision", "fp8", "--mixed_precision"),
    ("slow_start_step", 10, "--slow_start_step"), ("drop_path_keep_prob", 0.0, "--drop_path_keep_prob")])
def test_bad_config_rejected_naming_the_flag(field, value, flag):
    cfg = TrainConfig(training_number_of_steps=5, **{field: value})
    with pytest.raises(ValueError, match=flag):
        cfg.validate()


def test_batch_norm_decay_is_official_for_long_runs_and_shorter_for_short_ones():
    from nas_deeplab.training.trainer import effective_batch_norm_decay
    assert effective_batch_norm_decay(None, 1_500_000) == 0.9997
    assert effective_batch_norm_decay(None, 200) == pytest.approx(0.95)
    assert effective_batch_norm_decay(None, 5) == 0.9
    assert effective_batch_norm_decay(0.99, 200) == 0.99
