"""The trainer's global step drives ScheduledDropPath: the keep probability each op uses at training
step k is the official one at global_step = k - 1 (the step before the increment, as in the official
train op).

Official (`nas_cell.py` `_apply_drop_path`, spec official-hnasnet.md 1.5), written out here:
    keep = 1 - (cell_num + 1) / total_num_cells * (1 - p)
    keep = 1 - min(1, global_step / total_training_steps) * (1 - keep)
with total_num_cells = len(backbone) and total_training_steps = --training_number_of_steps.
"""

import numpy as np
import pytest
import tensorflow as tf

from training_fixtures import tiny_architecture, tiny_train_config
from nas_deeplab.model import drop_path
from nas_deeplab.training.trainer import train

P, STEPS = 0.6, 5


def official_keep(p, cell_num, total_cells, global_step, total_steps):
    keep = 1.0 - (cell_num + 1) / total_cells * (1.0 - p)
    return 1.0 - min(1.0, global_step / total_steps) * (1.0 - keep)


def _batches(batch_size, seed, num_shards, shard_index):
    rng = np.random.RandomState(0)
    image = rng.uniform(0, 255, (batch_size, 33, 33, 3)).astype(np.float32)
    label = rng.randint(0, 3, (batch_size, 33, 33, 1)).astype(np.int32)
    return tf.data.Dataset.from_tensors({"image": image, "label": label}).repeat()


def test_keep_probability_follows_the_global_step(tmp_path, tiny_model_config, monkeypatch):
    used = []  # (cell_num, total_cells, global step read, keep used) for every drop-path call
    original = drop_path.drop_path_keep_prob

    def spy(p, cell_num, total_cells, step, total_steps):
        keep = original(p, cell_num, total_cells, step, total_steps)
        assert p == pytest.approx(P) and total_steps == STEPS

        def record(k, s):
            used.append((cell_num, total_cells, int(s), float(k)))
            return k
        out = tf.numpy_function(record, [keep, tf.cast(step, tf.int64)], tf.float32, stateful=True)
        out.set_shape(keep.shape)
        return out  # the layer uses exactly the recorded value

    monkeypatch.setattr(drop_path, "drop_path_keep_prob", spy)
    cfg = tiny_train_config(tmp_path / "run", tiny_model_config, None, drop_path_keep_prob=P,
                            training_number_of_steps=STEPS, save_interval_steps=STEPS)
    assert train(cfg, dataset_fn=_batches).step == STEPS

    num_cells = len(tiny_architecture().backbone)
    ops_with_drop_path = sum(op != "skip_connect" for op in tiny_architecture().operations)
    assert {c for c, *_ in used} == set(range(num_cells))
    assert {t for _, t, *_ in used} == {num_cells}
    steps = sorted({s for _, _, s, _ in used})
    assert steps == list(range(STEPS))  # one value per training step: 0, 1, ..., STEPS - 1
    for global_step in steps:
        at_step = [(c, k) for c, _, s, k in used if s == global_step]
        assert len(at_step) == num_cells * ops_with_drop_path
        for cell_num, keep in at_step:
            assert keep == pytest.approx(official_keep(P, cell_num, num_cells, global_step, STEPS),
                                         abs=1e-6)
    # The schedule really moved: from 1 at step 0 to well below 1 in the last cell at the end.
    assert max(k for c, _, s, k in used if s == 0) == 1.0
    assert min(k for c, _, s, k in used if s == STEPS - 1) < 0.75
