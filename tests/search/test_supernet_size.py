"""The supernet's weight count, derived from the search space and the op definitions (written out
here, not read from the code), checked on small supernets and at the paper's size (L=12, B=5, F=8,
4 levels, 19 classes), which builds in a few seconds (no graph: the variables only).

Count, per the paper (Sec. 3, 4.1) and the official op definitions (spec official-hnasnet.md 1.5):
* stem: three 3x3 convs 3 -> 64 -> 64 -> 128 (official stem; BN in the search is non-affine: 0);
* the state at stride s has B * F * s / 4 channels, a node's blocks F * s / 4 (= C);
* node (l, v) exists for v <= min(l + 1, 3); its inputs are the layer l-1 nodes at levels v-1 (then a
  stride-2 cell), v, v+1 (the stem, stride 4, for l = 0). One cell per node, shared by its 2-3
  incoming directions (eq. 6), plus, per direction, the cell's input 1x1 (cin -> C), and one 1x1 for
  the second input H(l-2) (the coarsest existing level of layer l-2 if level v does not exist; the
  stem's stride-2 (64) and stride-4 (128) outputs for l = 0, 1);
* a cell has sum_{i<B} (i + 2) edges, each one mixed op: sep 3x3 and sep 5x5 (2 stacked layers of
  depthwise K*K*C + pointwise C*C), atrous 3x3 / 5x5 (a regular K*K*C*C conv), pools, skip, zero (no
  weights); in a stride-2 cell the B edges that read H(l-1) stride, and their skip becomes a
  1x1 stride-2 conv (C*C each);
* the search ASPP on every level of the last layer: 1x1, 3x3, image pooling 1x1 (+ bias), B*C filters
  each, then a 1x1 (+ bias) to the classes.
"""

import numpy as np
import pytest

from nas_deeplab.search import supernet

STEM = (64, 64, 128)


def expected_weight_count(L, B, F, levels, classes):
    n = 3 * 3 * 3 * STEM[0] + 3 * 3 * STEM[0] * STEM[1] + 3 * 3 * STEM[1] * STEM[2]
    state = lambda v: B * F * 2 ** v  # noqa: E731  (channels at stride 4 * 2**v)
    exists = lambda l, v: 0 <= v <= min(l + 1, levels - 1)  # noqa: E731
    edges = sum(i + 2 for i in range(B))
    for l in range(L):
        for v in range(levels):
            if not exists(l, v):
                continue
            C = F * 2 ** v
            if l == 0:
                n += STEM[2] * C  # one direction from the stem (stride 4): same (v = 0) or down (v = 1)
                downsample = v == 1
                second = STEM[1]
            else:
                sources = [u for u in (v - 1, v, v + 1) if exists(l - 1, u)]
                n += sum(state(u) * C for u in sources)
                downsample = (v - 1) in sources
                if l == 1:
                    second = STEM[2]
                else:
                    coarsest = max(u for u in range(levels) if exists(l - 2, u))
                    second = state(v if exists(l - 2, v) else coarsest)
            n += second * C
            per_edge = 2 * (3 * 3 * C + C * C) + 2 * (5 * 5 * C + C * C) + 3 * 3 * C * C + 5 * 5 * C * C
            n += edges * per_edge
            if downsample:
                n += B * C * C
    for v in range(levels):
        if exists(L - 1, v):
            cin, filters = state(v), state(v)
            n += cin * filters + 9 * cin * filters + cin * filters + filters  # 1x1, 3x3, pool (+bias)
            n += 3 * filters * classes + classes  # logits (+bias)
    return n


def expected_arch_count(L, B, levels):
    return sum(i + 2 for i in range(B)) * 8 + L * levels * 3  # alpha [E, 8], beta [L, levels, 3]


def _built_counts(L, B, F, levels, classes):
    net = supernet.Supernet(supernet.SupernetConfig(num_classes=classes, num_layers=L, num_blocks=B,
                                                    filter_multiplier=F, num_levels=levels))
    weights = sum(int(np.prod(v.shape)) for v in net.weight_variables)
    arch = sum(int(np.prod(v.shape)) for v in net.arch_variables)
    return weights, arch


def test_the_formula_by_hand_on_the_smallest_supernet():
    """L=1, B=1, F=1, one level, 2 classes, counted by hand: stem 1728 + 36864 + 73728; node (0,0):
    pre 128*1 + prev 64*1 + 2 edges * (2*(9+1) + 2*(25+1) + 9 + 25) = 212; ASPP 1+9+1+1 + 3*2+2 = 20."""
    assert expected_weight_count(1, 1, 1, 1, 2) == 1728 + 36864 + 73728 + 128 + 64 + 212 + 20


@pytest.mark.parametrize("L,B,F,levels,classes", [(1, 1, 1, 1, 2), (2, 2, 2, 4, 3), (4, 3, 2, 4, 5),
                                                   (5, 2, 3, 3, 6), (6, 5, 1, 4, 19)])
def test_small_supernets_have_the_derived_count(L, B, F, levels, classes):
    weights, arch = _built_counts(L, B, F, levels, classes)
    assert weights == expected_weight_count(L, B, F, levels, classes)
    assert arch == expected_arch_count(L, B, levels)


def test_paper_size_supernet_has_the_derived_count():
    """47,040,252 weights and 304 architecture parameters (the formula's values)."""
    weights, arch = _built_counts(12, 5, 8, 4, 19)
    assert weights == expected_weight_count(12, 5, 8, 4, 19)
    assert arch == expected_arch_count(12, 5, 4) == 20 * 8 + 12 * 4 * 3
