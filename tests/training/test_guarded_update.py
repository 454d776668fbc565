"""guarded_update: one decision for all replicas; a refused step runs no optimizer update at all.

Two replicas (tests/conftest.py), a Keras layer, SGD momentum and Adam: a NaN in one replica's input
must leave every copy of the weights, the slots and the iteration count bit-identical.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab.training import guarded_update
from nas_deeplab.training.distribute import make_strategy


def _copies(strategy, variables):
    return [c.numpy().copy() for v in variables for c in strategy.experimental_local_results(v.value)]


@pytest.mark.parametrize("make_optimizer", [lambda: keras.optimizers.SGD(0.1, momentum=0.9),
                                            lambda: keras.optimizers.Adam(0.01, beta_1=0.5)],
                         ids=["sgd_momentum", "adam"])
def test_non_finite_on_one_replica_applies_nothing_anywhere(make_optimizer):
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        layer = keras.layers.Dense(3)
        layer.build((None, 4))
        optimizer = make_optimizer()
        optimizer.build(layer.trainable_variables)

    @tf.function
    def step(x):
        def replica(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(layer(x))) / 2.0
            grads = tape.gradient(loss, layer.trainable_variables)
            bad = guarded_update.nonfinite_flags([loss] + grads)
            guarded_update.apply_if(tf.equal(tf.reduce_sum(bad), 0.0), grads, layer.trainable_variables,
                                    optimizer)
            return bad
        return strategy.experimental_local_results(strategy.run(replica, args=(x,)))

    def batch(nan_replica=None):
        values = np.ones((2, 1, 4), np.float32)
        if nan_replica is not None:
            values[nan_replica, 0, 2] = np.nan
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(values[ctx.replica_id_in_sync_group]))

    def state():
        return _copies(strategy, layer.trainable_variables) + _copies(strategy, optimizer.variables)

    before = state()
    step(batch())
    good = state()
    assert any(a.tobytes() != b.tobytes() for a, b in zip(before, good))  # a clean step applies
    for nan_replica in (1, 0):
        bad = step(batch(nan_replica))
        # the flags are all-reduced: both replicas see "1 replica bad" for the loss
        assert [float(b[0]) for b in bad] == [1.0, 1.0]
        after = state()
        assert all(a.tobytes() == b.tobytes() for a, b in zip(good, after))
    assert int(optimizer.iterations.numpy()) == 1
