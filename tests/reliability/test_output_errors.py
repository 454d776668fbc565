"""Unwritable outputs, incompatible architecture files and mismatched resumes give clear errors
(issue 7, "Faults"): a non-zero exit with one message naming the folder/file, no traceback, no work
done, and never a silent partial restore.

The CLI cases run concurrently in one module fixture (each is a few seconds of TF start-up).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

import pytest

import rel_helpers as rh

from nas_deeplab.architecture import Architecture, ArchitectureError


def unwritable_parent(tmp_path) -> str:
    """A path under which nothing can be created, also for root: a read-only folder where chmod
    works, else a regular FILE (mkdir under a file fails with ENOTDIR for root too)."""
    d = tmp_path / "readonly"
    d.mkdir()
    os.chmod(d, 0o500)
    try:
        with open(d / "probe", "w"):
            pass
    except OSError:
        return str(d)  # chmod is honoured (not root)
    os.remove(d / "probe")
    os.chmod(d, 0o700)
    f = tmp_path / "a_regular_file"
    f.write_text("not a folder\n")
    return str(f)


def _snapshot(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for n in files:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def error_runs(tiny, cli_runs, tmp_path_factory):
    return rh.run_once(tmp_path_factory, "output_errors", lambda tmp: _error_runs(tiny, cli_runs, tmp))


def _error_runs(tiny, cli_runs, tmp):
    desc, arch = tiny
    bad = unwritable_parent(tmp)
    trained = cli_runs["dirs"]["A"]
    # Resume candidates: copies of a finished run, each asked to continue as something else.
    copies = {}
    for k in ("other_arch", "other_classes"):
        copies[k] = str(tmp / f"resume_{k}")
        shutil.copytree(trained, copies[k])
    arch_f5 = rh.write_arch(str(tmp / "arch_f5.json"), filter_multiplier=5)
    desc4 = os.path.join(os.path.dirname(desc), "tiny4.json")
    with open(desc) as f:
        d = json.load(f)
    with open(desc4, "w") as f:
        json.dump(dict(d, name="tiny4", num_classes=4), f)
    arch_v2 = rh.write_arch(str(tmp / "arch_v2.json"), version=2)
    more = ["--training_number_of_steps=8"]  # resumes would have work left to do
    cases = {
        "train_unwritable": (rh.train_args(os.path.join(bad, "train"), desc, arch, 2), os.path.join(bad, "train")),
        "search_unwritable": (rh.search_args(os.path.join(bad, "search"), desc), os.path.join(bad, "search")),
        "export_unwritable": ([sys.executable, os.path.join(rh.ROOT, "export.py"),
                               f"--export_path={os.path.join(bad, 'export')}", "--allow_random_init",
                               f"--architecture={arch}", "--num_classes=3"], os.path.join(bad, "export")),
        "train_arch_version": (rh.train_args(str(tmp / "never"), desc, arch_v2, 2), arch_v2),
        "resume_other_arch": (rh.train_args(copies["other_arch"], desc, arch_f5, 6, *more), copies["other_arch"]),
        "resume_other_classes": (rh.train_args(copies["other_classes"], desc4, arch, 6, *more),
                                 copies["other_classes"]),
    }
    before = {k: _snapshot(p) for k, p in copies.items()}
    procs = {k: rh.Proc(args, str(tmp / k), timeout=240) for k, (args, _) in cases.items()}
    rh.wait_all(list(procs.values()))
    return {"procs": {k: rh.outcome(p) for k, p in procs.items()}, "names": {k: v[1] for k, v in cases.items()},
            "copies": copies, "before": before}


# What each CLI prints once real work has started (model built / steps running).
WORK_MARKERS = {"train": ("step 1/", "trained steps"), "search": ("supernet weights", "weight step:"),
                "export": ("exporting a randomly initialised model", "SavedModel written"),
                "resume": ("resumed from", "step 7/", "trained steps")}


def _assert_clear_failure(runs, key, *must_contain, names_parent_ok=False):
    p, name = runs["procs"][key], runs["names"][key]
    rc = p["rc"]
    assert rc is not None and rc > 0, f"{key}: exit {rc}\n{rh.tail(p)}"
    err = p["stderr"]
    assert "Traceback" not in err, f"{key}: a traceback instead of a clear message:\n{err[-3000:]}"
    named = name in err or (names_parent_ok and os.path.dirname(name) in err)
    assert named, f"{key}: the message does not name {name}:\n{err[-3000:]}"
    for text in must_contain:
        assert text in err, f"{key}: {text!r} not in the message:\n{err[-3000:]}"
    return err


def _assert_no_work(runs, key):
    p = runs["procs"][key]
    tool = key.split("_")[0]
    for marker in WORK_MARKERS.get(tool, ()):
        assert marker not in p["stdout"] + p["stderr"], f"{key}: work started before the error ({marker!r})"


@pytest.mark.parametrize("key", [
    "train_unwritable",
    "search_unwritable",
    "export_unwritable",
])
def test_unwritable_output_folder_fails_first_with_a_message_naming_it(error_runs, key):
    # The unusable path is <a regular file>/<name> (or <read-only folder>/<name>): naming either the
    # folder or that parent is clear.
    _assert_clear_failure(error_runs, key, names_parent_ok=True)
    _assert_no_work(error_runs, key)
    assert not os.path.exists(error_runs["names"][key])


def test_architecture_file_of_another_version_is_refused_by_train_py(error_runs):
    _assert_clear_failure(error_runs, "train_arch_version", "version 2")
    _assert_no_work(error_runs, "train_arch_version")


@pytest.mark.parametrize("key,what", [("resume_other_arch", "filter_multiplier"),
                                      ("resume_other_classes", "num_classes")])
def test_resuming_as_another_model_is_refused_and_the_run_folder_is_untouched(error_runs, key, what):
    _assert_clear_failure(error_runs, key, what)
    _assert_no_work(error_runs, key)
    k = key[len("resume_"):]
    after = _snapshot(error_runs["copies"][k])
    before = error_runs["before"][k]
    assert sorted(after) == sorted(before), f"{key}: files changed: {sorted(set(after) ^ set(before))}"
    changed = [n for n in before if before[n] != after[n]]
    assert not changed, f"{key}: the refused resume modified {changed}"


@pytest.mark.parametrize("content,match", [
    ({"format": "nas_deeplab.architecture", "version": 2, "operations": ["atrous_3x3", "skip_connect"],
      "hiddenstate_indices": [1, 0], "backbone": [0], "filter_multiplier": 4}, "version 2 is not supported"),
    ({"format": "something_else", "version": 1}, "'format' is 'something_else'"),
    ({"version": 1, "operations": ["atrous_3x3", "skip_connect"]}, "missing keys"),
    ({"operations": ["atrous_3x3", "zero"], "hiddenstate_indices": [1, 0], "backbone": [0],
      "filter_multiplier": 4}, "'zero'"),
    ({"operations": ["atrous_3x3", "skip_connect"], "hiddenstate_indices": [1, 0], "backbone": [0, 2],
      "filter_multiplier": 4}, "backbone"),
    (["not", "an", "object"], "expected a JSON object"),
    ('{"operations": [', "not valid JSON"),
])
def test_incompatible_or_malformed_architecture_json_raises_architecture_error(tmp_path, content, match):
    p = tmp_path / "architecture.json"
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ArchitectureError, match=match) as e:
        Architecture.load(str(p))
    assert str(p) in str(e.value)


def test_checkpoint_of_an_incompatible_format_version_is_refused_before_restoring(cli_runs, tmp_path):
    """checkpoint_meta.json of another version: CheckpointMismatchError naming the folder; nothing is
    restored (the metadata is compared before any variable is touched)."""
    from nas_deeplab.training import checkpointing
    run = str(tmp_path / "run")
    shutil.copytree(cli_runs["dirs"]["A"], run)
    expected = checkpointing.read_metadata(run)
    found = dict(expected, version=99)
    with pytest.raises(checkpointing.CheckpointMismatchError, match="version 99 is not supported") as e:
        checkpointing.compare_metadata(found, expected, run)
    assert run in str(e.value)
    with open(os.path.join(run, checkpointing.META_FILE), "w") as f:
        json.dump(found, f)
    ckpt = checkpointing.ResumableCheckpoint(run, expected)  # no trackables: fails before restore
    with pytest.raises(checkpointing.CheckpointMismatchError, match="version 99"):
        ckpt.restore_latest()
    os.remove(os.path.join(run, checkpointing.META_FILE))
    with pytest.raises(checkpointing.CheckpointMismatchError, match="no checkpoint_meta.json"):
        ckpt.restore_latest()
