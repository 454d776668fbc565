"""Cell decoding (top-2 predecessors, non-zero argmax) and full architecture decoding."""

import numpy as np

from nas_deeplab import architecture
from nas_deeplab.search import decode

OPS = architecture.OP_VOCABULARY


def test_edge_layout():
    assert decode.num_edges(5) == 20
    assert decode.edges(2) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert decode.edge_index(4, 5) == 19 and decode.edge_index(1, 0) == 2


def test_official_cell_decodes_exactly():
    alpha = decode.alpha_favouring(architecture.PUBLISHED_OPERATIONS,
                                   architecture.PUBLISHED_HIDDENSTATE_INDICES)
    alpha += np.random.default_rng(0).standard_normal(alpha.shape).astype(np.float32) * 0.01
    ops, idx = decode.decode_cell(alpha)
    assert ops == architecture.PUBLISHED_OPERATIONS
    assert idx == architecture.PUBLISHED_HIDDENSTATE_INDICES
    beta = np.zeros((12, 4, 3))
    prev = 0
    for l, v in enumerate(architecture.PUBLISHED_BACKBONE):
        beta[l, prev, v - prev + 1] = 4.0
        prev = v
    arch = decode.decode(alpha, beta, filter_multiplier=20)
    assert arch.is_published()


def test_hand_built_alpha_expected_genotype_and_order():
    # B=2: block 0 edges (0,0),(0,1); block 1 edges (1,0),(1,1),(1,2)
    alpha = np.zeros((5, 8), np.float32)
    alpha[0, OPS.index("max_pool_3x3")] = 1.0
    alpha[1, OPS.index("atrous_3x3")] = 2.0       # stronger -> left
    alpha[2, OPS.index("skip_connect")] = 0.5
    alpha[3, OPS.index("separable_5x5_2")] = 3.0  # strongest of block 1 -> left
    alpha[4, OPS.index("avg_pool_3x3")] = 1.5
    ops, idx = decode.decode_cell(alpha)
    assert ops == ("atrous_3x3", "max_pool_3x3", "separable_5x5_2", "avg_pool_3x3")
    assert idx == (1, 0, 1, 2)


def test_zero_is_never_emitted_and_does_not_count_as_strength():
    alpha = np.zeros((5, 8), np.float32)
    zero = OPS.index("zero")
    alpha[:, zero] = 10.0                         # zero dominates every edge
    alpha[2, OPS.index("atrous_5x5")] = 0.3       # edge (1,0): best non-zero strength
    alpha[4, OPS.index("max_pool_3x3")] = 0.2     # edge (1,2)
    alpha[3, zero] = 50.0                         # edge (1,1) even more zero: weakest non-zero
    ops, idx = decode.decode_cell(alpha)
    assert "zero" not in ops
    assert ops[2:] == ("atrous_5x5", "max_pool_3x3") and idx[2:] == (0, 2)
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.standard_normal((20, 8)) * 3
        a[:, zero] += 5
        ops, _ = decode.decode_cell(a)
        assert "zero" not in ops
