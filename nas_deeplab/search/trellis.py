"""The network-level search space as data: the trellis of (layer, level) nodes and its transitions.

Conventions (used by the supernet, decoding and the saved `beta.npy`):

* Levels 0..3 are output strides 4, 8, 16, 32 (as in the official `backbone` list).
* Layers 0..L-1 are the paper's layers 1..L. The stride-4 stem output is the single source of
  layer 0, so layer 0 may sit at level 0 or 1 (stride 4 or 8) as in the paper (Sec. 3.2).
* A node (l, v) exists iff it is reachable from the stem: v <= l + 1.
* beta has shape [L, num_levels (4), 3]: beta[l, src, k] is the logit of the transition from level `src` of layer
  l-1 (the stem for l = 0) to level `src + k - 1` of layer l. k = 0: to the finer level (upsampling),
  k = 1: same level, k = 2: to the coarser level (stride-2 cell).
* beta is normalised with a softmax over each source node's OUTGOING valid transitions (paper eq. 7):
  edge levels 0 and 3 have two. Rows of sources that do not exist are unused (kept for a fixed shape).

Counting paths: with layer 0 at stride 4 or 8 (this search space, the paper's wording) L=12 gives
75,025 paths; fixing layer 0 at stride 4 gives 28,657, the paper's "2.9e4" (numbers.md). Our space is
the former; `count_paths(L, first_levels=(0,))` reproduces the latter.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

NUM_LEVELS = 4
NUM_DIRECTIONS = 3  # k = 0 finer (upsample), 1 same, 2 coarser (downsample)
UP, SAME, DOWN = 0, 1, 2
DIRECTION_NAMES = ("upsample", "same", "downsample")


def stride_of(level: int) -> int:
    return 2 ** (level + 2)


def node_exists(layer: int, level: int, num_levels: int = NUM_LEVELS) -> bool:
    """Layer -1 is the stem (level 0 only); layer l >= 0 holds levels 0..min(l + 1, num_levels - 1)."""
    if layer < 0:
        return level == 0 and layer == -1
    return 0 <= level <= min(layer + 1, num_levels - 1)


def levels_of(layer: int, num_levels: int = NUM_LEVELS) -> list[int]:
    return [v for v in range(num_levels) if node_exists(layer, v, num_levels)]


def transition_valid(src: int, k: int, num_levels: int = NUM_LEVELS) -> bool:
    dst = src + k - 1
    return 0 <= dst < num_levels


def valid_mask(num_layers: int, num_levels: int = NUM_LEVELS) -> np.ndarray:
    """[L, num_levels, 3] bool: transition exists (its source node exists and its target is in range)."""
    m = np.zeros((num_layers, num_levels, NUM_DIRECTIONS), bool)
    for l in range(num_layers):
        for src in levels_of(l - 1, num_levels):
            for k in range(NUM_DIRECTIONS):
                m[l, src, k] = transition_valid(src, k, num_levels)
    return m


def direction_mask(num_levels: int = NUM_LEVELS) -> np.ndarray:
    """[num_levels, 3] bool: which outgoing directions are in range for each source level."""
    return np.array([[transition_valid(s, k, num_levels) for k in range(NUM_DIRECTIONS)]
                     for s in range(num_levels)])


def incoming(layer: int, level: int, num_levels: int = NUM_LEVELS) -> list[tuple[int, int]]:
    """[(src_level, k)] of the transitions entering node (layer, level), ordered downsample (from the
    finer level), same, upsample (from the coarser level): the supernet's direction batch order."""
    out = []
    for src in (level - 1, level, level + 1):
        if node_exists(layer - 1, src, num_levels):
            k = level - src + 1
            out.append((src, k))
    return out


def softmax_beta_np(beta: np.ndarray, num_levels: int | None = None) -> np.ndarray:
    """Numpy version of the eq. 7 normalisation (invalid entries are exactly 0)."""
    beta = np.asarray(beta, np.float64)
    num_levels = beta.shape[-2] if num_levels is None else num_levels
    mask = np.broadcast_to(direction_mask(num_levels), beta.shape)
    z = np.where(mask, beta, -np.inf)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.where(mask, np.exp(z), 0.0)
    return e / e.sum(axis=-1, keepdims=True)


