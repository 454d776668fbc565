"""How decided a search is: list-Viterbi against brute force, the prior recognised, margins by hand."""

import math

import numpy as np
import pytest

from nas_deeplab.search import decidedness, trellis


@pytest.mark.parametrize("seed,layers,levels", [(0, 6, 4), (1, 7, 3), (2, 5, 2), (3, 1, 4)])
def test_top_two_paths_equal_brute_force(seed, layers, levels):
    probs = trellis.softmax_beta_np(np.random.RandomState(seed).normal(size=(layers, levels, 3)))
    ranked = sorted(((trellis.path_log_prob(p, probs), list(p))
                     for p in trellis.enumerate_paths(layers, (0, 1), levels)), key=lambda c: (-c[0], c[1]))
    got = decidedness.top_paths(probs, 2)
    assert [p for _, p in got] == [p for _, p in ranked[:2]]
    np.testing.assert_allclose([s for s, _ in got], [s for s, _ in ranked[:2]], rtol=1e-12)


def test_a_zero_search_is_reported_as_the_prior():
    rng = np.random.RandomState(0)
    alpha0, beta0 = rng.normal(size=(20, 8)) * 1e-3, rng.normal(size=(12, 4, 3)) * 1e-3
    s = decidedness.summarize(alpha0 + 0.05, beta0 - 0.05, alpha0, beta0, arch_steps=40)
    assert s["verdict"] == "prior"
    assert s["alpha_moved"] == pytest.approx(0.05) and s["beta_moved"] == pytest.approx(0.05)
    # A zero beta: the all-stride-4 path, P = (1/2)^12, exactly its prior.
    p = decidedness.summarize(np.zeros((20, 8)), np.zeros((12, 4, 3)), arch_steps=0)["path"]
    assert p["path"] == [0] * 12 and p["log_prob"] == pytest.approx(12 * math.log(0.5))
    assert p["gain_over_prior"] == pytest.approx(0.0, abs=1e-12)
    assert "initialisation" in decidedness.describe(decidedness.summarize(alpha0, beta0, alpha0, beta0, 5))[0]


def test_a_dominant_architecture_is_decided_with_the_margins_by_hand():
    L, path = 4, [0, 1, 2, 1]
    beta = np.zeros((L, 4, 3))
    prev = 0
    for l, v in enumerate(path):
        beta[l, prev, v - prev + 1] = 5.0
        prev = v
    alpha = np.zeros((5, 8))          # B = 2: edges (0,0) (0,1) (1,0) (1,1) (1,2)
    alpha[0, 2] = alpha[1, 0] = 3.0   # block 0: atrous_3x3 on state 0, separable_3x3 on state 1
    alpha[3, 4] = alpha[4, 6] = 2.0   # block 1: avg pool on state 1, skip on state 2
    s = decidedness.summarize(alpha, beta, np.zeros_like(alpha), np.zeros_like(beta), arch_steps=500)
    assert s["verdict"] == "decided" and s["path"]["path"] == path
    # Independently: node (0,0) of the stem has 2 outgoing moves, P(move with logit 5) = e^5 / (e^5 + 1).
    p_edge2 = math.exp(5) / (math.exp(5) + 1)
    p_mid = math.exp(5) / (math.exp(5) + 2)
    assert s["path"]["log_prob"] == pytest.approx(2 * math.log(p_edge2) + 2 * math.log(p_mid))
    block0 = s["blocks"][0]
    top = math.exp(3) / (math.exp(3) + 7)
    assert [e["state"] for e in block0["kept"]] == [0, 1]
    assert block0["kept"][0]["op"] == "atrous_3x3" and block0["kept"][0]["op_prob"] == pytest.approx(top)
    assert block0["kept"][0]["second_op_prob"] == pytest.approx(1 / (math.exp(3) + 7))
    block1 = s["blocks"][1]
    assert [e["state"] for e in block1["kept"]] == [1, 2] and block1["strongest_left_out"] == pytest.approx(1 / 8)


def test_entropies_of_uniform_alpha_and_beta():
    ea, eb = decidedness.entropies(np.zeros((20, 8)), np.zeros((3, 4, 3)))
    assert ea == pytest.approx(math.log(8))
    # Existing source nodes of layers 0..2: stem (2 moves); (0,0) 2, (0,1) 3; (1,0) 2, (1,1) 3, (1,2) 3.
    expected = np.mean([math.log(2), math.log(2), math.log(3), math.log(2), math.log(3), math.log(3)])
    assert eb == pytest.approx(expected)


def test_moved_but_still_the_priors_choice_is_the_prior():
    """alpha moved more than the noise, but only on the zero op, which decoding never picks: the
    path is as likely as under a uniform beta and no op leads, so it is the prior (the README's
    small-preset run looked like this: gain 1.01x, 0 of 10 ops). One leading op makes it "weak"."""
    rng = np.random.RandomState(1)
    alpha0, beta0 = np.zeros((20, 8)), np.zeros((12, 4, 3))
    alpha = alpha0 + rng.uniform(-0.04, 0.04, alpha0.shape)    # top-1/top-2 < e^0.08 = 1.08 < 1.1
    alpha[:, 7] = 0.15                                         # the zero op moved by 0.15 > MIN_MOVE
    beta = beta0 + rng.uniform(-0.01, 0.01, beta0.shape)
    s = decidedness.summarize(alpha, beta, alpha0, beta0, arch_steps=48)
    assert s["alpha_moved"] == pytest.approx(0.15) and s["weak_op_choices"] == s["op_choices"] == 10
    assert s["path"]["gain_over_prior"] < decidedness.PATH_MARGIN
    assert s["verdict"] == "prior"
    alpha[0, 0] = 0.2                                          # e^(0.2 - 0.04) = 1.17x its runner-up
    assert decidedness.summarize(alpha, beta, alpha0, beta0, arch_steps=48)["verdict"] == "weak"
