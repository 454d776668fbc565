"""Decoding alpha and beta into an `Architecture` (paper Sec. 4.3).

Edge layout of alpha [E, 8] (E = 2 + 3 + ... + (B + 1) = 20 for B = 5): block i reads the states
0 .. i+1 in the OFFICIAL hidden-state order (0 = H^{l-1}, 1 = H^{l-2}, 2 + k = block k), and edge
(i, j) is row `edge_index(i, j) = sum_{t < i} (t + 2) + j`. Note that DARTS orders the two cell inputs
the other way round; here the row index is directly the official `hiddenstate_indices` value.

Cell rule: per block keep the two predecessors with the largest strength max_{op != zero}
softmax(alpha[e]); on each, take the argmax over the non-zero ops (so `zero` is never emitted). The
kept pair is written strongest first (= left in the official genotype); ties go to the lower state.
Network rule: Viterbi over the eq. 7-normalised beta (`trellis.viterbi`).
"""

from __future__ import annotations

import numpy as np

from nas_deeplab import architecture
from nas_deeplab.search import trellis

OPS = architecture.OP_VOCABULARY
ZERO_INDEX = OPS.index(architecture.ZERO_OP)


def num_edges(num_blocks: int) -> int:
    return sum(i + 2 for i in range(num_blocks))


def edge_index(block: int, state: int) -> int:
    if not 0 <= state <= block + 1:
        raise ValueError(f"block {block} cannot read state {state}")
    return sum(t + 2 for t in range(block)) + state


def edges(num_blocks: int) -> list[tuple[int, int]]:
    """[(block, state)] in row order of alpha."""
    return [(i, j) for i in range(num_blocks) for j in range(i + 2)]


def softmax_np(x, axis=-1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def decode_cell(alpha: np.ndarray) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """alpha [E, 8] logits -> (operations, hiddenstate_indices) in official genotype form."""
    alpha = np.asarray(alpha)
    if alpha.ndim != 2 or alpha.shape[1] != len(OPS):
        raise ValueError(f"alpha must have shape [edges, {len(OPS)}], got {alpha.shape}")
    num_blocks = 0
    while num_edges(num_blocks) < alpha.shape[0]:
        num_blocks += 1
    if num_edges(num_blocks) != alpha.shape[0]:
        raise ValueError(f"alpha has {alpha.shape[0]} rows, which is no valid block count's edge count")
    probs = softmax_np(alpha)
    nonzero = np.delete(np.arange(len(OPS)), ZERO_INDEX)
    ops, idx = [], []
    for i in range(num_blocks):
        cands = []
        for j in range(i + 2):
            p = probs[edge_index(i, j)][nonzero]
            cands.append((-p.max(), j, OPS[nonzero[int(np.argmax(p))]]))
        cands.sort()  # strongest first; ties -> lower state index
        for _, j, op in cands[:2]:
            ops.append(op)
            idx.append(j)
    return tuple(ops), tuple(idx)


def count_cell_structures(num_blocks: int, num_ops: int = len(OPS), *, distinct_inputs: bool = False,
                          ordered: bool = True) -> int:
    """Size of the cell space: B blocks, each the sum of two branches (input state, op), block i
    (0-based) choosing its inputs among the i + 2 states H^{l-1}, H^{l-2} and blocks 0..i-1.

    * The paper's 5.6e14 (Sec. 5.1, B = 5) is PNASNet's count, |I_b|^2 |O|^2 per block: both branches
      chosen independently (an input may repeat), the 8 ops including zero, the branches ordered:
      `count_cell_structures(5)` = prod_{n=2..6} (8 n)^2 = 8^10 * 720^2 = 556,627,761,561,600.
    * What `decode_cell` can emit (two distinct predecessors, 7 non-zero ops, stronger first):
      `count_cell_structures(5, 7, distinct_inputs=True)` = 49^5 * 86,400 = 24,405,861,513,600; as
      networks (a block's two branches are summed, so their order does not matter) `ordered=False`
      halves each block: 762,683,172,300.
    """
    total = 1
    for i in range(num_blocks):
        n = i + 2
        if distinct_inputs:
            total *= (n * (n - 1) if ordered else n * (n - 1) // 2) * num_ops ** 2
        else:
            m = n * num_ops  # choices of one branch
            total *= m * m if ordered else m * (m + 1) // 2
    return total


def decode_network(beta: np.ndarray) -> list[int]:
    """beta [L, 4, 3] logits -> backbone levels (0 = stride 4) of the Viterbi path."""
    return trellis.viterbi(trellis.softmax_beta_np(beta))


def decode(alpha: np.ndarray, beta: np.ndarray, filter_multiplier: int,
           name: str = "searched") -> architecture.Architecture:
    ops, idx = decode_cell(alpha)
    return architecture.Architecture(operations=ops, hiddenstate_indices=idx,
                                     backbone=tuple(decode_network(beta)),
                                     filter_multiplier=int(filter_multiplier), name=name)


def alpha_favouring(operations, hiddenstate_indices, strong=4.0, weak=3.0) -> np.ndarray:
    """A hand-built alpha whose decoding is the given genotype (left edge `strong`, right `weak`);
    used by tests and handy for checking a decoder by hand."""
    num_blocks = len(operations) // 2
    alpha = np.zeros((num_edges(num_blocks), len(OPS)), np.float32)
    for k, (op, j) in enumerate(zip(operations, hiddenstate_indices)):
        alpha[edge_index(k // 2, j), OPS.index(op)] = strong if k % 2 == 0 else weak
    return alpha
