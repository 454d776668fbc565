"""A refused search step moves nothing, on any replica (two replicas: MirroredStrategy over the two
logical CPUs of tests/conftest.py).

A NaN pixel on ONE replica makes that replica's gradients non-finite (the supernet's BN statistics
are per replica, so the other replica's stay finite; the loss itself may stay finite on CPU, where
the compiled ReLU maps NaN to 0). The step must then be refused on
both: every copy of every variable, every optimizer slot and both iteration counters bit-identical
to before. A step that only zeroed the bad gradients would still move SGD momentum / Adam state.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab.search import searcher
from nas_deeplab.training.distribute import make_strategy

CROP = 33




def _batch(num_classes, nan_image=None, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.uniform(0, 255, (2, CROP, CROP, 3)).astype(np.float32)
    labels = rng.randint(0, num_classes, (2, CROP, CROP, 1)).astype(np.int32)
    if nan_image is not None:
        images[nan_image, 7, 9, 1] = np.nan
    return images, labels


def _per_replica(strategy, images, labels):
    """Image i of the global batch on replica i (1 image per replica)."""
    k = len(images) // strategy.num_replicas_in_sync
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: {"image": tf.constant(images[ctx.replica_id_in_sync_group * k:][:k]),
                     "label": tf.constant(labels[ctx.replica_id_in_sync_group * k:][:k])})


def _copies(strategy, variables):
    """Every replica's copy of every variable (keras.Variable -> its tf.Variable)."""
    raw = [v.value if isinstance(v, keras.Variable) else v for v in variables]
    return [np.stack([c.numpy() for c in strategy.experimental_local_results(v)]) for v in raw]


def _state(s):
    return {"weights": _copies(s.strategy, s.net.weight_variables),
            "alpha/beta": _copies(s.strategy, s.net.arch_variables),
            "weight optimizer": _copies(s.strategy, s.weight_opt.variables),
            "arch optimizer": _copies(s.strategy, s.arch_opt.variables)}


def _assert_same(a, b):
    for key in a:
        assert len(a[key]) == len(b[key])
        for i, (x, y) in enumerate(zip(a[key], b[key])):
            assert x.tobytes() == y.tobytes(), f"{key}[{i}] changed"


def _assert_moved(a, b, keys):
    for key in keys:
        assert any(x.tobytes() != y.tobytes() for x, y in zip(a[key], b[key])), f"{key} did not move"


def test_a_step_non_finite_on_one_replica_is_refused_on_both(tmp_path):
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    s = searcher.Searcher(searcher.SearchConfig(
        output_dir=str(tmp_path), epochs=1, steps_per_epoch=4, arch_start_epoch=0, crop_size=CROP,
        batch_size=2, filter_multiplier=2, num_layers=2, num_blocks=2, deterministic=True,
        strategy="mirrored", val_steps=0), strategy=strategy, log=lambda *a: None)
    ncls = s.desc.num_classes
    clean = _per_replica(strategy, *_batch(ncls))

    # Clean steps first, so the momentum and Adam slots are non-zero (a zeroed gradient would then
    # still move the variables) and the two copies of each variable are known to stay in sync.
    before = _state(s)
    for step in (s.weight_step, s.arch_step):
        out = step(clean)
        assert not np.asarray(out["bad"]).any() and np.isfinite(float(out["loss"]))
    good = _state(s)
    _assert_moved(before, good, ["weights", "alpha/beta", "weight optimizer", "arch optimizer"])
    for copies in good["weights"] + good["alpha/beta"]:
        assert copies[0].tobytes() == copies[1].tobytes()
    assert int(s.weight_opt.iterations.numpy()) == int(s.arch_opt.iterations.numpy()) == 1

    # Two ways to go non-finite on ONE replica: a NaN pixel in its image (only the gradient of the
    # first conv sees it: the loss stays finite), or a NaN in its copy of the logits bias (its loss
    # goes non-finite, hence all its gradients, the architecture's included).
    bias_index = [i for i, v in enumerate(s.net.weight_variables) if "logits_bias" in v.name][0]
    bias = s.net.weight_variables[bias_index]
    for nan_replica in (1, 0):  # replica 1 first: a decision taken on replica 0 alone would apply
        cases = [("weight", s.weight_step, "pixel"), ("weight", s.weight_step, "bias"),
                 ("architecture", s.arch_step, "bias")]
        for which, step, poison in cases:
            batch = clean
            if poison == "pixel":
                batch = _per_replica(strategy, *_batch(ncls, nan_image=nan_replica))
            else:
                copy = strategy.experimental_local_results(bias)[nan_replica]
                copy.assign(tf.fill(copy.shape, np.nan))
            start = _state(s)
            out = step(batch)
            bad = np.asarray(out["bad"])
            assert bad.max() == 1 and (poison == "pixel" or bad[0] == 1)  # one replica only ...
            _assert_same(start, _state(s))  # ... and nothing moved anywhere
            kind = r"gradients of the weights" if poison == "pixel" else "loss"
            with pytest.raises(searcher.SearchError,
                               match=rf"non-finite {kind} at step 5 .*{which} step.*"
                                     r"on 1 of 2 replica\(s\); 1 step refused \(nothing applied"):
                s._check(out, 5, which)
            if poison == "bias":
                copy.assign(good["weights"][bias_index][nan_replica])
    _assert_same(good, _state(s))
    assert int(s.weight_opt.iterations.numpy()) == int(s.arch_opt.iterations.numpy()) == 1

    # The same steps still apply once the input is clean again.
    s.weight_step(clean)
    _assert_moved(good, _state(s), ["weights", "weight optimizer"])
    assert int(s.weight_opt.iterations.numpy()) == 2
