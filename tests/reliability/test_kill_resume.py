"""kill -9 and resume, determinism, whole-or-temp-named outputs (issue 7, "Faults" / "Determinism").

The CLI runs are shared (conftest `cli_runs`): train A is a tiny `--deterministic` command run to the
end, train C the same command SIGKILLed at a random point after a checkpoint appeared and then simply
run again; search R / K likewise for search.py. (To stay within the CI time budget there is no third
uninterrupted run: A vs C is also the "same command twice" determinism check.)
"""

from __future__ import annotations

import filecmp
import os
import re

import numpy as np

import rel_helpers as rh
from nas_deeplab.architecture import Architecture


def _ckpt(d, step):
    return os.path.join(d, f"ckpt-{step}")


def test_training_sigkill_then_rerun_resumes_and_matches_uninterrupted_bit_for_bit(cli_runs):
    dirs, steps, what = cli_runs["dirs"], cli_runs["train_steps"], cli_runs["what"]["C"]
    assert 1 <= cli_runs["after_kill"]["C"]["latest_step"] < steps, (what, cli_runs["after_kill"])
    out = cli_runs["resumed"]["C"]["stdout"]
    assert "resumed from" in out, f"the rerun did not resume ({what}):\n{out[-2000:]}"
    # every variable: weights, BN statistics, optimizer slots and iterations, global step
    n = rh.assert_checkpoints_equal(_ckpt(dirs["C"], steps), _ckpt(dirs["A"], steps))
    assert n > 50
    assert filecmp.cmp(os.path.join(dirs["C"], "architecture.json"),
                       os.path.join(dirs["A"], "architecture.json"), shallow=False)


def test_same_deterministic_train_command_twice_gives_bit_identical_checkpoints(cli_runs):
    dirs, steps = cli_runs["dirs"], cli_runs["train_steps"]
    for s in (steps - 1, steps):  # the two checkpoints kept (max_to_keep=2)
        rh.assert_checkpoints_equal(_ckpt(dirs["A"], s), _ckpt(dirs["C"], s))
    # and training really moved the weights (the comparison is not between two initialisations)
    a = rh.checkpoint_values(_ckpt(dirs["A"], steps))
    b = rh.checkpoint_values(_ckpt(dirs["A"], steps - 1))
    assert any(v.dtype.kind == "f" and not np.array_equal(v, b[k]) for k, v in a.items())


def test_training_outputs_whole_and_no_temp_names_after_clean_finish(cli_runs):
    dirs, steps = cli_runs["dirs"], cli_runs["train_steps"]
    for k in "AC":
        rh.assert_outputs_whole(dirs[k])
        assert rh.latest_step(dirs[k]) == steps
        assert os.path.exists(os.path.join(dirs[k], f"ckpt-{steps}.index"))
    assert rh.temp_names(dirs["A"]) == [], "run A left temporary files"
    _assert_only_known_debris(dirs["C"], cli_runs["what"]["C"])


# What a SIGKILL may leave behind: TF's sharded-save folder `ckpt-N_temp/` (and its files) and our
# `.<name>.tmp-<pid>` files. Neither matches a final name (`ckpt-N.index`, `*.json`, ...), so nothing
# half-written looks complete. (The resumed run does not remove them: see the reliability report.)
KNOWN_DEBRIS = re.compile(r"(^|/)(ckpt-\d+_temp(/.*)?|\.[^/]+\.tmp-\d+)$")


def _assert_only_known_debris(folder, what):
    odd = [n for n in rh.temp_names(folder) if not KNOWN_DEBRIS.search(n)]
    assert not odd, f"unexpected temp-like files in {folder} after the resumed run ({what}): {odd}"


def test_search_sigkill_then_rerun_gives_identical_alpha_beta_and_architecture(cli_runs):
    dirs, steps, what = cli_runs["dirs"], cli_runs["search_steps"], cli_runs["what"]["K"]
    assert 1 <= cli_runs["after_kill"]["K"]["latest_step"] < steps, (what, cli_runs["after_kill"])
    assert "resumed from" in cli_runs["resumed"]["K"]["stdout"], (what, rh.tail(cli_runs["resumed"]["K"]))
    for name in ("alpha.npy", "beta.npy"):
        a, b = (np.load(os.path.join(dirs[k], name)) for k in "RK")
        assert a.shape == b.shape and a.tobytes() == b.tobytes(), f"{name} differs after resume ({what})"
    arch = [Architecture.load(os.path.join(dirs[k], "architecture.json")) for k in "RK"]
    assert arch[0] == arch[1]
    assert filecmp.cmp(*(os.path.join(dirs[k], "architecture.json") for k in "RK"), shallow=False)
    # All weights, alpha/beta and optimizer state; `save_counter` only counts save() calls.
    rh.assert_checkpoints_equal(*(os.path.join(dirs[k], "checkpoints", f"ckpt-{steps}") for k in "RK"),
                                only=lambda name: not name.startswith("save_counter"))


def test_search_outputs_whole_and_no_temp_names_after_clean_finish(cli_runs):
    for k in "RK":
        d = cli_runs["dirs"][k]
        rh.assert_outputs_whole(d)
        assert rh.latest_step(os.path.join(d, "checkpoints")) == cli_runs["search_steps"]
        for name in ("architecture.json", "alpha.npy", "beta.npy", "search_config.json"):
            assert os.path.isfile(os.path.join(d, name)), (k, name)
    assert rh.temp_names(cli_runs["dirs"]["R"]) == [], "search R left temporary files"
    _assert_only_known_debris(cli_runs["dirs"]["K"], cli_runs["what"]["K"])
