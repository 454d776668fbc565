"""CPU thread pools: how many ops run at once (inter-op) and threads per op (intra-op).

Why this matters: the search supernet executes ~15,000 small kernels per step. With TF's default
(both pools = cores) oneDNN splits every small kernel over all cores, and the synchronisation costs
more than the work: on 2 cores the paper-size weight step at crop 65 took 1.8 s with the defaults and
0.82 s with one thread per op and two ops at a time (bench/README figures). Large dense convolutions
(training the final network, inference on full images) prefer the defaults, so the policy is
per-program: `op_parallel` for the search, `default` elsewhere. Must run before TF starts its runtime.
"""

from __future__ import annotations

import os

POLICIES = ("auto", "op_parallel", "default")


def configure(policy: str = "auto", inter_op: int = 0, intra_op: int = 0, prefer: str = "default") -> str:
    """Set the thread pools; returns a one-line description for the log.

    policy: "op_parallel" (inter = cores, intra = 1), "default" (TF's choice) or "auto" (`prefer` when
    no GPU is visible, else "default"). Explicit `inter_op` / `intra_op` (> 0) override the policy.
    """
    import tensorflow as tf  # noqa: PLC0415

    if policy not in POLICIES:
        raise ValueError(f"thread policy {policy!r}: choose one of {list(POLICIES)}")
    if policy == "auto":
        # Physical devices can be listed without starting the runtime.
        policy = "default" if tf.config.list_physical_devices("GPU") else prefer
    cores = os.cpu_count() or 1
    inter, intra = (cores, 1) if policy == "op_parallel" else (0, 0)
    inter = inter_op if inter_op > 0 else inter
    intra = intra_op if intra_op > 0 else intra
    try:
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
    except RuntimeError as e:  # the runtime is already up (e.g. inside a test process)
        return f"threads: unchanged ({e})"
    return (f"threads: {policy}, inter-op {inter or 'TF default'}, intra-op {intra or 'TF default'} "
            f"({cores} cores)")
