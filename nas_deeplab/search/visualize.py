"""Pictures of the search: the decoded cell, the network path, the alpha heatmap and the beta trellis.

The `*_png` functions return PNG bytes (matplotlib, Agg backend; no graphviz), written atomically by
the caller and also decoded into TensorBoard images. The cell's geometry comes from `cell_layout`,
apart from the drawing, so a test can check that nothing in it overlaps.
"""

from __future__ import annotations

import dataclasses
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.path as mpath  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from nas_deeplab import architecture  # noqa: E402
from nas_deeplab.search import decode, trellis  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# -- the cell picture ------------------------------------------------------------------------------
# A layered left-to-right drawing: inputs in column 0, each block one column right of its latest
# input, "concat" last. An edge that skips columns passes each column in its own lane between the
# boxes, so straight segments only run in the free gaps between columns (never behind a box), and
# each op label sits on the horizontal end of its edge just left of the block it feeds, in a zone
# as wide as the widest label there. Geometry is in points (1/72 inch), y up, origin at the lower
# left of the figure: `cell_layout` returns it, `draw_cell` only draws it (tests check the layout).

INPUT_NAMES = ("H(l-1)", "H(l-2)")  # hidden-state indices 0 and 1
CONCAT_NAME = "concat"
LEFT_COLOR, RIGHT_COLOR, CONCAT_COLOR = "tab:blue", "tab:orange", "0.55"
LABEL_FONT, BOX_FONT, TITLE_FONT = 8, 9, 9
LABEL_PAD = 0.25          # label background margin, in label font sizes (matplotlib boxstyle pad)
CELL_DPI = 110
_MARGIN, _BOX_PAD_X, _ARROW_GAP, _LEAD = 10.0, 8.0, 9.0, 10.0
_GAP_BOXES, _GAP_LANE, _LANE = 16.0, 9.0, 8.0  # vertical gaps: box-box, box-lane, lane-lane
_CONCAT_PORT, _ROUTE_MIN, _ROUTE_SLOPE, _ROUTE_MAX = 7.0, 34.0, 0.35, 130.0


@dataclasses.dataclass(frozen=True)
class Rect:
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


@dataclasses.dataclass(frozen=True)
class CellEdge:
    src: str
    dst: str
    op: str | None        # None for the block -> concat edges
    color: str
    points: tuple[tuple[float, float], ...]   # polyline, src box boundary -> dst box boundary
    label: Rect | None    # where the op name is written (on the last, horizontal segment)


@dataclasses.dataclass(frozen=True)
class CellLayout:
    width: float
    height: float
    boxes: dict[str, Rect]
    edges: tuple[CellEdge, ...]
    title: str
    title_rect: Rect


def _text_sizes(texts, fontsize) -> dict[str, tuple[float, float]]:
    """(width, height) in points of each text as the Agg renderer draws it."""
    fig = Figure(dpi=72)
    renderer = FigureCanvasAgg(fig).get_renderer()
    sizes = {}
    for s in set(texts):
        bb = fig.text(0, 0, s, fontsize=fontsize).get_window_extent(renderer)
        sizes[s] = (bb.width, bb.height)
    return sizes


