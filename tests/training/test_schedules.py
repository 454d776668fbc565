import keras
import numpy as np
import pytest

from nas_deeplab.training.schedules import PolyLearningRate


def _official(step, base, total, power, slow_step, slow_lr):
    """Hand formula of DeepLab's get_model_learning_rate('poly', burnin 'none')."""
    if step < slow_step:
        return slow_lr
    adjusted = min(max(step - slow_step, 0), total - slow_step)
    return base * (1.0 - adjusted / (total - slow_step)) ** power


@pytest.mark.parametrize("slow_step", [0, 100])
def test_poly_matches_hand_formula(slow_step):
    sched = PolyLearningRate(0.05, 1000, learning_power=0.9, slow_start_step=slow_step,
                             slow_start_learning_rate=1e-4)
    for step in [0, 1, 50, 99, 100, 101, 500, 999, 1000, 1200]:
        got = float(sched(step))
        want = _official(step, 0.05, 1000, 0.9, slow_step, 1e-4)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9, err_msg=f"step {step}")
    assert float(sched(1000)) == 0.0
    if slow_step:
        assert float(sched(99)) == pytest.approx(1e-4)
        assert float(sched(100)) == pytest.approx(0.05)


def test_linear_burnin_and_serialisation():
    sched = PolyLearningRate(0.1, 200, slow_start_step=10, slow_start_learning_rate=0.0,
                             slow_start_burnin_type="linear")
    assert float(sched(5)) == pytest.approx(0.05)
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(sched))
    assert isinstance(clone, PolyLearningRate)
    assert clone.get_config() == sched.get_config()


@pytest.mark.parametrize("kwargs", [dict(training_number_of_steps=0), dict(slow_start_step=500),
                                    dict(slow_start_burnin_type="cubic")])
def test_bad_arguments_rejected(kwargs):
    args = dict(base_learning_rate=0.1, training_number_of_steps=100)
    args.update(kwargs)
    with pytest.raises(ValueError):
        PolyLearningRate(**args)
