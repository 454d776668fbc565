"""Scale-out (issue 7): `train.py --strategy=multi_worker` with TF_CONFIG on 127.0.0.1.

Two worker processes with one replica each (MultiWorkerMirroredStrategy over free local ports) and
one process with two replicas (`--strategy=mirrored --num_cpu_replicas=2`) run the same tiny
deterministic training on the same global batch; after N steps their weights must agree within float
tolerance (all-reduce order may differ), and only the chief may have written checkpoints and summaries
into the shared run folder. Every process runs under a timeout, and a worker that dies takes its peer
down at once, so a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import glob
import json
import os
import time

import pytest

import rel_helpers as rh

STEPS = 3
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def mw_runs(tiny, tmp_path_factory):
    return rh.run_once(tmp_path_factory, "multi_worker", lambda tmp: _mw_runs(tiny, tmp))


def _mw_runs(tiny, tmp):
    desc, arch = tiny
    ports = rh.free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    shared = str(tmp / "mw_logdir")  # one folder for both workers, as on a shared file system
    mirrored = str(tmp / "mirrored_logdir")
    procs = {}
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs[f"worker{i}"] = rh.Proc(rh.train_args(shared, desc, arch, STEPS, "--strategy=multi_worker"),
                                      str(tmp / f"worker{i}"), timeout=TIMEOUT_S, TF_CONFIG=tf_config)
    procs["mirrored"] = rh.Proc(rh.train_args(mirrored, desc, arch, STEPS, "--strategy=mirrored",
                                              "--num_cpu_replicas=2"), str(tmp / "mirrored"), timeout=TIMEOUT_S)
    _wait_for_cluster(procs)
    return {"procs": {k: rh.outcome(p) for k, p in procs.items()}, "shared": shared, "mirrored": mirrored}


def _wait_for_cluster(procs):
    """Wait for both workers and the reference process; a dead worker takes its peer down at once."""
    workers = [procs["worker0"], procs["worker1"]]
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and any(p.poll() is None for p in workers):
        if any(p.poll() not in (None, 0) for p in workers):
            break  # a dead worker leaves its peer waiting for collectives forever
        time.sleep(0.2)
    for p in workers:
        if p.poll() is None:
            p.kill()
    rh.wait_all(list(procs.values()))


def _require_success(mw_runs):
    for name, p in mw_runs["procs"].items():
        assert p["rc"] == 0, f"{name} failed (exit {p['rc']}):\n{rh.tail(p)}"


def test_two_workers_one_replica_each_match_one_process_with_two_replicas(mw_runs):
    _require_success(mw_runs)
    mw, mr = (os.path.join(mw_runs[k], f"ckpt-{STEPS}") for k in ("shared", "mirrored"))
    n = rh.assert_checkpoints_equal(mw, mr, rtol=1e-4, atol=1e-5)
    assert n > 50
    # the runs did train: step counter at N and weights moved (compared with the step-(N-1) save)
    step = rh.checkpoint_values(mw)
    assert any(int(v) == STEPS for k, v in step.items() if k.startswith("step/"))


def test_only_the_chief_writes_checkpoints_and_summaries(mw_runs):
    _require_success(mw_runs)
    shared = mw_runs["shared"]
    assert rh.latest_step(shared) == STEPS
    events = glob.glob(os.path.join(shared, "**", "events.out.tfevents.*"), recursive=True)
    assert len(events) == 1, f"expected the chief's event file only: {events}"
    # the non-chief's private checkpoint folder is gone and nothing else is temp-named
    assert rh.temp_names(shared) == [], rh.temp_names(shared)
    assert "checkpoint None" in mw_runs["procs"]["worker1"]["stdout"]  # the non-chief reports no checkpoint
    rh.assert_outputs_whole(shared)


# -- the search (`search.py --strategy=multi_worker`) ------------------------------------------------

def _search_args(out, desc, *extra):
    # the tiny deterministic search of the kill/resume tests, without per-step checkpoints
    return [a for a in rh.search_args(out, desc) if not a.startswith("--checkpoint_every")] + list(extra)


@pytest.fixture(scope="module")
def mw_search_runs(tiny, tmp_path_factory):
    return rh.run_once(tmp_path_factory, "multi_worker_search", lambda tmp: _mw_search_runs(tiny, tmp))


def _mw_search_runs(tiny, tmp):
    desc, _ = tiny
    cluster = {"worker": [f"127.0.0.1:{p}" for p in rh.free_ports(2)]}
    shared, mirrored = str(tmp / "mw_search"), str(tmp / "mirrored_search")
    procs = {}
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs[f"worker{i}"] = rh.Proc(_search_args(shared, desc, "--strategy=multi_worker"),
                                      str(tmp / f"sworker{i}"), timeout=TIMEOUT_S, TF_CONFIG=tf_config)
    procs["mirrored"] = rh.Proc(_search_args(mirrored, desc, "--strategy=mirrored", "--num_cpu_replicas=2"),
                                str(tmp / "smirrored"), timeout=TIMEOUT_S)
    _wait_for_cluster(procs)
    return {"procs": {k: rh.outcome(p) for k, p in procs.items()}, "shared": shared, "mirrored": mirrored}


def test_search_on_two_workers_matches_one_process_with_two_replicas(mw_search_runs):
    _require_success(mw_search_runs)
    import numpy as np
    shared, mirrored = mw_search_runs["shared"], mw_search_runs["mirrored"]
    for name in ("alpha.npy", "beta.npy"):
        a, b = np.load(os.path.join(shared, name)), np.load(os.path.join(mirrored, name))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)
        # alpha/beta did move away from their N(0, 1e-3) initialisation in the arch steps
        assert np.abs(a).max() > 1e-3, name
    with open(os.path.join(shared, "architecture.json")) as f1, \
            open(os.path.join(mirrored, "architecture.json")) as f2:
        arch_shared, arch_mirrored = json.load(f1), json.load(f2)
    summary_shared, summary_mirrored = arch_shared.pop("search_summary"), arch_mirrored.pop("search_summary")
    assert arch_shared == arch_mirrored
    assert summary_shared["verdict"] == summary_mirrored["verdict"]
    assert summary_shared["path"]["path"] == summary_mirrored["path"]["path"]
    np.testing.assert_allclose(summary_shared["alpha_moved"], summary_mirrored["alpha_moved"], rtol=1e-4)
    # only the chief wrote into the shared output folder
    events = glob.glob(os.path.join(shared, "**", "events.out.tfevents.*"), recursive=True)
    assert len(events) == 1, events
