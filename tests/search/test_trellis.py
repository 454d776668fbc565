"""Network-level space: path counts, eq. 7 normalisation, Viterbi == brute force."""

import numpy as np
import pytest

from nas_deeplab.search import trellis


def test_path_counts_match_numbers_md():
    # Our space: layer 1 at stride 4 or 8 (paper wording) -> 75,025 paths for L=12.
    assert trellis.count_paths(12) == 75025
    assert sum(1 for _ in trellis.enumerate_paths(12)) == 75025
    # First layer fixed at stride 4 -> 28,657, the paper's "2.9e4".
    assert trellis.count_paths(12, first_levels=(0,)) == 28657
    assert sum(1 for _ in trellis.enumerate_paths(12, first_levels=(0,))) == 28657
    assert trellis.count_paths(11) == 28657


def test_nodes_are_the_reachable_ones():
    assert trellis.levels_of(0) == [0, 1]
    assert trellis.levels_of(1) == [0, 1, 2]
    assert trellis.levels_of(2) == [0, 1, 2, 3]
    assert len(trellis.all_nodes(12)) == 2 + 3 + 4 * 10
    # node (1, 2) is only reachable by downsampling from (0, 1)
    assert trellis.incoming(1, 2) == [(1, trellis.DOWN)]
    assert trellis.incoming(5, 0) == [(0, trellis.SAME), (1, trellis.UP)]
    assert trellis.incoming(5, 3) == [(2, trellis.DOWN), (3, trellis.SAME)]
    assert trellis.incoming(0, 0) == [(0, trellis.SAME)]  # from the stem


def test_beta_softmax_sums_to_one_over_outgoing_transitions():
    rng = np.random.default_rng(0)
    beta = rng.standard_normal((12, 4, 3)).astype(np.float32) * 3
    mask = trellis.valid_mask(12)
    for probs in (trellis.softmax_beta_np(beta), trellis.softmax_beta_tf(beta).numpy()):
        for l in range(12):
            for src in trellis.levels_of(l - 1):
                row = probs[l, src]
                np.testing.assert_allclose(row.sum(), 1.0, rtol=1e-5)
                assert np.all(row[~mask[l, src]] == 0)
                assert np.all(row[mask[l, src]] > 0)
        # edge nodes have exactly two outgoing transitions
        assert (probs[3, 0] > 0).sum() == 2 and (probs[3, 3] > 0).sum() == 2
        assert (probs[3, 1] > 0).sum() == 3
    # a 2-way softmax at an edge node, not a 3-way one rescaled
    e = np.exp(beta[4, 0, 1:] - beta[4, 0, 1:].max())
    np.testing.assert_allclose(trellis.softmax_beta_np(beta)[4, 0, 1:], e / e.sum(), rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_viterbi_equals_brute_force_L12(seed):
    rng = np.random.default_rng(seed)
    probs = trellis.softmax_beta_np(rng.standard_normal((12, 4, 3)) * 2)
    best, best_lp = trellis.brute_force_best_path(probs)
    path = trellis.viterbi(probs)
    assert tuple(path) == best
    assert trellis.path_log_prob(path, probs) == pytest.approx(best_lp)


def test_viterbi_small_spaces_and_forced_path():
    rng = np.random.default_rng(7)
    for L in (1, 2, 3, 5):
        probs = trellis.softmax_beta_np(rng.standard_normal((L, 4, 3)))
        assert tuple(trellis.viterbi(probs)) == trellis.brute_force_best_path(probs)[0]
    # beta strongly favouring the published path decodes to it
    target = [0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1]
    beta = np.zeros((12, 4, 3))
    prev = 0
    for l, v in enumerate(target):
        beta[l, prev, v - prev + 1] = 5.0
        prev = v
    assert trellis.viterbi(trellis.softmax_beta_np(beta)) == target


def _random_path(rng, num_layers, num_levels, first):
    """A random level sequence the trellis allows: layer 0 at `first` (0 or 1: stride 4 or 8, reached
    from the stride-4 stem), then steps of -1 / 0 / +1 inside 0..num_levels-1."""
    path = [first]
    for _ in range(num_layers - 1):
        path.append(int(rng.choice([v for v in (path[-1] - 1, path[-1], path[-1] + 1)
                                    if 0 <= v < num_levels])))
    return path


@pytest.mark.parametrize("seed", range(4))
def test_viterbi_decodes_a_dominant_random_path_exactly(seed):
    """Random beta (std 1) plus +20 on one random path's transitions: every other path leaves it
    through a transition about e^-20 times as likely, so Viterbi must return exactly that path
    (checked against the path itself, not against path_log_prob), starting at stride 4 or 8."""
    rng = np.random.default_rng(100 + seed)
    starts_at_8 = 0
    for num_levels in (1, 2, 3, 4):
        for num_layers in (1, 2, 5, 12):
            for first in range(min(2, num_levels)):
                path = _random_path(rng, num_layers, num_levels, first)
                beta = rng.standard_normal((num_layers, num_levels, 3))
                prev = 0  # the stem
                for layer, level in enumerate(path):
                    beta[layer, prev, level - prev + 1] += 20.0
                    prev = level
                assert trellis.viterbi(trellis.softmax_beta_np(beta)) == path, (num_levels, path)
                starts_at_8 += path[0] == 1
    assert starts_at_8 == 3 * 4
