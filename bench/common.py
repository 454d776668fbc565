"""Shared benchmark plumbing: machine description, timing, FLOP accounting, records.

FLOPs are counted as 2 x multiply-adds of the convolutions and matmuls in the traced graph (TF's
profiler `float_ops` on the concrete function), so every figure uses the same convention.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import tensorflow as tf

from nas_deeplab.training.memory import peak_rss_mib


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    details = []
    for g in tf.config.list_physical_devices("GPU"):
        try:
            details.append(tf.config.experimental.get_device_details(g).get("device_name", g.name))
        except Exception:  # noqa: BLE001 - details are best effort
            details.append(g.name)
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": ", ".join(details) or "none",
            "tf": tf.__version__, "gpus": len(gpus)}


def time_calls(fn, warmup: int = 1, repeats: int = 5) -> list[float]:
    """Wall seconds of `repeats` calls after `warmup` calls; fn must block until done."""
    return time_interleaved({"fn": fn}, warmup, repeats)["fn"]


def time_interleaved(calls: dict, warmup: int = 1, repeats: int = 5) -> dict[str, list[float]]:
    """Like `time_calls` for several callables, one call of each per round and the order reversed
    every other round, so slow drift of the machine's speed hits them alike."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in calls}
    for r in range(repeats):
        order = list(calls.items())
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def graph_flops(concrete_fn) -> float | None:
    """Float ops of a concrete function's graph (TF profiler, 2 per multiply-add), or None."""
    try:
        from tensorflow.python.profiler import model_analyzer, option_builder  # noqa: PLC0415
        opts = option_builder.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        info = model_analyzer.profile(concrete_fn.graph, options=opts)
        return float(info.total_float_ops) or None
    except Exception:  # noqa: BLE001 - the profiler is optional
        return None


def record(name: str, times: list[float], flops: float | None = None, rss: float | None = None,
           **extra) -> dict:
    """One result; `rss` (MiB) overrides the process peak so far (for a figure taken earlier)."""
    med = statistics.median(times)
    rec = {"name": name, "median_s": round(med, 4), "min_s": round(min(times), 4),
           "max_s": round(max(times), 4), "repeats": len(times),
           "peak_rss_mib": round(peak_rss_mib() if rss is None else rss, 1)}
    if flops:
        rec["gflops"] = round(flops / 1e9, 2)
        rec["gflop_per_s"] = round(flops / 1e9 / med, 1)
    rec.update(extra)
    return rec


def write_json(path: str, records: list[dict], meta: dict) -> None:
    from nas_deeplab.io_utils import atomic_write_text  # noqa: PLC0415
    atomic_write_text(path, json.dumps({"machine": meta, "records": records}, indent=2) + "\n")


def print_table(records: list[dict]) -> None:
    cols = ["name", "crop", "size", "precision", "median_s", "peak_rss_mib", "gflops", "gflop_per_s", "note"]
    rows = [[str(r.get(c, "")) for c in cols] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
