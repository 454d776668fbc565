"""The cell picture is readable: checked geometrically, not by eye.

From the layout `visualize.cell_layout` computes (boxes, label rectangles, edge polylines) and from
the text the renderer actually draws: no op label overlaps another label, a box or the title; none
is cut by the figure; no edge segment runs through a box (or through another edge's label); every
edge joins the right boxes with the right op, left to right. For the published cell, for cells that
read far-back states with skip/pool ops, and for random genotypes.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from matplotlib.text import Text
from PIL import Image

from nas_deeplab import architecture as A
from nas_deeplab.search import visualize as V

EPS = 0.5  # points: touching is fine, entering is not
OPS = [o for o in A.OP_VOCABULARY if o != A.ZERO_OP]


def _random_arch(seed: int, num_blocks: int = 5) -> A.Architecture:
    r = random.Random(seed)
    return A.Architecture([r.choice(OPS) for _ in range(2 * num_blocks)],
                          [r.randint(0, k // 2 + 1) for k in range(2 * num_blocks)], A.PUBLISHED_BACKBONE, 8)


CELLS = {
    "published": A.published(),
    # block 4 reads H(l-1) and H(l-2), block 3 reads block 2 and block 1: edges that skip columns.
    "far_back": A.Architecture(
        ["skip_connect", "max_pool_3x3", "avg_pool_3x3", "separable_5x5_2", "atrous_3x3", "skip_connect",
         "separable_3x3_2", "max_pool_3x3", "separable_5x5_2", "avg_pool_3x3"],
        [0, 1, 2, 0, 3, 1, 4, 3, 0, 1], A.PUBLISHED_BACKBONE, 8),
    # a chain 0 -> 1 -> 2 -> 3 -> 4, each block also reading an input: the longest edges possible.
    "chain": A.Architecture(["separable_5x5_2"] * 10, [1, 0, 2, 1, 3, 0, 4, 1, 5, 0], A.PUBLISHED_BACKBONE, 8),
    # both ops of every block read the same state (two edges between the same boxes).
    "same_inputs": A.Architecture(["max_pool_3x3", "skip_connect"] * 3, [0, 0, 1, 1, 3, 3],
                                  A.PUBLISHED_BACKBONE, 8),
    **{f"random_{s}": _random_arch(s) for s in (1, 2, 3, 4)},
    "random_7_blocks": _random_arch(7, num_blocks=7),
}


def _overlap(a, b) -> bool:
    """Open rectangles (x0, y0, x1, y1) share area (more than EPS deep)."""
    return min(a[2], b[2]) - max(a[0], b[0]) > EPS and min(a[3], b[3]) - max(a[1], b[1]) > EPS


def _segment_enters(p, q, r) -> bool:
    """Does segment p-q pass through the interior of rectangle r (shrunk by EPS)? Liang-Barsky."""
    lo, hi = 0.0, 1.0
    for a, d, rmin, rmax in ((p[0], q[0] - p[0], r[0] + EPS, r[2] - EPS),
                             (p[1], q[1] - p[1], r[1] + EPS, r[3] - EPS)):
        if d == 0:
            if not rmin < a < rmax:
                return False
            continue
        t0, t1 = sorted(((rmin - a) / d, (rmax - a) / d))
        lo, hi = max(lo, t0), min(hi, t1)
    return lo < hi


def _rect(r) -> tuple:
    return (r.x0, r.y0, r.x1, r.y1)


def _expected_edges(arch):
    names = ["H(l-1)", "H(l-2)"] + [f"block {k}" for k in range(arch.num_blocks)]
    out = [(names[j], f"block {k}", op) for k in range(arch.num_blocks) for op, j in arch.block(k)]
    return sorted(out + [(f"block {k}", "concat", None) for k in range(arch.num_blocks)], key=str)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_layout_has_no_overlaps_and_no_edge_behind_a_box(name):
    arch = CELLS[name]
    lay = V.cell_layout(arch)
    boxes = {n: _rect(r) for n, r in lay.boxes.items()}
    labels = [_rect(e.label) for e in lay.edges if e.label is not None]
    title = _rect(lay.title_rect)
    assert sorted(((e.src, e.dst, e.op) for e in lay.edges), key=str) == _expected_edges(arch)
    assert len(labels) == 2 * arch.num_blocks

    for r in labels + list(boxes.values()) + [title]:  # nothing cut by the figure
        assert 0 <= r[0] < r[2] <= lay.width and 0 <= r[1] < r[3] <= lay.height, r
    for i, a in enumerate(labels):
        assert not _overlap(a, title)
        for b in labels[i + 1:]:
            assert not _overlap(a, b), (a, b)
        for n, b in boxes.items():
            assert not _overlap(a, b), (a, n)
    for n, b in boxes.items():
        assert not _overlap(title, b)

    # Left to right: inputs first, every block right of what it reads, concat last.
    assert boxes["H(l-1)"][2] < min(b[0] for n, b in boxes.items() if n.startswith("block"))
    assert boxes["H(l-2)"][2] < min(b[0] for n, b in boxes.items() if n.startswith("block"))
    assert boxes["concat"][0] > max(b[2] for b in boxes.values() if b is not boxes["concat"])

    for e in lay.edges:
        pts = e.points
        src, dst = boxes[e.src], boxes[e.dst]
        # Starts on the source's right side, ends on the target's left side, never turns back.
        assert pts[0][0] == pytest.approx(src[2]) and src[1] <= pts[0][1] <= src[3]
        assert pts[-1][0] == pytest.approx(dst[0]) and dst[1] <= pts[-1][1] <= dst[3]
        assert all(q[0] >= p[0] for p, q in zip(pts, pts[1:]))
        for p, q in zip(pts, pts[1:]):
            for n, b in boxes.items():
                assert not _segment_enters(p, q, b), f"{e.src}->{e.dst} ({e.op}) runs through {n}"
            for other in lay.edges:
                if other.label is not None and other is not e:
                    assert not _segment_enters(p, q, _rect(other.label)), \
                        f"{e.src}->{e.dst} ({e.op}) runs under the label {other.op} of {other.dst}"
        if e.label is not None:  # the label sits on its own edge's last (horizontal) segment
            (px, py), (qx, qy) = pts[-2], pts[-1]
            cx, cy = e.label.center
            assert py == qy == pytest.approx(cy) and px < e.label.x0 and e.label.x1 < qx


@pytest.mark.parametrize("name", ["published", "far_back", "random_7_blocks"])
def test_rendered_text_matches_the_layout_and_fits(name):
    """What the renderer draws (text extents at the PNG's dpi): labels and box names inside the
    figure, no label over another label or over a box, and the PNG has the layout's size."""
    lay = V.cell_layout(CELLS[name])
    fig = V.draw_cell(lay)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_pt = 72.0 / fig.dpi
    W, H = lay.width, lay.height
    texts = [t for t in fig.findobj(Text) if t.get_text()]
    ops = {e.op for e in lay.edges if e.op}
    label_rects, box_name_rects = [], []
    for t in texts:
        patch = t.get_bbox_patch()
        bb = (patch if patch is not None else t).get_window_extent(renderer)
        r = (bb.x0 * to_pt, bb.y0 * to_pt, bb.x1 * to_pt, bb.y1 * to_pt)
        assert -EPS <= r[0] and r[2] <= W + EPS and -EPS <= r[1] and r[3] <= H + EPS, (t.get_text(), r, W, H)
        if t.get_text() in ops:
            label_rects.append(r)
        elif t.get_text() in lay.boxes:
            box_name_rects.append(r)
    assert len(label_rects) == 2 * CELLS[name].num_blocks
    assert len(box_name_rects) == len(lay.boxes)
    boxes = [_rect(b) for b in lay.boxes.values()]
    for i, a in enumerate(label_rects):
        for b in label_rects[i + 1:] + boxes:
            assert not _overlap(a, b), (a, b)
    for a in box_name_rects:  # each box name inside its box
        assert any(b[0] <= a[0] and a[2] <= b[2] and b[1] <= a[1] and a[3] <= b[3] for b in boxes), a
    img = Image.open(io.BytesIO(V.cell_png(CELLS[name])))
    assert np.allclose(img.size, (W * V.CELL_DPI / 72, H * V.CELL_DPI / 72), atol=1)  # not cropped
    assert np.asarray(img.convert("L")).min() < 100  # something was drawn
