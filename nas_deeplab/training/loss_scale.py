"""Dynamic loss scaling for float16 steps written by hand (the search's two steps).

float16 keeps 10 mantissa bits but only 5 exponent bits: gradients below ~6e-8 flush to zero. The
loss is multiplied by a large scale before differentiation and the gradients divided by it after;
when a scaled gradient overflows (inf/NaN), the step is skipped and the scale halved, and after
`growth_interval` finite steps in a row it is doubled. The constants are Keras'
LossScaleOptimizer's (initial 2**15, growth every 2000 steps, factor 2), which the trainer uses; the
search cannot use that wrapper because its steps refuse non-finite updates themselves
(`guarded_update`) on every replica at once.

The scale is not checkpointed: a resumed float16 search starts again from 2**15 (at worst a few
skipped steps), and checkpoints stay the same in every precision.
"""

from __future__ import annotations

import tensorflow as tf

INITIAL_SCALE = 2.0 ** 15
GROWTH_INTERVAL = 2000
FACTOR = 2.0
MIN_SCALE = 1.0


class DynamicLossScale:
    """Create inside `strategy.scope()`; `update` runs in cross-replica context (the step function
    outside `strategy.run`), with a decision that is the same on every replica."""

    def __init__(self, initial_scale: float = INITIAL_SCALE, growth_interval: int = GROWTH_INTERVAL,
                 name: str = "loss_scale"):
        sync = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_WRITE,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.scale = tf.Variable(float(initial_scale), dtype=tf.float32, name=name, **sync)
        self.good_steps = tf.Variable(0, dtype=tf.int64, name=f"{name}_good_steps", **sync)
        self.growth_interval = int(growth_interval)

    def scale_loss(self, loss):
        return loss * tf.cast(self.scale, loss.dtype)

    def unscale(self, grads):
        inv = 1.0 / self.scale
        return [g * tf.cast(inv, g.dtype) for g in grads]

    def update(self, all_finite):
        """After a step: halve on overflow (the step was skipped), double after growth_interval
        finite steps in a row."""
        def overflow():
            self.scale.assign(tf.maximum(self.scale / FACTOR, MIN_SCALE))
            self.good_steps.assign(0)

        def finite():
            grow = self.good_steps + 1 >= self.growth_interval
            self.scale.assign(tf.where(grow, self.scale * FACTOR, self.scale))
            self.good_steps.assign(tf.where(grow, tf.constant(0, tf.int64), self.good_steps + 1))

        tf.cond(all_finite, finite, overflow)
