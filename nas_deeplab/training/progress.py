"""A one-line progress report for long runs: step, rate, ETA and the latest scalars."""

from __future__ import annotations

import sys
import time


class ProgressLine:
    def __init__(self, total_steps: int, start_step: int = 0, every: int = 1, stream=None, prefix=""):
        self.total = int(total_steps)
        self.start_step = int(start_step)
        self.every = max(1, int(every))
        self.stream = stream or sys.stdout
        self.prefix = prefix
        self.t0 = time.monotonic()

    def update(self, step: int, **scalars) -> str | None:
        step = int(step)
        if step % self.every and step != self.total:
            return None
        done = step - self.start_step
        elapsed = time.monotonic() - self.t0
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        parts = [f"{self.prefix}step {step}/{self.total}", f"{rate:.2f} step/s", f"ETA {_fmt(eta)}"]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in scalars.items()]
        line = " | ".join(parts)
        print(line, file=self.stream, flush=True)
        return line


def _fmt(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"
