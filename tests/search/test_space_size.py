"""The paper's search-space sizes (Sec. 5.1) and the space our decoder can emit, counted independently.

Network level, "2.9 x 10^4 unique paths" for L = 12: a path is the level (0..3 = stride 4..32) of each
layer, each step keeping, halving or doubling the stride. With the first layer fixed at stride 4 there
are 28,657 paths, the paper's number; our trellis (and Viterbi) also lets the first layer sit at stride
8, as the paper's text says, giving 75,025 (numbers.md).

Cell level, "5.6 x 10^14" for B = 5: block i (0-based) has n = i + 2 possible inputs (H^{l-1}, H^{l-2},
blocks 0..i-1) and two branches (I1, O1), (I2, O2). PNASNet's convention counts |I_b|^2 |O|^2 per
block, i.e. each branch chosen independently (an input may be used twice), the 8 ops INCLUDING zero,
the two branches ordered:

    prod_{n=2..6} (8 n)^2 = 8^10 * (2*3*4*5*6)^2 = 1,073,741,824 * 518,400 = 556,627,761,561,600

= 5.57e14, printed as 5.6e14. No other natural convention lands there: 7 ops (no zero) gives 1.46e14,
distinct inputs with 8 ops 9.28e13, unordered branches with 8 ops 2.08e13. Joint: 28,657 * 5.57e14 =
1.6e19, the paper's "about 10^19".

Our decoder (`decode_cell`) keeps two DISTINCT predecessors per block and a non-zero op on each,
stronger first: prod_n n (n - 1) * 7^2 = 86,400 * 49^5 = 24,405,861,513,600 (2.4e13) genotypes; since a
block sums its branches, 762,683,172,300 (7.6e11) distinct networks (unordered branches). With the
75,025 paths that is 1.8e18 genotypes.
"""

import itertools

import numpy as np
import pytest

from nas_deeplab import architecture
from nas_deeplab.search import decode, trellis


def _paths_brute_force(num_layers, first_levels, num_levels=4):
    """Every first level and sequence of L - 1 moves (-1, 0, +1), kept if it stays within the levels."""
    n = 0
    for first in first_levels:
        for moves in itertools.product((-1, 0, 1), repeat=num_layers - 1):
            v = first
            for d in moves:
                v += d
                if not 0 <= v < num_levels:
                    break
            else:
                n += 1
    return n


def test_network_level_paths():
    assert _paths_brute_force(12, (0,)) == trellis.count_paths(12, first_levels=(0,)) == 28657
    assert f"{28657:.1e}" == "2.9e+04"
    assert _paths_brute_force(12, (0, 1)) == trellis.count_paths(12) == 75025


def _cells_brute_force(num_blocks, num_ops, distinct_inputs, ordered):
    """Every cell as a tuple of blocks, each block a pair of branches (input, op); equal cells once."""
    per_block = []
    for i in range(num_blocks):
        branches = list(itertools.product(range(i + 2), range(num_ops)))
        blocks = set()
        for a, b in itertools.product(branches, repeat=2):
            if distinct_inputs and a[0] == b[0]:
                continue
            blocks.add((a, b) if ordered else tuple(sorted((a, b))))
        per_block.append(blocks)
    return sum(1 for _ in itertools.product(*per_block))


@pytest.mark.parametrize("num_blocks, num_ops", [(1, 3), (2, 2), (2, 3), (3, 2)])
@pytest.mark.parametrize("distinct_inputs, ordered", [(False, True), (False, False), (True, True),
                                                      (True, False)])
def test_cell_count_formula_equals_brute_force(num_blocks, num_ops, distinct_inputs, ordered):
    assert decode.count_cell_structures(num_blocks, num_ops, distinct_inputs=distinct_inputs,
                                        ordered=ordered) == \
        _cells_brute_force(num_blocks, num_ops, distinct_inputs, ordered)


def test_paper_cell_count_and_joint_space():
    paper = decode.count_cell_structures(5, 8)
    assert paper == 8 ** 10 * (2 * 3 * 4 * 5 * 6) ** 2 == 556_627_761_561_600
    assert f"{paper:.1e}" == "5.6e+14"
    others = [decode.count_cell_structures(5, 7), decode.count_cell_structures(5, 8, distinct_inputs=True),
              decode.count_cell_structures(5, 8, ordered=False)]
    assert [f"{n:.1e}" for n in others] == ["1.5e+14", "9.3e+13", "2.1e+13"]  # none is 5.6e14
    assert f"{28657 * paper:.1e}" == "1.6e+19"  # "about 10^19"
    ours = decode.count_cell_structures(5, 7, distinct_inputs=True)
    assert ours == 49 ** 5 * (2 * 1) * (3 * 2) * (4 * 3) * (5 * 4) * (6 * 5) == 24_405_861_513_600
    assert decode.count_cell_structures(5, 7, distinct_inputs=True, ordered=False) == ours // 2 ** 5


def _alpha_for(genotype, num_blocks):
    """alpha logits whose decoding must be `genotype` ((state, op) pairs, stronger first), with the
    edge rows laid out as decode.py documents: row of (block i, state j) = sum_{t<i} (t + 2) + j."""
    alpha = np.zeros((sum(t + 2 for t in range(num_blocks)), len(architecture.OP_VOCABULARY)))
    for k, (j, op) in enumerate(genotype):
        i = k // 2
        alpha[sum(t + 2 for t in range(i)) + j, op] = 4.0 if k % 2 == 0 else 3.0
    return alpha


def test_decoder_emits_exactly_the_distinct_nonzero_space():
    """B = 2: every ordered genotype with distinct inputs and non-zero ops is what decode_cell returns
    for an alpha favouring it, and random alphas never decode outside that set."""
    ops = architecture.OP_VOCABULARY
    zero = ops.index(architecture.ZERO_OP)
    nonzero = [k for k in range(len(ops)) if k != zero]
    space = set()
    for i0 in itertools.permutations(range(2), 2):
        for i1 in itertools.permutations(range(3), 2):
            for o in itertools.product(nonzero, repeat=4):
                genotype = ((i0[0], o[0]), (i0[1], o[1]), (i1[0], o[2]), (i1[1], o[3]))
                got = decode.decode_cell(_alpha_for(genotype, 2))
                assert got == (tuple(ops[op] for _, op in genotype), tuple(j for j, _ in genotype))
                space.add(got)
    assert len(space) == decode.count_cell_structures(2, 7, distinct_inputs=True) == 28812
    rng = np.random.default_rng(0)
    for _ in range(300):
        assert decode.decode_cell(rng.standard_normal((5, 8)) * 3) in space


def test_decoder_emits_every_path():
    """Viterbi reaches every path of the trellis (first layer at stride 4 or 8), L = 5."""
    emitted = set()
    for path in itertools.product(range(4), repeat=5):
        levels = (0,) + path
        if any(abs(b - a) > 1 for a, b in zip(levels, levels[1:])):
            continue
        beta = np.zeros((5, 4, 3))
        for l in range(5):
            beta[l, levels[l], levels[l + 1] - levels[l] + 1] = 8.0
        emitted.add(tuple(trellis.viterbi(trellis.softmax_beta_np(beta))))
    assert len(emitted) == _paths_brute_force(5, (0, 1)) == trellis.count_paths(5)
