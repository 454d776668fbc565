"""Fuzzing the input pipeline with mutated TFRecords (issue 7, "Bad data").

A valid two-shard split of tiny scenes is mutated ~30 ways (seeded numpy RNG): truncated files, garbage
after the last record, random bytes as image / label / whole record, empty image, truncated PNG, label of
another size, out-of-range labels, and bytes flipped at random offsets of a shard. Every mutant goes
through `make_dataset` in training and in evaluation mode:

* strict (`skip_corrupt_records=False`): it either iterates cleanly (only where the mutation can be
  harmless) or raises tf.errors.InvalidArgumentError whose text holds "DataError: <shard path> record
  <i>:" with exactly the record we broke (file framing: the first record the flipped/cut bytes touch);
* `skip_corrupt_records=True`: the iteration completes, `skipped_records` > 0 when a record was bad
  (== 0 when not), and the records before the bad one are all delivered.

The iteration runs in ONE child process (this file run as a script) so that a hard crash of a decoder
(segfault, abort) fails the test with the mutant's name instead of taking pytest down.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NUM_CLASSES = 3
IGNORE = 255
SEED = 1234
NUM_MUTANTS = 30
CHILD_TIMEOUT_S = 420


# ------------------------------------------------------------------------------------------------
# building mutants (parent process)
# ------------------------------------------------------------------------------------------------

def _record_offsets(data: bytes) -> list[tuple[int, int]]:
    """[(start, end)) byte ranges of the framed records of a valid TFRecord file."""
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        end = pos + 8 + 4 + length + 4
        out.append((pos, end))
        pos = end
    assert pos == len(data)
    return out


def _record_at(ranges, offset) -> int:
    return next(i for i, (s, e) in enumerate(ranges) if s <= offset < e)


def _base_records(rs):
    """Three tiny scenes per shard, two shards: (image, label, name) triples."""
    from rel_helpers import scene
    out = []
    for i in range(6):
        h, w = int(rs.randint(8, 12)), int(rs.randint(8, 12))
        image, label = scene(h, w, seed=100 + i, num_classes=NUM_CLASSES, ignore=IGNORE)
        out.append((image, label, f"img{i}"))  # renamed per mutant in make_mutants
    return out


def _write(folder, records_per_shard):
    import tensorflow as tf
    from nas_deeplab.data.tfrecord import shard_path
    os.makedirs(folder, exist_ok=True)
    paths = []
    for s, recs in enumerate(records_per_shard):
        p = shard_path(folder, "train", s, len(records_per_shard))
        with tf.io.TFRecordWriter(p) as w:
            for r in recs:
                w.write(r)
        paths.append(p)
    return paths


KINDS = ("truncate_file", "garbage_tail", "random_image", "random_label", "size_mismatch",
         "label_out_of_range", "flip_bytes", "truncated_png", "random_record", "empty_image")


def make_mutants(root: str, seed: int = SEED, n: int = NUM_MUTANTS) -> list[dict]:
    """Write `n` mutated copies of the base split under `root`; returns their manifest.

    expect: "clean" (must iterate without error), "error" (must fail at `path` record `index`) or
    "either" (a harmless mutation is possible, but a failure must name `path` record `index`).
    """
    from rel_helpers import png
    from nas_deeplab.data.tfrecord import encode_example

    rs = np.random.RandomState(seed)
    base0 = _base_records(rs)

    def ex(image, label, name, image_bytes=None, label_bytes=None):
        return encode_example(png(image) if image_bytes is None else image_bytes, name, image.shape[0],
                              image.shape[1], png(label) if label_bytes is None else label_bytes,
                              image_format="png")

    mutants = []
    for k in range(n):
        kind = KINDS[k % len(KINDS)]
        # Unique record names per mutant, so the combined skip run can tell whose records arrived.
        base = [(im, lb, f"m{k:02d}/{nm}") for im, lb, nm in base0]
        valid = [ex(*b) for b in base]
        folder = os.path.join(root, f"m{k:02d}_{kind}")
        shard = int(rs.randint(2))
        rec = int(rs.randint(3))               # record index inside the shard
        recs = [valid[:3], valid[3:]]
        image, label, name = base[shard * 3 + rec]
        m = {"id": f"m{k:02d}_{kind}", "folder": folder, "kind": kind, "shard": shard, "index": rec,
             "total": 6, "expect": "error"}
        if kind in ("random_image", "random_label", "size_mismatch", "label_out_of_range",
                    "truncated_png", "random_record", "empty_image"):
            if kind == "random_image":
                new = ex(image, label, name, image_bytes=rs.bytes(int(rs.randint(1, 300))))
            elif kind == "random_label":
                new = ex(image, label, name, label_bytes=rs.bytes(int(rs.randint(1, 300))))
            elif kind == "size_mismatch":
                dh, dw = [(1, 0), (0, 1), (-1, 2)][k % 3]
                other = np.zeros((label.shape[0] + dh, label.shape[1] + dw), np.uint8)
                new = ex(image, label, name, label_bytes=png(other))
            elif kind == "label_out_of_range":
                bad = label.copy()
                ys, xs = rs.randint(0, bad.shape[0], 3), rs.randint(0, bad.shape[1], 3)
                bad[ys, xs] = rs.randint(NUM_CLASSES, IGNORE)  # never the ignore label
                new = ex(image, bad, name)
            elif kind == "truncated_png":
                data = png(image)
                new = ex(image, label, name, image_bytes=data[:int(rs.randint(8, len(data) - 1))])
                m["expect"] = "either"  # libpng may decode a truncated tail as zeros: harmless then
            elif kind == "random_record":
                new = rs.bytes(int(rs.randint(1, 200)))
                m["expect"] = "either"  # random bytes can parse as a proto; then image decoding fails
            else:  # empty_image
                new = ex(image, label, name, image_bytes=b"")
            recs[shard] = recs[shard][:rec] + [new] + recs[shard][rec + 1:]
            paths = _write(folder, recs)
        else:
            paths = _write(folder, recs)
            p = paths[shard]
            with open(p, "rb") as f:
                data = f.read()
            ranges = _record_offsets(data)
            if kind == "truncate_file":
                cut = int(rs.randint(1, len(data)))
                if any(cut == e for _, e in ranges):
                    cut -= 1  # a cut exactly between records is a shorter valid file, not a mutant
                data = data[:cut]
                m["index"] = _record_at(ranges, cut)
            elif kind == "garbage_tail":
                data = data + rs.bytes(int(rs.randint(1, 24)))
                m["index"] = len(ranges)
            else:  # flip_bytes: XOR 1-3 bytes anywhere (length, CRC or payload) with non-zero masks
                b = bytearray(data)
                offs = rs.randint(0, len(b), int(rs.randint(1, 4)))
                for o in offs:
                    b[int(o)] ^= int(rs.randint(1, 256))
                data = bytes(b)
                m["index"] = _record_at(ranges, int(min(offs)))
            with open(p, "wb") as f:
                f.write(data)
            # All records from the damaged one to the end of that file are unreadable.
            m["lost"] = len(ranges) - m["index"]
        m["path"] = paths[shard]
        m["paths"] = paths
        m["names"] = [b[2] for b in base]
        m["strict_training"] = bool(k % 2)
        mutants.append(m)
    # one untouched copy: must be clean in both modes with nothing skipped
    clean = os.path.join(root, "clean")
    base = [(im, lb, f"clean/{nm}") for im, lb, nm in base0]
    valid = [ex(*b) for b in base]
    paths = _write(clean, [valid[:3], valid[3:]])
    mutants.append({"id": "clean", "folder": clean, "kind": "none", "expect": "clean", "total": 6,
                    "path": paths[0], "paths": paths, "names": [b[2] for b in base], "index": -1,
                    "strict_training": False})
    return mutants


def combine(mutants, folder):
    """All mutants' shards as ONE split (for the skip runs): <folder>/train-%05d-of-%05d.tfrecord."""
    from nas_deeplab.data.tfrecord import shard_path
    os.makedirs(folder)
    paths = [p for m in mutants for p in m["paths"]]
    for i, p in enumerate(paths):
        shutil.copyfile(p, shard_path(folder, "train", i, len(paths)))


