"""Session fixtures shared by the reliability tests: the tiny data set / architecture, and the
train.py runs that several tests compare against (started concurrently, once per session)."""

from __future__ import annotations

import os
import random
import sys
import time

import pytest

import rel_helpers as rh

TRAIN_STEPS = 6


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(descriptor path, architecture.json path) of the tiny setup."""
    def make(root):
        return [rh.write_tiny_dataset(str(root / "data")), rh.write_arch(str(root / "arch.json"))]
    return tuple(rh.run_once(tmp_path_factory, "tiny", make))


SEARCH_STEPS = 4  # 2 epochs x 2 steps (trainA of the tiny set holds 4 records, global batch 2)


@pytest.fixture(scope="session")
def cli_runs(tiny, tmp_path_factory):
    return rh.run_once(tmp_path_factory, "cli_runs", lambda root: _cli_runs(tiny, root))


def _cli_runs(tiny, root):
    """All the long CLI runs, started together so both cores stay busy:

    train A: a tiny `train.py --deterministic` command run to the end; train C: the same command
    SIGKILLed at a random point after a checkpoint has appeared, then simply run again (so A and C are
    also two runs of one command: the determinism test compares them).
    search R: a tiny deterministic `search.py` run to the end; search K: the same, SIGKILLed, rerun.
    Killed runs are checked right after the kill: what the crash left must be whole or temp-named.
    """
    desc, arch = tiny
    seed = int(os.environ.get("RELIABILITY_KILL_SEED", time.time_ns() % 100000))
    rnd = random.Random(seed)
    dirs = {k: str(root / f"train_{k}") for k in "AC"}
    dirs.update({k: str(root / f"search_{k}") for k in "RK"})
    args = {k: rh.train_args(dirs[k], desc, arch, TRAIN_STEPS) for k in "AC"}
    args.update({k: rh.search_args(dirs[k], desc) for k in "RK"})
    watch = {"C": dirs["C"], "K": os.path.join(dirs["K"], "checkpoints")}
    plan = {k: (rnd.choice([1, 2]), rnd.uniform(0.0, 0.1)) for k in watch}  # ckpt step, then delay
    procs = {k: rh.Proc(args[k], str(root / k)) for k in args}
    kill_at, killed_at = {}, {}
    deadline = time.monotonic() + procs["C"].timeout
    while len(killed_at) < len(watch) and time.monotonic() < deadline:
        now = time.monotonic()
        for k, d in watch.items():
            if k in killed_at or procs[k].poll() is not None:
                killed_at.setdefault(k, None)
                continue
            if k not in kill_at and rh.latest_step(d) >= plan[k][0]:
                kill_at[k] = now + plan[k][1]
            if k in kill_at and now >= kill_at[k]:
                killed_at[k] = rh.latest_step(d)
                procs[k].kill()
        time.sleep(0.02)
    rh.wait_all(list(procs.values()))
    what = {k: (f"kill seed {seed}: SIGKILL {plan[k][1]:.3f} s after ckpt-{plan[k][0]} appeared (newest "
                f"then ckpt-{killed_at.get(k)}); rerun with RELIABILITY_KILL_SEED={seed}") for k in watch}
    for k in "AR":
        assert procs[k].popen.returncode == 0, f"run {k} ({args[k][1]}) failed:\n{procs[k].tail()}"
    after_kill = {}
    for k in watch:
        assert procs[k].popen.returncode == -9, (f"run {k} was not killed mid-run (exit "
                                                 f"{procs[k].popen.returncode}; {what[k]}):\n{procs[k].tail()}")
        rh.assert_outputs_whole(dirs[k])  # what the crash left is whole (or temp-named)
        after_kill[k] = {"latest_step": rh.latest_step(watch[k]), "temp_names": rh.temp_names(dirs[k])}
    resumed = {k: rh.Proc(args[k], str(root / f"{k}_resumed")) for k in watch}
    rh.wait_all(list(resumed.values()))
    for k, p in resumed.items():
        assert p.popen.returncode == 0, f"rerun of {k} failed ({what[k]}):\n{p.tail()}"
    return {"dirs": dirs, "resumed": {k: rh.outcome(p) for k, p in resumed.items()}, "what": what,
            "after_kill": after_kill, "train_steps": TRAIN_STEPS, "search_steps": SEARCH_STEPS}
