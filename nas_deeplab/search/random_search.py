"""Random search baseline: an architecture drawn uniformly from the space the decoder can emit.

Why: a searched architecture only means something against random ones from the same space (Li &
Talwalkar 2019, "Random search and reproducibility for NAS"). The space is exactly what
`search/decode.py` can return:

* cell: per block i, two DISTINCT inputs among the states 0 .. i+1 (official order: 0 = H^{l-1},
  1 = H^{l-2}, 2 + k = block k), ordered (the decoder emits the stronger first), each with one of the 7
  non-zero ops of `architecture.OP_VOCABULARY`, drawn independently. Since the two inputs differ,
  uniform over ordered pairs is also uniform over the unordered cells they describe.
* network: one path of the trellis (`search/trellis.py`: first layer at a level of `first_levels`,
  then steps of -1/0/+1 within 0 .. num_levels-1), uniform over ALL paths. A random walk is not
  uniform (paths through the edge levels, which have fewer moves, would be favoured), so the path is
  drawn by counting completions with dynamic programming and choosing each next level with probability
  proportional to the number of paths through it, with exact integer arithmetic.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nas_deeplab import architecture as arch_lib
from nas_deeplab.search import trellis

NONZERO_OPS = tuple(op for op in arch_lib.OP_VOCABULARY if op != arch_lib.ZERO_OP)


def completions(num_layers: int, num_levels: int = trellis.NUM_LEVELS) -> list[list[int]]:
    """counts[l][v]: number of ways to finish a path that is at level v in layer l (Python ints)."""
    counts = [[0] * num_levels for _ in range(num_layers)]
    counts[-1] = [1] * num_levels
    for layer in range(num_layers - 2, -1, -1):
        for v in range(num_levels):
            counts[layer][v] = sum(counts[layer + 1][w] for w in (v - 1, v, v + 1) if 0 <= w < num_levels)
    return counts


def _pick(rng: np.random.Generator, options: Sequence[int], weights: Sequence[int]) -> int:
    """An option with probability weight / sum(weights), exactly (integer draw, no float rounding)."""
    total = sum(weights)
    r = int(rng.integers(total))
    for option, w in zip(options, weights):
        if r < w:
            return option
        r -= w
    raise AssertionError("unreachable")


def random_path(rng: np.random.Generator, num_layers: int, first_levels: Sequence[int] = (0, 1),
                num_levels: int = trellis.NUM_LEVELS) -> tuple[int, ...]:
    """A level sequence uniform over the `trellis.count_paths(num_layers, first_levels, num_levels)` paths."""
    first = sorted(set(int(v) for v in first_levels))
    if num_layers < 1 or not first or not all(0 <= v < num_levels for v in first):
        raise ValueError(f"need num_layers >= 1 and first_levels in 0..{num_levels - 1}, got "
                         f"{num_layers} and {list(first_levels)}")
    counts = completions(num_layers, num_levels)
    path = [_pick(rng, first, [counts[0][v] for v in first])]
    for layer in range(1, num_layers):
        nxt = [w for w in (path[-1] - 1, path[-1], path[-1] + 1) if 0 <= w < num_levels]
        path.append(_pick(rng, nxt, [counts[layer][w] for w in nxt]))
    return tuple(path)


def random_cell(rng: np.random.Generator, num_blocks: int = 5) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(operations, hiddenstate_indices): per block two distinct inputs, each with a non-zero op."""
    ops, idx = [], []
    for block in range(num_blocks):
        left, right = rng.choice(block + 2, size=2, replace=False)
        for state in (left, right):
            idx.append(int(state))
            ops.append(NONZERO_OPS[int(rng.integers(len(NONZERO_OPS)))])
    return tuple(ops), tuple(idx)


def random_architecture(seed: int, num_layers: int = 12, num_blocks: int = 5, filter_multiplier: int = 8,
                        num_levels: int = trellis.NUM_LEVELS,
                        first_levels: Sequence[int] = (0, 1)) -> arch_lib.Architecture:
    """An `Architecture` named `random_<seed>`, uniform over the decodable space; same seed, same result."""
    rng = np.random.default_rng(int(seed))
    ops, idx = random_cell(rng, num_blocks)
    path = random_path(rng, num_layers, first_levels, num_levels)
    return arch_lib.Architecture(ops, idx, path, filter_multiplier, name=f"random_{seed}")