def _pack(desired, weights, gaps):
    """Positions closest (weighted least squares) to `desired` keeping y[i+1] - y[i] >= gaps[i]
    (pool-adjacent-violators on the gap-shifted targets)."""
    offsets = np.concatenate([[0.0], np.cumsum(gaps)])
    blocks = []  # [mean, weight, count]
    for d, w in zip(np.asarray(desired) - offsets, weights):
        blocks.append([d, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    z = np.concatenate([[m] * n for m, _, n in blocks])
    return z + offsets


def cell_layout(arch: architecture.Architecture) -> CellLayout:
    """Where every box, edge and label of the cell picture goes (see the section comment)."""
    B = arch.num_blocks
    names = list(INPUT_NAMES) + [f"block {k}" for k in range(B)] + [CONCAT_NAME]
    concat = len(names) - 1
    raw = [(j, 2 + k, op, color) for k in range(B)
           for (op, j), color in zip(arch.block(k), (LEFT_COLOR, RIGHT_COLOR))]
    raw += [(2 + k, concat, None, CONCAT_COLOR) for k in range(B)]
    column = [0, 0] + [0] * B + [0]
    for k in range(B):
        column[2 + k] = 1 + max(column[j] for _, j in arch.block(k))
    column[concat] = 1 + max(column[2:concat])
    n_cols = column[concat] + 1

    # Items per column: real nodes (ints) and lanes (("lane", edge, column)) of column-skipping edges.
    chains = [[s] + [("lane", e, c) for c in range(column[s] + 1, column[d])] + [d]
              for e, (s, d, _, _) in enumerate(raw)]
    cols = [[] for _ in range(n_cols)]
    cols[0] = [1, 0]  # H(l-2) above H(l-1), fixed
    for v in range(2, len(names)):
        cols[column[v]].append(v)
    for chain in chains:
        for lane in chain[1:-1]:
            cols[lane[2]].append(lane)
    pairs = [(u, v) for chain in chains for u, v in zip(chain, chain[1:])]
    preds, succs = {}, {}
    for u, v in pairs:
        preds.setdefault(v, []).append(u)
        succs.setdefault(u, []).append(v)

    def col_of(item):
        return item[2] if isinstance(item, tuple) else column[item]

    def crossings():
        pos = {it: i for col in cols for i, it in enumerate(col)}
        n = 0
        for c in range(n_cols - 1):
            ps = [(pos[u], pos[v]) for u, v in pairs if col_of(u) == c]
            n += sum((a0 - b0) * (a1 - b1) < 0 for i, (a0, a1) in enumerate(ps) for b0, b1 in ps[i + 1:])
        return n

    best = (crossings(), [list(c) for c in cols])
    for _ in range(4):  # barycentre sweeps, keeping the order with fewest crossings
        for order, nbrs in ((range(1, n_cols), preds), (range(n_cols - 2, 0, -1), succs)):
            for c in order:
                pos = {it: i / max(len(col), 1) for col in cols for i, it in enumerate(col)}
                cols[c].sort(key=lambda it: (np.mean([pos[n] for n in nbrs.get(it, [])] or [pos[it]]),
                                             pos[it]))
            best = min(best, (crossings(), [list(c) for c in cols]), key=lambda b: b[0])
    cols = best[1]

    # Sizes.
    label_sizes = _text_sizes([op for _, _, op, _ in raw if op], LABEL_FONT)
    box_sizes = _text_sizes(names, BOX_FONT)
    pad = LABEL_PAD * LABEL_FONT
    label_h = max(h for _, h in label_sizes.values()) + 2 * pad
    port = label_h / 2 + 1.5                      # input ports at centre -/+ port: labels never touch
    box_w = max(w for w, _ in box_sizes.values()) + 2 * _BOX_PAD_X
    box_h = max(2 * port + label_h, max(h for _, h in box_sizes.values()) + 12)
    concat_h = max(box_h, B * _CONCAT_PORT + 10)
    height_of = {it: 0.0 if isinstance(it, tuple) else (concat_h if it == concat else box_h)
                 for col in cols for it in col}

    def gap(a, b):
        la, lb = isinstance(a, tuple), isinstance(b, tuple)
        between = _LANE if la and lb else (_GAP_LANE if la or lb else _GAP_BOXES)
        return height_of[a] / 2 + between + height_of[b] / 2

    # Vertical positions (downwards from 0): start stacked, then pull every item towards its
    # neighbours (lanes weigh more so long edges run straight), keeping the gaps.
    y = {}
    for col in cols:
        acc = 0.0
        for i, it in enumerate(col):
            acc += gap(col[i - 1], it) if i else 0.0
            y[it] = acc
    for sweep in range(12):
        order = range(n_cols) if sweep % 2 == 0 else range(n_cols - 1, -1, -1)
        for c in order:
            col = cols[c]
            desired = [np.mean([y[n] for n in preds.get(it, []) + succs.get(it, [])] or [y[it]])
                       for it in col]
            weights = [4.0 if isinstance(it, tuple) else 1.0 for it in col]
            for it, v in zip(col, _pack(desired, weights, [gap(a, b) for a, b in zip(col, col[1:])])):
                y[it] = v

    # Ports: the two inputs of a block, upper one to the edge arriving from higher up; the concat
    # inputs evenly spread in the same order.
    arrivals = {}
    for e, chain in enumerate(chains):
        arrivals.setdefault(chain[-1], []).append((y[chain[-2]], e))
    port_y = {}
    for v, arr in arrivals.items():
        arr.sort()
        n = len(arr)
        step = 2 * port if v != concat else _CONCAT_PORT
        for i, (_, e) in enumerate(arr):
            port_y[e] = y[v] + (i - (n - 1) / 2) * step

    def entry_y(item, e):
        return y[item] if isinstance(item, tuple) else port_y[e]

    # Horizontal positions: per column a routing gap (wider for steeper edges), a label zone as wide
    # as the widest label written there, then the boxes.
    label_zone = [0.0] * n_cols
    for e, (s, d, op, _) in enumerate(raw):
        c = column[d]
        label_zone[c] = max(label_zone[c], (label_sizes[op][0] + 2 * pad + _ARROW_GAP + _LEAD) if op
                            else _ARROW_GAP + 4)
    title = "cell   blue: left op   orange: right op   grey: into the concat"
    title_w, title_h = _text_sizes([title], TITLE_FONT)[title]
    shift = _MARGIN + title_h + 8 - min(y[it] - height_of[it] / 2 for col in cols for it in col)
    y = {it: v + shift for it, v in y.items()}
    port_y = {e: v + shift for e, v in port_y.items()}
    x = [_MARGIN]
    for c in range(1, n_cols):
        dys = [abs(y[u] - entry_y(v, e)) for e, chain in enumerate(chains)
               for u, v in zip(chain, chain[1:]) if col_of(v) == c]
        route = float(np.clip(_ROUTE_SLOPE * max(dys, default=0.0), _ROUTE_MIN, _ROUTE_MAX))
        x.append(x[-1] + box_w + route + label_zone[c])
    width = max(x[-1] + box_w + _MARGIN, title_w + 2 * _MARGIN)
    height = max(y[it] + height_of[it] / 2 for col in cols for it in col) + _MARGIN
    flip = lambda v: height - v  # noqa: E731  (downward layout coordinates -> matplotlib's upward)

    boxes = {}
    for v in range(len(names)):
        x0 = x[column[v]]
        boxes[names[v]] = Rect(x0, flip(y[v] + height_of[v] / 2), x0 + box_w, flip(y[v] - height_of[v] / 2))
    edges = []
    for e, ((s, d, op, color), chain) in enumerate(zip(raw, chains)):
        pts = [(x[column[s]] + box_w, y[s])]
        for lane in chain[1:-1]:
            c = lane[2]
            pts += [(x[c] - label_zone[c], y[lane]), (x[c] + box_w, y[lane])]
        pts += [(x[column[d]] - label_zone[column[d]], port_y[e]), (x[column[d]], port_y[e])]
        merged = [pts[0]]
        for p, q in zip(pts[1:], pts[2:] + [None]):
            if q is not None and merged[-1][1] == p[1] == q[1]:
                continue  # drop the middle of a straight horizontal run
            merged.append(p)
        label = None
        if op:
            lw = label_sizes[op][0] + 2 * pad
            x1 = x[column[d]] - _ARROW_GAP
            label = Rect(x1 - lw, flip(port_y[e] + label_h / 2), x1, flip(port_y[e] - label_h / 2))
        edges.append(CellEdge(names[s], names[d], op, color,
                              tuple((px, flip(py)) for px, py in merged), label))
    title_rect = Rect(_MARGIN, height - _MARGIN - title_h, _MARGIN + title_w, height - _MARGIN)
    return CellLayout(width, height, boxes, tuple(edges), title, title_rect)


def draw_cell(layout: CellLayout, dpi: int = CELL_DPI) -> Figure:
    """The figure of a `cell_layout`: exactly its size, one axes unit = one point."""
    fig = Figure(figsize=(layout.width / 72, layout.height / 72), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, layout.width)
    ax.set_ylim(0, layout.height)
    ax.axis("off")
    for edge in layout.edges:
        ax.add_patch(FancyArrowPatch(path=mpath.Path(edge.points), color=edge.color, lw=1.1, zorder=1,
                                     arrowstyle="-|>,head_length=6,head_width=3", shrinkA=0, shrinkB=0))
        if edge.label is not None:
            cx, cy = edge.label.center
            ax.text(cx, cy, edge.op, fontsize=LABEL_FONT, ha="center", va="center", color=edge.color,
                    zorder=3, bbox=dict(boxstyle=f"square,pad={LABEL_PAD}", fc="white", ec="none"))
    for name, r in layout.boxes.items():
        fc = "lightyellow" if name in INPUT_NAMES else ("0.9" if name == CONCAT_NAME else "lightblue")
        ax.add_patch(FancyBboxPatch((r.x0, r.y0), r.x1 - r.x0, r.y1 - r.y0, zorder=2, fc=fc, ec="0.35",
                                    lw=0.8, boxstyle="round,pad=0,rounding_size=4"))
        ax.text(*r.center, name, fontsize=BOX_FONT, ha="center", va="center", zorder=2.5)
    ax.text(layout.title_rect.x0, layout.title_rect.y1, layout.title, fontsize=TITLE_FONT,
            ha="left", va="top")
    return fig


def cell_png(arch: architecture.Architecture) -> bytes:
    """The cell DAG: inputs H(l-2), H(l-1) on the left, the blocks, the concatenated output."""
    fig = draw_cell(cell_layout(arch))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=CELL_DPI)
    return buf.getvalue()


def network_png(backbone, beta=None) -> bytes:
    """The trellis (strides 4..32 over layers) with the decoded path; with `beta`, every transition
    is drawn with a width proportional to its eq. 7 probability."""
    L = len(backbone)
    nl = trellis.NUM_LEVELS if beta is None else int(np.shape(beta)[1])
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * L, 3.0))
    if beta is not None:
        probs = trellis.softmax_beta_np(beta)
        for l in range(L):
            for src in trellis.levels_of(l - 1, nl):
                for k in range(3):
                    dst = src + k - 1
                    if 0 <= dst < nl and trellis.node_exists(l, dst, nl):
                        p = probs[l, src, k]
                        ax.plot([l - 1, l], [src, dst], color="0.6", lw=0.3 + 3 * p, alpha=0.4 + 0.6 * p)
    for l in range(L):
        for v in trellis.levels_of(l, nl):
            ax.plot(l, v, "o", color="0.75", ms=5)
    ax.plot([-1], [0], "s", color="0.3", ms=7)
    ax.plot([-1] + list(range(L)), [0] + list(backbone), "-o", color="tab:red", lw=2, ms=6)
    ax.set_yticks(range(nl))
    ax.set_yticklabels([f"/{trellis.stride_of(v)}" for v in range(nl)])
    ax.set_xticks(range(-1, L))
    ax.set_xticklabels(["stem"] + [str(l + 1) for l in range(L)], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("layer")
    ax.set_title("network path (red) " + ("and beta" if beta is not None else ""), fontsize=9)
    return _png(fig)


def alpha_png(alpha) -> bytes:
    probs = decode.softmax_np(alpha)
    fig, ax = plt.subplots(figsize=(6, 0.25 * probs.shape[0] + 1.5))
    im = ax.imshow(probs, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(decode.OPS)))
    ax.set_xticklabels(decode.OPS, rotation=45, ha="right", fontsize=7)
    n_blocks = 0
    while decode.num_edges(n_blocks) < probs.shape[0]:
        n_blocks += 1
    ax.set_yticks(range(probs.shape[0]))
    ax.set_yticklabels([f"b{i}<-{j}" for i, j in decode.edges(n_blocks)], fontsize=6)
    fig.colorbar(im, ax=ax)
    ax.set_title("softmax(alpha) per edge", fontsize=9)
    return _png(fig)