# ------------------------------------------------------------------------------------------------
# iterating mutants (child process)
# ------------------------------------------------------------------------------------------------

def _iterate(folder, training, skip):
    import tensorflow as tf
    from nas_deeplab.data import pipeline
    from nas_deeplab.data.descriptors import DatasetDescriptor
    desc = DatasetDescriptor("fuzz", NUM_CLASSES, IGNORE, {"train": 6})
    ds = pipeline.make_dataset(folder, "train", desc, batch_size=1, is_training=training,
                               crop_size=(9, 9) if training else None, repeat=False,
                               skip_corrupt_records=skip, deterministic=True, seed=3, shuffle_buffer=4)
    names = []
    try:
        for b in ds:
            names += [n.decode() for n in b["filename"].numpy()]
    except tf.errors.InvalidArgumentError as e:
        return {"outcome": "error", "message": e.message[-2000:], "names": names}
    except Exception as e:  # noqa: BLE001  any other error type breaks the promise
        return {"outcome": "unexpected", "message": f"{type(e).__name__}: {e}"[-2000:], "names": names}
    skipped = int(ds.skipped_records.numpy()) if skip else None
    return {"outcome": "ok", "names": names, "skipped": skipped}


def _child(manifest_path):
    with open(manifest_path) as f:
        manifest = json.load(f)
    for m in manifest["mutants"]:
        print(f"BEGIN {m['id']}", file=sys.stderr, flush=True)
        print(json.dumps({"id": m["id"], "strict": _iterate(m["folder"], m["strict_training"], False)}),
              flush=True)
    for training in (False, True):
        name = f"combined_skip_{'training' if training else 'eval'}"
        print(f"BEGIN {name}", file=sys.stderr, flush=True)
        print(json.dumps({"id": name, "strict": _iterate(manifest["combined"], training, True)}), flush=True)


