"""DeepLab's 'poly' learning rate with slow start, as a serialisable Keras schedule.

Official `train_utils.get_model_learning_rate`:
    adjusted = max(step - slow_start_step, 0)
    poly     = polynomial_decay(base_lr, adjusted, decay_steps=training_steps - slow_start_step,
                                end_learning_rate=0, power=learning_power)
    lr       = slow_start_lr (or a linear burn-in to base_lr)  if step < slow_start_step  else poly
Keras' own PolynomialDecay has other defaults (end 1e-4, power 1.0) and no slow start, hence this class.
The trainer evaluates it on its checkpointed global step (not `optimizer.iterations`, which a loss-scale
optimizer does not advance on skipped steps), so a resumed run continues the exact curve.
"""

from __future__ import annotations

import keras
import tensorflow as tf

BURNIN_TYPES = ("none", "linear")


@keras.saving.register_keras_serializable(package="nas_deeplab")
class PolyLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, base_learning_rate: float, training_number_of_steps: int,
                 learning_power: float = 0.9, slow_start_step: int = 0,
                 slow_start_learning_rate: float = 1e-4, slow_start_burnin_type: str = "none",
                 end_learning_rate: float = 0.0):
        if training_number_of_steps <= 0:
            raise ValueError(f"training_number_of_steps must be positive, got {training_number_of_steps}")
        if not 0 <= slow_start_step < training_number_of_steps:
            raise ValueError(f"slow_start_step={slow_start_step} must be in [0, training_number_of_steps="
                             f"{training_number_of_steps})")
        if slow_start_burnin_type not in BURNIN_TYPES:
            raise ValueError(f"slow_start_burnin_type={slow_start_burnin_type!r}: choose one of "
                             f"{list(BURNIN_TYPES)}")
        if base_learning_rate <= 0:
            raise ValueError(f"base_learning_rate must be positive, got {base_learning_rate}")
        self.base_learning_rate = float(base_learning_rate)
        self.training_number_of_steps = int(training_number_of_steps)
        self.learning_power = float(learning_power)
        self.slow_start_step = int(slow_start_step)
        self.slow_start_learning_rate = float(slow_start_learning_rate)
        self.slow_start_burnin_type = slow_start_burnin_type
        self.end_learning_rate = float(end_learning_rate)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        slow = float(self.slow_start_step)
        decay_steps = float(self.training_number_of_steps - self.slow_start_step)
        adjusted = tf.minimum(tf.maximum(step - slow, 0.0), decay_steps)  # TF1 clips at decay_steps
        frac = 1.0 - adjusted / decay_steps
        poly = ((self.base_learning_rate - self.end_learning_rate) * tf.pow(frac, self.learning_power)
                + self.end_learning_rate)
        if self.slow_start_step == 0:
            return poly
        if self.slow_start_burnin_type == "linear":
            start = (self.slow_start_learning_rate
                     + (self.base_learning_rate - self.slow_start_learning_rate) * step / slow)
        else:
            start = tf.constant(self.slow_start_learning_rate, tf.float32)
        return tf.where(step < slow, start, poly)

    def get_config(self):
        return {"base_learning_rate": self.base_learning_rate,
                "training_number_of_steps": self.training_number_of_steps,
                "learning_power": self.learning_power, "slow_start_step": self.slow_start_step,
                "slow_start_learning_rate": self.slow_start_learning_rate,
                "slow_start_burnin_type": self.slow_start_burnin_type,
                "end_learning_rate": self.end_learning_rate}
