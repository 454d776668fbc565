"""An optimizer step applied on every replica or on none: the non-finite guard of training and search.

A non-finite loss or gradient on ANY replica refuses the whole step. The flags are all-reduced, so
every replica takes the same decision, and `apply_gradients` is then not run at all. Running it
with zeroed gradients would not be a refusal: SGD momentum and Adam would still move the variables
through their slots, and the optimizer's iteration count (hence its learning-rate schedule) would
advance.
"""

from __future__ import annotations

import tensorflow as tf


def nonfinite_flags(values):
    """[len(values)] float32: for each tensor, on how many replicas it holds a non-finite value.

    Summed over the replicas (the same vector on every replica); call inside `strategy.run` or with
    no strategy."""
    bad = tf.cast(tf.stack([tf.logical_not(tf.reduce_all(tf.math.is_finite(v))) for v in values]),
                  tf.float32)
    ctx = tf.distribute.get_replica_context()
    if ctx is not None:
        bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, bad)
    return bad


def apply_if(ok, grads, variables, optimizer):
    """optimizer.apply_gradients only when `ok` (a bool that is the same on every replica).

    A cond around apply_gradients must sit in cross-replica context when the strategy uses
    merge_call (Keras' LossScaleOptimizer does the same)."""
    @tf.autograph.experimental.do_not_convert
    def apply(g):
        optimizer.apply_gradients(zip(g, variables))

    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(ok, lambda: apply(grads), lambda: None)
        return

    @tf.autograph.experimental.do_not_convert
    def cross_replica(distribution, ok, grads):
        ok0 = distribution.experimental_local_results(ok)[0]

        def do():
            distribution.extended.call_for_each_replica(apply, args=(grads,))
        tf.cond(ok0, do, lambda: None)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(ok, grads))
