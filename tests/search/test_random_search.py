"""random_architecture: valid, covering, uniform (against brute-force enumeration) and deterministic."""

import collections
import itertools

import math

import numpy as np
import pytest

from nas_deeplab import architecture as arch_lib
from nas_deeplab.search import trellis
from nas_deeplab.search.random_search import random_architecture, random_path

NONZERO = [op for op in arch_lib.OP_VOCABULARY if op != "zero"]
# The draws are fixed by their seeds, so each statistic below is a fixed number. Tests pass at
# p > 1e-3 (z = 3.09); the naive sampler must be rejected at p < 1e-6 (z = 4.75).
Z_ACCEPT, Z_REJECT = 3.09, 4.75


def _chi2(counter, support):
    """(Pearson statistic against uniform over `support`, degrees of freedom)."""
    observed = np.array([counter.get(k, 0) for k in support], np.float64)
    assert observed.sum() == sum(counter.values()), f"draws outside the support: {set(counter) - set(support)}"
    expected = observed.sum() / len(support)
    return float(((observed - expected) ** 2 / expected).sum()), len(support) - 1


def _critical(df, z):
    """Chi-square quantile by the Wilson-Hilferty approximation (no scipy in the test extras)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _uniform(counter, support):
    stat, df = _chi2(counter, support)
    return stat < _critical(df, Z_ACCEPT)


def test_valid_and_rebuilt_from_json_for_many_seeds():
    for seed in range(300):
        arch = random_architecture(seed)
        assert arch.name == f"random_{seed}" and arch.num_layers == 12 and arch.num_blocks == 5
        assert arch.filter_multiplier == 8
        assert "zero" not in arch.operations
        for i in range(5):
            (_, a), (_, b) = arch.block(i)
            assert a != b and 0 <= a <= i + 1 and 0 <= b <= i + 1
        assert arch_lib.Architecture.from_dict(arch.to_dict()) == arch


def test_every_op_predecessor_and_path_shape_occurs_in_300_seeds():
    archs = [random_architecture(seed) for seed in range(300)]
    assert {op for a in archs for op in a.operations} == set(NONZERO)
    for i in range(5):
        assert {s for a in archs for s in a.hiddenstate_indices[2 * i:2 * i + 2]} == set(range(i + 2))
    paths = [a.backbone for a in archs]
    assert {p[-1] for p in paths} == {0, 1, 2, 3}           # ends at every stride
    assert {p[0] for p in paths} == {0, 1}                  # starts at stride 4 and at stride 8
    assert any(0 not in p for p in paths)                   # some never visit stride 4
    assert any(3 in p for p in paths)
    assert len(set(paths)) > 250                            # of 75,025 paths, few repeats


def test_paths_uniform_over_the_enumerated_trellis_and_a_random_walk_is_not():
    support = list(trellis.enumerate_paths(3))              # 13 paths, brute force
    n = 6500
    drawn = collections.Counter(random_architecture(seed, num_layers=3).backbone for seed in range(n))
    assert _uniform(drawn, support)
    for path in support:                                    # each within 5 sigma of n / 13
        assert abs(drawn[path] - n / 13) < 5 * np.sqrt(n / 13), (path, drawn[path])

    # The same check rejects the naive sampler (uniform step among the legal moves): it has power.
    rng = np.random.default_rng(0)
    walk = collections.Counter()
    for _ in range(n):
        p = [int(rng.integers(2))]
        for _ in range(2):
            p.append(int(rng.choice([w for w in (p[-1] - 1, p[-1], p[-1] + 1) if 0 <= w < 4])))
        walk[tuple(p)] += 1
    stat, df = _chi2(walk, support)
    assert stat > _critical(df, Z_REJECT)


@pytest.mark.parametrize("num_layers,first_levels,num_levels", [(5, (0, 1), 4), (4, (0,), 3), (6, (0, 1), 2)])
def test_path_support_is_exactly_the_enumeration(num_layers, first_levels, num_levels):
    support = set(trellis.enumerate_paths(num_layers, first_levels, num_levels))
    rng = np.random.default_rng(1)
    drawn = collections.Counter(random_path(rng, num_layers, first_levels, num_levels)
                                for _ in range(40 * len(support)))
    assert set(drawn) == support
    assert _uniform(drawn, sorted(support))


def test_predecessor_pairs_and_ops_uniform():
    n = 3000
    archs = [random_architecture(seed, num_layers=1) for seed in range(n)]
    for i in range(5):
        pairs = collections.Counter(a.hiddenstate_indices[2 * i:2 * i + 2] for a in archs)
        support = list(itertools.permutations(range(i + 2), 2))   # ordered, distinct
        assert _uniform(pairs, support), i
        if i == 0:
            continue                                              # block 0: one unordered pair only
        unordered = collections.Counter(frozenset(p) for p in pairs.elements())
        assert _uniform(unordered, [frozenset(c) for c in itertools.combinations(range(i + 2), 2)])
    ops = collections.Counter(op for a in archs for op in a.operations)
    assert _uniform(ops, NONZERO)
    # the op of a branch does not depend on its position: left ops and right ops alike
    left = collections.Counter(a.operations[0] for a in archs)
    assert _uniform(left, NONZERO)


def test_deterministic_per_seed_and_seeds_differ():
    assert random_architecture(7) == random_architecture(7)
    assert random_architecture(7, filter_multiplier=4) == random_architecture(7).with_filter_multiplier(4)
    assert len({random_architecture(s).to_json() for s in range(20)}) == 20


def test_bad_first_levels_named():
    with pytest.raises(ValueError, match="first_levels"):
        random_architecture(0, first_levels=(5,))