# ------------------------------------------------------------------------------------------------
# the test
# ------------------------------------------------------------------------------------------------

def _check_strict(m, res):
    where = f"{m['id']} ({'training' if m['strict_training'] else 'eval'} mode)"
    assert res["outcome"] in ("ok", "error"), f"{where}: {res['message']}"
    if m["expect"] == "clean":
        assert res["outcome"] == "ok" and len(res["names"]) == m["total"], f"{where}: {res}"
    elif m["expect"] == "error":
        assert res["outcome"] == "error", f"{where}: a broken record iterated cleanly: {res}"
    if res["outcome"] == "error":
        promised = f"DataError: {m['path']} record {m['index']}:"
        assert promised in res["message"], f"{where}: expected {promised!r} in the error, got:\n" \
                                           f"{res['message']}"


def _survivors(m, failed):
    """Names a skip run must deliver for mutant m (failed: its strict run reported it)."""
    if not failed:
        return set(m["names"])
    shard, index = m["shard"], m["index"]
    lost = range(index, index + m.get("lost", 1))
    return {n for i, n in enumerate(m["names"]) if not (i // 3 == shard and i % 3 in lost)}


def test_mutated_records_fail_clearly_or_are_skipped_and_counted(tmp_path):
    mutants = make_mutants(str(tmp_path))
    combined = str(tmp_path / "combined")
    combine(mutants, combined)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"mutants": mutants, "combined": combined}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(manifest)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    begun = [ln.split(" ", 1)[1] for ln in proc.stderr.splitlines() if ln.startswith("BEGIN ")]
    assert proc.returncode == 0, (
        f"the pipeline process died (exit {proc.returncode}) while iterating "
        f"{begun[-1] if begun else '?'}; stderr tail:\n{proc.stderr[-3000:]}")
    results = {r["id"]: r["strict"] for r in map(json.loads, proc.stdout.strip().splitlines())}
    assert sorted(results) == sorted([m["id"] for m in mutants] +
                                     ["combined_skip_eval", "combined_skip_training"])

    # strict: each mutant iterates cleanly only if harmless, else names its file and record
    for m in mutants:
        _check_strict(m, results[m["id"]])
    failed = {m["id"] for m in mutants if results[m["id"]]["outcome"] == "error"}
    assert len(failed) >= NUM_MUTANTS * 3 // 4, "the fuzzing is (nearly) vacuous"
    assert {m["strict_training"] for m in mutants if m["id"] in failed} == {True, False}

    # skip: one pass over all mutants' shards per mode completes, counts one skip per bad record (a
    # damaged frame ends its file: one count), and delivers every record the strict runs did not flag
    expected = set().union(*(_survivors(m, m["id"] in failed) for m in mutants))
    for mode in ("eval", "training"):
        res = results[f"combined_skip_{mode}"]
        assert res["outcome"] == "ok", f"skip_corrupt_records=True, {mode} mode: {res['message']}"
        assert res["skipped"] == len(failed), f"{mode}: skipped_records {res['skipped']}, {len(failed)} bad"
        got = res["names"]
        assert len(got) == len(set(got)) and set(got) == expected, (
            f"{mode}: missing {sorted(expected - set(got))[:10]}, unexpected {sorted(set(got) - expected)[:10]}")
    shutil.rmtree(tmp_path, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _child(sys.argv[1])
