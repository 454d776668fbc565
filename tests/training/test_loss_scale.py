"""Dynamic loss scaling (float16 search steps): halve on overflow, double after a run of finite steps,
the same on every replica."""

import pytest
import tensorflow as tf

from nas_deeplab.training import distribute, loss_scale


@pytest.mark.parametrize("strategy_name", ["one_device", "mirrored"])
def test_scale_halves_on_overflow_and_doubles_after_the_growth_interval(strategy_name):
    strategy = distribute.make_strategy(strategy_name)
    with strategy.scope():
        ls = loss_scale.DynamicLossScale(initial_scale=8.0, growth_interval=3)

    @tf.function
    def update(finite):
        ls.update(tf.constant(finite))

    history = []
    for finite in [True, True, False, True, True, True, True, False, False]:
        update(finite)
        history.append((float(ls.scale.numpy()), int(ls.good_steps.numpy())))
    assert history == [(8, 1), (8, 2), (4, 0), (4, 1), (4, 2), (8, 0), (8, 1), (4, 0), (2, 0)]
    # Never below 1, and every replica's copy agrees.
    for _ in range(5):
        update(False)
    assert [float(v.numpy()) for v in strategy.experimental_local_results(ls.scale)] == \
        [1.0] * strategy.num_replicas_in_sync


def test_scaled_gradients_unscale_exactly():
    ls = loss_scale.DynamicLossScale(initial_scale=2.0 ** 10)
    w = tf.Variable([0.5, -2.0])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(w))
        scaled = ls.scale_loss(loss)
    (g,) = ls.unscale(tape.gradient(scaled, [w]))
    assert g.numpy().tolist() == [1.0, -4.0]   # powers of two: exact
