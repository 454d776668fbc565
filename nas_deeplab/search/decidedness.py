"""How decided a search result is: the numbers behind "the found architecture", and a verdict.

A short search returns its prior: alpha and beta start near zero (N(0, 1) * 1e-3), a zero beta
decodes to the all-stride-4 path (edge levels have two outgoing transitions, so their paths are the
most probable under a uniform beta), and alpha's argmax is noise. `summarize` says how far the result
is from that, in terms a NAS user reads:

* path: the decoded (Viterbi) path's probability, the runner-up path's, and each one's ratio to the
  probability the same path has under a uniform beta (the prior); `margin` = log P(best) / P(runner-up).
* cell: per block, the strength (max non-zero softmax(alpha)) of the two kept predecessors and of the
  strongest one left out, and for each kept edge its top-1 and top-2 non-zero op probabilities.
* movement: max |alpha - alpha_start| and |beta - beta_start| since the architecture steps began
  (alpha and beta do not change before then, so their initial values are the start).
* verdict: "prior" when alpha and beta moved less than `MIN_MOVE` (logits), or when the decoded path
  is less than `PATH_MARGIN` more likely than under a uniform beta and no kept edge's top-1 op leads
  its top-2 by `OP_MARGIN` (what is decoded is still what the initialisation decodes); "weak" when
  the path margin or most blocks' op margins are below those; else "decided".
"""

from __future__ import annotations

import math

import numpy as np

from nas_deeplab.search import decode, trellis

MIN_MOVE = 0.1                 # logits: less movement than this is the initialisation noise
PATH_MARGIN = math.log(1.5)    # best path at least 1.5x as probable as the runner-up
OP_MARGIN = 1.1                # a kept edge's top-1 op at least 1.1x its top-2


def top_paths(beta_probs: np.ndarray, k: int = 2) -> list[tuple[float, list[int]]]:
    """The k most probable paths [(log prob, levels)], best first (list Viterbi: the k best partial
    paths per node). For k=1 it returns the Viterbi path."""
    beta_probs = np.asarray(beta_probs, np.float64)
    num_layers, num_levels = beta_probs.shape[:2]
    with np.errstate(divide="ignore"):
        logp = np.log(beta_probs)
    best = {0: [(0.0, [])]}            # level -> [(score, path)] at the stem
    for layer in range(num_layers):
        new = {}
        for v in range(num_levels):
            if not trellis.node_exists(layer, v, num_levels):
                continue
            cands = [(s + logp[layer, src, v - src + 1], path + [v])
                     for src in (v - 1, v, v + 1) if src in best
                     for s, path in best[src] if np.isfinite(logp[layer, src, v - src + 1])]
            cands.sort(key=lambda c: (-c[0], c[1]))
            if cands:
                new[v] = cands[:k]
        best = new
    out = sorted((c for cs in best.values() for c in cs), key=lambda c: (-c[0], c[1]))
    return out[:k]


def _uniform_probs(num_layers: int, num_levels: int) -> np.ndarray:
    return trellis.softmax_beta_np(np.zeros((num_layers, num_levels, trellis.NUM_DIRECTIONS)))


def path_summary(beta: np.ndarray) -> dict:
    probs = trellis.softmax_beta_np(beta)
    uniform = _uniform_probs(*probs.shape[:2])
    (lp1, p1), (lp2, p2) = (top_paths(probs, 2) + [(-math.inf, [])])[:2]
    out = {"path": p1, "log_prob": lp1, "prior_log_prob": trellis.path_log_prob(p1, uniform)}
    out["gain_over_prior"] = lp1 - out["prior_log_prob"]
    if p2:
        out.update(runner_up=p2, runner_up_log_prob=lp2,
                   runner_up_prior_log_prob=trellis.path_log_prob(p2, uniform), margin=lp1 - lp2)
    else:
        out.update(runner_up=None, runner_up_log_prob=None, runner_up_prior_log_prob=None, margin=math.inf)
    return out