def softmax_beta_tf(beta, num_levels: int | None = None):
    """TF version used in the forward pass (one softmax, over valid outgoing transitions only)."""
    import tensorflow as tf
    num_levels = int(beta.shape[-2]) if num_levels is None else num_levels
    mask = tf.constant(direction_mask(num_levels))
    mask = tf.broadcast_to(mask, tf.shape(beta))
    z = tf.where(mask, beta, tf.fill(tf.shape(beta), tf.constant(-1e9, beta.dtype)))
    return tf.where(mask, tf.nn.softmax(z, axis=-1), tf.zeros_like(beta))


# -- paths -------------------------------------------------------------------------------------------
def enumerate_paths(num_layers: int, first_levels: Sequence[int] = (0, 1),
                    num_levels: int = NUM_LEVELS) -> Iterable[tuple[int, ...]]:
    """Every level sequence (brute force): first level in `first_levels`, steps of -1/0/+1."""
    def rec(prefix):
        if len(prefix) == num_layers:
            yield tuple(prefix)
            return
        for d in (-1, 0, 1):
            v = prefix[-1] + d
            if 0 <= v < num_levels:
                yield from rec(prefix + [v])
    for v in first_levels:
        yield from rec([v])


def count_paths(num_layers: int, first_levels: Sequence[int] = (0, 1),
                num_levels: int = NUM_LEVELS) -> int:
    """Number of paths by dynamic programming (checked against `enumerate_paths` in tests)."""
    counts = np.zeros(num_levels, np.int64)
    counts[list(first_levels)] = 1
    for _ in range(num_layers - 1):
        new = np.zeros_like(counts)
        for v in range(num_levels):
            for d in (-1, 0, 1):
                if 0 <= v + d < num_levels:
                    new[v] += counts[v + d]
        counts = new
    return int(counts.sum())


def path_log_prob(path: Sequence[int], beta_probs: np.ndarray) -> float:
    """log P(path) = sum of log transition probabilities, starting from the stem at level 0."""
    lp, prev = 0.0, 0
    for l, v in enumerate(path):
        k = v - prev + 1
        if not 0 <= k < NUM_DIRECTIONS:
            return -math.inf
        p = float(beta_probs[l, prev, k])
        lp += math.log(p) if p > 0 else -math.inf
        prev = v
    return lp


def viterbi(beta_probs: np.ndarray, num_levels: int | None = None) -> list[int]:
    """Maximum-probability level sequence through the trellis (paper Sec. 4.3), from the stem (level 0)
    to any level of the last layer. `beta_probs` [L, num_levels, 3] is the eq. 7-normalised beta."""
    beta_probs = np.asarray(beta_probs, np.float64)
    num_layers = beta_probs.shape[0]
    num_levels = beta_probs.shape[1] if num_levels is None else num_levels
    with np.errstate(divide="ignore"):
        logp = np.log(beta_probs)
    score = np.full(num_levels, -np.inf)
    score[0] = 0.0  # the stem
    back = np.zeros((num_layers, num_levels), np.int64)
    for l in range(num_layers):
        new = np.full(num_levels, -np.inf)
        for v in range(num_levels):
            if not node_exists(l, v, num_levels):
                continue
            for src in (v - 1, v, v + 1):  # ties -> the first (finer) source, deterministic
                if 0 <= src < num_levels and score[src] > -np.inf:
                    s = score[src] + logp[l, src, v - src + 1]
                    if s > new[v]:
                        new[v], back[l, v] = s, src
        score = new
    v = int(np.argmax(score))
    path = [v]
    for l in range(num_layers - 1, 0, -1):
        v = int(back[l, v])
        path.append(v)
    return path[::-1]


def brute_force_best_path(beta_probs: np.ndarray, first_levels: Sequence[int] = (0, 1)) -> tuple:
    num_layers = beta_probs.shape[0]
    best, best_lp = None, -math.inf
    for p in enumerate_paths(num_layers, first_levels, beta_probs.shape[1]):
        lp = path_log_prob(p, beta_probs)
        if lp > best_lp:
            best, best_lp = p, lp
    return best, best_lp


def all_nodes(num_layers: int, num_levels: int = NUM_LEVELS) -> list[tuple[int, int]]:
    return [(l, v) for l in range(num_layers) for v in levels_of(l, num_levels)]

