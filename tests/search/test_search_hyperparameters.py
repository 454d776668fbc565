"""The search's optimisers do what the paper (Sec. 5.1) and the searcher's docstring say, checked on
the updates they apply, against a hand computation (not against the optimiser's own settings):

* weights: SGD momentum 0.9, cosine learning rate 0.025 -> 0.001 over the whole search (40 epochs
  here), coupled L2 3e-4 (g + wd * w before the momentum);
* alpha/beta: Adam lr 3e-3, betas (0.5, 0.999), coupled L2 1e-3;
* on one replica and on two (MirroredStrategy, same global batch of 2): the L2 term is added once,
  not once per replica, and the two runs end with the same weights and alpha/beta.

The supernet's BN uses per-replica batch statistics, so one and two replicas compute the same thing
only when each replica's images have the statistics of the whole batch: every batch here is one
image twice (BN over {x, x} equals BN over {x}), which makes the comparison exact in theory.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab.search import searcher
from nas_deeplab.training import losses
from nas_deeplab.training.distribute import make_strategy

CROP = 33
# The paper's settings, written out here (not read from SearchConfig).
LR_MAX, LR_MIN, MOMENTUM, WEIGHT_DECAY = 0.025, 0.001, 0.9, 3e-4
ARCH_LR, BETA_1, BETA_2, ARCH_WEIGHT_DECAY, ADAM_EPSILON = 3e-3, 0.5, 0.999, 1e-3, 1e-7  # Keras' eps




def cosine_lr(step, total):
    return LR_MIN + 0.5 * (LR_MAX - LR_MIN) * (1.0 + math.cos(math.pi * step / total))


def _doubled_batch(seed, num_classes):
    rng = np.random.RandomState(seed)
    image = rng.uniform(0, 255, (1, CROP, CROP, 3)).astype(np.float32)
    label = rng.randint(0, num_classes, (1, CROP, CROP, 1)).astype(np.int32)
    label[:, :4] = 255  # some ignored pixels
    return np.concatenate([image, image]), np.concatenate([label, label])


def _distribute(strategy, images, labels):
    k = len(images) // strategy.num_replicas_in_sync
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: {"image": tf.constant(images[ctx.replica_id_in_sync_group * k:][:k]),
                     "label": tf.constant(labels[ctx.replica_id_in_sync_group * k:][:k])})


def _loss_gradients(s, images, labels, variables):
    """d(mean valid-pixel cross-entropy)/d(variables) on the whole batch, outside any strategy."""
    with tf.GradientTape() as tape:
        loss = losses.valid_pixel_mean_loss(s.net(tf.constant(images)), tf.constant(labels),
                                            s.desc.ignore_label)
    return [g.numpy().astype(np.float64) for g in tape.gradient(loss, variables)]


def _flat(arrays):
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])


def _adam(a0, gradients, beta_1, beta_2, weight_decay):
    """Keras Adam (epsilon outside the bias correction) on G = g + wd * a, from zero slots."""
    a = [x.copy() for x in a0]
    m = [np.zeros_like(x) for x in a0]
    vel = [np.zeros_like(x) for x in a0]
    for t, g in enumerate(gradients, start=1):
        for i in range(len(a)):
            G = g[i] + weight_decay * a[i]
            m[i] += (G - m[i]) * (1 - beta_1)
            vel[i] += (G * G - vel[i]) * (1 - beta_2)
            lr_t = ARCH_LR * math.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
            a[i] = a[i] - lr_t * m[i] / (np.sqrt(vel[i]) + ADAM_EPSILON)
    return a


def _run(strategy_name, tmp_path):
    """The same sequence of steps on either strategy; returns what each step did next to the hand
    computation, and the final weights, alpha and beta."""
    strategy = make_strategy(strategy_name)
    # Paper-default optimiser settings and 40 epochs; only the network and crop are small.
    s = searcher.Searcher(searcher.SearchConfig(
        output_dir=str(tmp_path / strategy_name), crop_size=CROP, batch_size=2, filter_multiplier=2,
        num_layers=2, num_blocks=2, deterministic=True, strategy=strategy_name, val_steps=0),
        strategy=strategy, log=lambda *a: None)
    record = {"total_steps": s.total_steps, "steps_per_epoch": s.steps_per_epoch, "weight": [],
              "adam": [], "adam_other_settings": {}, "refused": 0}
    total = s.total_steps
    weights = s.net.weight_variables
    ncls = s.desc.num_classes

    # -- weight steps at iterations 0, 1, the middle and the last one --------------------------
    for n, iteration in enumerate((0, 1, total // 2, total - 1)):
        s.weight_opt.iterations.assign(iteration)
        images, labels = _doubled_batch(n, ncls)
        w0 = _flat(v.numpy() for v in weights)
        m0 = _flat(m.numpy() for m in s.weight_opt.momentums)
        g = _flat(_loss_gradients(s, images, labels, weights))
        out = s.weight_step(_distribute(strategy, images, labels))
        record["refused"] += int(np.asarray(out["bad"]).any())
        lr = cosine_lr(iteration, total)
        dw = _flat(v.numpy() for v in weights) - w0
        expected = MOMENTUM * m0 - lr * (g + WEIGHT_DECAY * w0)
        # The L2 coefficient fitted from the update over all weights (least squares on w).
        residual = (MOMENTUM * m0 - lr * g - dw) / lr
        fitted_wd = residual @ w0 / (w0 @ w0)
        record["weight"].append((iteration, np.abs(dw - expected).max(), fitted_wd))

    # -- two arch steps: Adam written out ------------------------------------------------------
    # alpha/beta enlarged so that the L2 term (1e-3 * a) is comparable with the loss gradients.
    arch = s.net.arch_variables
    rng = np.random.RandomState(7)
    for v in arch:
        v.assign(rng.standard_normal(v.shape).astype(np.float32) * 2.0)
    a0 = [v.numpy().astype(np.float64) for v in arch]
    gradients = []
    for t in (1, 2):
        images, labels = _doubled_batch(10 + t, ncls)
        gradients.append(_loss_gradients(s, images, labels, arch))
        out = s.arch_step(_distribute(strategy, images, labels))
        record["refused"] += int(np.asarray(out["bad"]).any())
        got = _flat(v.numpy() for v in arch)
        record["adam"].append((t, np.abs(got - _flat(_adam(a0, gradients, BETA_1, BETA_2,
                                                             ARCH_WEIGHT_DECAY))).max()))
    # Other settings written out alike from the same gradients: how far they are from what ran.
    for other in ((0.9, BETA_2, ARCH_WEIGHT_DECAY), (BETA_1, 0.99, ARCH_WEIGHT_DECAY), (BETA_1, BETA_2, 0.0),
                  (BETA_1, BETA_2, 2 * ARCH_WEIGHT_DECAY)):
        record["adam_other_settings"][other] = np.abs(got - _flat(_adam(a0, gradients, *other))).max()
    record["iterations"] = (int(s.weight_opt.iterations.numpy()), int(s.arch_opt.iterations.numpy()))
    record["final"] = ([v.numpy() for v in weights], [v.numpy() for v in arch])
    return record


STRATEGIES = ("one_device", "mirrored")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    assert make_strategy("mirrored").num_replicas_in_sync == 2
    return {name: _run(name, tmp_path_factory.mktemp("hp")) for name in STRATEGIES}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_weight_step_is_sgd_momentum_with_coupled_l2_on_the_cosine_schedule(runs, strategy):
    r = runs[strategy]
    assert r["total_steps"] == 40 * r["steps_per_epoch"] > 100  # the cosine spans the whole search
    assert r["refused"] == 0
    assert [it for it, _, _ in r["weight"]] == [0, 1, r["total_steps"] // 2, r["total_steps"] - 1]
    for iteration, max_error, fitted_wd in r["weight"]:
        # Whole update (lr, momentum, L2): |dw| ~ 5e-3; float32 storage of w alone costs ~3e-8,
        # a 1% error in the learning rate ~5e-5, a missing L2 term 2e-7 (last step) to 5e-6.
        assert max_error < 1e-7, iteration
        # 3e-4: not 0, not twice (once per replica), not halved.
        assert fitted_wd == pytest.approx(WEIGHT_DECAY, rel=0.005), iteration  # measured: 0.07%
    assert r["iterations"][0] == r["total_steps"]  # the last step was iteration total - 1


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_arch_step_is_adam_with_coupled_l2(runs, strategy):
    r = runs[strategy]
    assert r["refused"] == 0 and r["iterations"][1] == 2
    for t, max_error in r["adam"]:
        assert max_error < 2e-6, t  # |a| ~ 2-8: float32 rounding ~5e-7
    # The tolerance tells the settings apart (two steps: the first Adam step is ~ -lr * sign(G)
    # whatever the betas).
    for other, error in r["adam_other_settings"].items():
        assert error > 1e-5, other


def test_one_replica_and_two_replicas_end_with_the_same_weights_and_alpha_beta(runs):
    (w1, a1), (w2, a2) = runs["one_device"]["final"], runs["mirrored"]["final"]
    for x, y in zip(w1 + a1, w2 + a2):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