def cell_summary(alpha: np.ndarray) -> list[dict]:
    probs = decode.softmax_np(alpha)
    nonzero = [i for i in range(len(decode.OPS)) if i != decode.ZERO_INDEX]
    num_blocks = 0
    while decode.num_edges(num_blocks) < probs.shape[0]:
        num_blocks += 1
    blocks = []
    for i in range(num_blocks):
        strengths = []
        for j in range(i + 2):
            p = probs[decode.edge_index(i, j)][nonzero]
            order = np.argsort(-p, kind="stable")
            strengths.append({"state": j, "strength": float(p[order[0]]),
                              "op": decode.OPS[nonzero[order[0]]], "op_prob": float(p[order[0]]),
                              "second_op": decode.OPS[nonzero[order[1]]], "second_op_prob": float(p[order[1]])})
        strengths.sort(key=lambda e: (-e["strength"], e["state"]))
        kept, left_out = strengths[:2], strengths[2:]
        blocks.append({"block": i, "kept": kept,
                       "strongest_left_out": left_out[0]["strength"] if left_out else None,
                       "prior_strength": 1.0 / len(decode.OPS)})
    return blocks


def summarize(alpha, beta, alpha_start=None, beta_start=None, arch_steps: int | None = None) -> dict:
    """The `search_summary` of architecture.json (see the module docstring); plain JSON types."""
    alpha, beta = np.asarray(alpha, np.float64), np.asarray(beta, np.float64)
    mask = trellis.valid_mask(beta.shape[0], beta.shape[1])
    move_alpha = float(np.abs(alpha - alpha_start).max()) if alpha_start is not None else None
    move_beta = (float(np.abs(beta - beta_start)[mask].max()) if beta_start is not None and mask.any()
                 else None)
    path = path_summary(beta)
    cell = cell_summary(alpha)
    op_ratios = [e["op_prob"] / e["second_op_prob"] for b in cell for e in b["kept"]]
    weak_ops = sum(r < OP_MARGIN for r in op_ratios)
    moved = [m for m in (move_alpha, move_beta) if m is not None]
    if arch_steps == 0 or (moved and max(moved) < MIN_MOVE) or \
            (path["gain_over_prior"] < PATH_MARGIN and weak_ops == len(op_ratios)):
        verdict = "prior"
    elif path["margin"] < PATH_MARGIN or weak_ops > len(op_ratios) / 2:
        verdict = "weak"
    else:
        verdict = "decided"
    return {"verdict": verdict, "arch_steps": arch_steps, "alpha_moved": move_alpha, "beta_moved": move_beta,
            "path": path, "blocks": cell, "weak_op_choices": int(weak_ops), "op_choices": len(op_ratios),
            "thresholds": {"min_move": MIN_MOVE, "path_margin": PATH_MARGIN, "op_margin": OP_MARGIN}}


def entropies(alpha, beta) -> tuple[float, float]:
    """Mean entropy (nats) of softmax(alpha) over edges and of the eq. 7 beta over existing nodes."""
    pa = decode.softmax_np(alpha)
    ea = float(-(pa * np.log(np.clip(pa, 1e-30, None))).sum(-1).mean())
    pb = trellis.softmax_beta_np(beta)
    rows = trellis.valid_mask(pb.shape[0], pb.shape[1]).any(-1)
    hb = -(np.where(pb > 0, pb * np.log(np.clip(pb, 1e-30, None)), 0.0)).sum(-1)
    return ea, float(hb[rows].mean()) if rows.any() else 0.0


def describe(summary: dict) -> list[str]:
    """The lines search.py prints under the found architecture."""
    p = summary["path"]
    lines = [f"how decided: {summary['verdict']}"
             + {"prior": " -- this is the initialisation, not a search result (alpha/beta barely moved, "
                         "or the path and ops are as likely as under the prior; run more architecture "
                         "steps)",
                "weak": " -- the choice is close to its alternatives (see search_summary in architecture.json)",
                "decided": ""}[summary["verdict"]]]
    moved = ", ".join(f"{n} moved {m:.3f}" for n, m in (("alpha", summary["alpha_moved"]),
                                                         ("beta", summary["beta_moved"])) if m is not None)
    lines.append(f"  {summary['arch_steps']} architecture steps; {moved or 'no movement recorded'}")
    line = (f"  path P={math.exp(p['log_prob']):.3g} ({math.exp(p['gain_over_prior']):.3g}x its prior "
            f"{math.exp(p['prior_log_prob']):.3g})")
    if p["runner_up"] is not None:
        line += (f"; runner-up {p['runner_up']} P={math.exp(p['runner_up_log_prob']):.3g} "
                 f"(prior {math.exp(p['runner_up_prior_log_prob']):.3g}), margin x{math.exp(p['margin']):.3g}")
    lines.append(line)
    lines.append(f"  ops: {summary['op_choices'] - summary['weak_op_choices']} of {summary['op_choices']} kept "
                 f"edges have a top-1 op at least {OP_MARGIN}x their top-2")
    return lines
