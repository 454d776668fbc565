"""Pictures of the search: the decoded cell, the network path, the alpha heatmap and the beta trellis.

Every function returns PNG bytes (matplotlib, Agg backend), written atomically by the caller and
also decoded into TensorBoard images.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nas_deeplab import architecture  # noqa: E402
from nas_deeplab.search import decode, trellis  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def cell_png(arch: architecture.Architecture) -> bytes:
    """The cell DAG: inputs H^{l-1}, H^{l-2}, the blocks, the concatenated output."""
    B = arch.num_blocks
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * B, 3.6))
    pos = {0: (0.0, 1.0), 1: (0.0, -1.0)}
    for k in range(B):
        pos[2 + k] = (1.5 * (k + 1), 1.2 if k % 2 == 0 else -1.2)
    out = (1.5 * (B + 1), 0.0)
    labels = {0: "H(l-1)", 1: "H(l-2)"}
    labels.update({2 + k: f"block {k}" for k in range(B)})
    for k in range(B):
        for side, (op, j) in zip(("L", "R"), arch.block(k)):
            (x0, y0), (x1, y1) = pos[j], pos[2 + k]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops=dict(arrowstyle="->", color="tab:blue" if side == "L" else "tab:orange"))
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + (0.12 if side == "L" else -0.18), op, fontsize=7,
                    ha="center", color="tab:blue" if side == "L" else "tab:orange")
        ax.annotate("", xy=out, xytext=pos[2 + k], arrowprops=dict(arrowstyle="->", color="0.7"))
    for j, (x, y) in pos.items():
        ax.text(x, y, labels[j], ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round", fc="lightyellow" if j < 2 else "lightblue"))
    ax.text(*out, "concat", ha="center", va="center", fontsize=8, bbox=dict(boxstyle="round", fc="0.9"))
    ax.set_xlim(-0.8, out[0] + 0.8)
    ax.set_ylim(-1.8, 1.8)
    ax.axis("off")
    ax.set_title("searched cell (blue = left op, orange = right op)", fontsize=9)
    return _png(fig)


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
