"""ScheduledDropPath: the official schedule, per-example masks, independent replicas."""

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab.training.distribute import make_strategy

from nas_deeplab.model.drop_path import ScheduledDropPath, StepRef, drop_path_keep_prob


def official_keep(p, cell_num, total_cells, step, total_steps):
    """nas_cell.py _apply_drop_path, written out."""
    keep = 1 - (cell_num + 1) / float(total_cells) * (1 - p)
    ratio = min(1.0, step / total_steps)
    return 1 - ratio * (1 - keep)


@pytest.mark.parametrize("p,cell,step", [(0.7, 0, 0), (0.7, 0, 250), (0.7, 11, 250),
                                         (0.7, 5, 1000), (0.9, 11, 5000), (0.5, 3, 999)])
def test_keep_prob_matches_official_formula(p, cell, step):
    got = drop_path_keep_prob(p, cell, 12, step, 1000)
    assert got == pytest.approx(official_keep(p, cell, 12, step, 1000), abs=1e-12)
    tensor = drop_path_keep_prob(p, cell, 12, tf.constant(step, tf.int64), 1000)
    assert float(tensor) == pytest.approx(got, abs=1e-6)


def test_keep_prob_known_values():
    assert drop_path_keep_prob(0.7, 11, 12, 0, 100) == 1.0            # no drop at step 0
    assert drop_path_keep_prob(0.7, 11, 12, 100, 100) == pytest.approx(0.7)   # last cell, end
    assert drop_path_keep_prob(0.7, 5, 12, 50, 100) == pytest.approx(1 - 0.5 * 0.5 * 0.3)
    assert drop_path_keep_prob(0.7, 5, 12, 500, 100) == pytest.approx(1 - 0.5 * 0.3)  # ratio caps


def _layer(p=0.5, cell=11, step=1000, total=1000, layer_id=3):
    ref = StepRef(tf.Variable(step, dtype=tf.int64, trainable=False))
    return ScheduledDropPath(p, cell, 12, total, ref, layer_id=layer_id), ref


def test_per_example_masks_scale_by_inverse_keep():
    layer, _ = _layer(p=0.5)
    x = tf.ones((256, 3, 3, 2))
    y = layer(x, training=True).numpy()
    per_example = y.reshape(256, -1)
    # Each example is all-dropped or all-kept (mask shape [B,1,1,1]) and kept ones are x / keep.
    assert np.all(per_example.min(axis=1) == per_example.max(axis=1))
    assert set(np.unique(per_example)) <= {0.0, 2.0}
    kept = float(np.mean(per_example[:, 0] > 0))
    assert 0.35 < kept < 0.65


def test_identity_when_not_training_or_keep_one():
    layer, _ = _layer(p=0.5)
    x = tf.random.uniform((4, 3, 3, 2))
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    layer1, _ = _layer(p=1.0)
    np.testing.assert_array_equal(layer1(x, training=True).numpy(), x.numpy())
    layer0, _ = _layer(p=0.5, step=0)   # ramp: keep = 1 at step 0
    np.testing.assert_array_equal(layer0(x, training=True).numpy(), x.numpy())


def test_masks_change_with_step_and_layer():
    a, ref = _layer(p=0.5, layer_id=1)
    b, _ = _layer(p=0.5, layer_id=2)
    x = tf.ones((64, 1, 1, 1))
    m1 = a(x, training=True).numpy().ravel()
    assert not np.array_equal(m1, b(x, training=True).numpy().ravel())
    ref.variable.assign_add(1)
    assert not np.array_equal(m1, a(x, training=True).numpy().ravel())


def test_masks_differ_across_replicas():
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs 2 logical CPU devices (tests/conftest.py configures them)")
    strategy = make_strategy("mirrored")  # one per process: see distribute.make_strategy
    with strategy.scope():
        layer, _ = _layer(p=0.5)

    @tf.function
    def run():
        return strategy.run(lambda: layer(tf.ones((64, 1, 1, 1)), training=True))

    per_replica = strategy.experimental_local_results(run())
    masks = [r.numpy().ravel() for r in per_replica]
    assert len(masks) == 2
    assert not np.array_equal(masks[0], masks[1])
    for m in masks:
        assert set(np.unique(m)) <= {0.0, 2.0} and 0 < m.sum() < 2 * 64
