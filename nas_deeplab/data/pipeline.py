"""The tf.data input pipeline over official-format TFRecords.

Shape of the pipeline (all graph ops, no py_function):

  shard files --interleave(parallel)--> (path, file_id, record_index, bytes)   [framing checked]
    -> trainA/trainB subset filter -> per-worker shard -> shuffle -> enumerate (per-example seed)
    -> decode + validate (size, label range, decodability) -> official preprocessing -> batch.

Every element carries its TFRecord path and record index, so a bad record fails with a message that
names both (raised as tf.errors.InvalidArgumentError whose text starts with "DataError:"), or is
skipped and counted with `skip_corrupt_records=True`. Framing/CRC corruption cannot be caught per
record by tf.data, so each file is read with `ignore_errors()` and the bytes consumed are compared
with the file size at its end: a short read means the record after the last good one is corrupt.
"""

from __future__ import annotations

import hashlib
import os
import random

import tensorflow as tf

from nas_deeplab.data import preprocess
from nas_deeplab.data.descriptors import DatasetDescriptor, get_descriptor
from nas_deeplab.data.errors import DataError
from nas_deeplab.data.tfrecord import FEATURE_SPEC, decode_example, list_split_files

SUBSETS = (None, "trainA", "trainB")
_KIND_RECORD, _KIND_END_OK, _KIND_CORRUPT = 0, 1, 2


def count_records(dataset_dir: str, split: str) -> int:
    """Number of records in a split (reads every shard once; no decoding)."""
    files = list_split_files(dataset_dir, split)
    return int(sum(_count_file(p) for p in files))


def _count_file(path: str) -> int:
    n = 0
    try:
        for _ in tf.data.TFRecordDataset(path):
            n += 1
    except tf.errors.DataLossError:
        raise DataError(f"corrupt TFRecord {path}: record {n} cannot be read (bad length/CRC or "
                        f"truncated file)") from None
    return n


# ----------------------------------------------------------------------------------------------
# trainA / trainB
# ----------------------------------------------------------------------------------------------

def record_keys(files: list[str]) -> list[tuple[int, int, str]]:
    """(file_id, record_index, key) for every record; key = image/filename, made unique if needed."""
    spec = {"image/filename": FEATURE_SPEC["image/filename"]}
    out = []
    for fid, path in enumerate(files):
        ds = tf.data.TFRecordDataset(path).map(
            lambda r: tf.io.parse_single_example(r, spec)["image/filename"])
        try:
            for idx, name in enumerate(ds.as_numpy_iterator()):
                out.append((fid, idx, name.decode("utf-8", "replace")))
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
            pass  # the main pipeline reports the bad record with its path and index
    seen: dict[str, int] = {}
    for _, _, k in out:
        seen[k] = seen.get(k, 0) + 1
    return [(f, i, k if k and seen[k] == 1 else f"{os.path.basename(files[f])}:{i}:{k}")
            for f, i, k in out]


def split_halves(keys: list[str], split_seed: int = 0) -> tuple[set[str], set[str]]:
    """Deterministic disjoint halves (trainA gets the extra one): order by sha256(seed:key).

    Depends only on the keys and the seed (not on shard layout, machine, or Python's salted hash).
    """
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"{split_seed}:{k}".encode()).digest())
    half = (len(ranked) + 1) // 2
    return set(ranked[:half]), set(ranked[half:])


def _subset_members(files, subset, split_seed):
    """Sorted int64 keys file_id * 2**32 + record_index of the subset's records.

    A constant tensor searched with tf.searchsorted (no lookup-table resource that could be freed
    while the dataset still uses it).
    """
    keys = record_keys(files)
    a, _ = split_halves([k for _, _, k in keys], split_seed)
    want_a = subset == "trainA"
    members = sorted(f * (1 << 32) + i for f, i, k in keys if (k in a) == want_a)
    if not members:
        raise DataError(f"subset {subset} of split files {files[0]}... is empty "
                        f"({len(keys)} readable records)")
    return tf.constant(members, tf.int64)


def _is_member(members, key):
    pos = tf.searchsorted(members, tf.reshape(key, [1]))[0]
    pos = tf.minimum(pos, tf.shape(members, out_type=pos.dtype)[0] - 1)
    return tf.equal(tf.gather(members, pos), key)


# ----------------------------------------------------------------------------------------------
# reading with framing check
# ----------------------------------------------------------------------------------------------

def _read_file(path, file_id, size):
    recs = tf.data.TFRecordDataset(path).enumerate().ignore_errors()
    recs = recs.map(lambda i, r: (i, r, tf.constant(False)))
    end = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int64), tf.constant(""), tf.constant(True)))

    def step(state, elem):
        consumed, next_idx = state
        i, r, is_end = elem
        rec_bytes = tf.cast(tf.strings.length(r), tf.int64) + 16  # length(8)+crc(4)+data+crc(4)
        new_state = (tf.where(is_end, consumed, consumed + rec_bytes), tf.where(is_end, next_idx, i + 1))
        kind = tf.where(is_end, tf.where(tf.equal(consumed, size), _KIND_END_OK, _KIND_CORRUPT),
                        _KIND_RECORD)
        return new_state, (path, file_id, tf.where(is_end, next_idx, i), r, kind)

    ds = recs.concatenate(end).scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), step)
    return ds.filter(lambda p, f, i, r, kind: tf.not_equal(kind, _KIND_END_OK))


def _safe_decode(path, file_id, index, record, kind, ignore_label):
    """Decode in a nested dataset with ignore_errors(): a failure becomes ok=False, not a crash."""
    def decode(r):
        d = decode_example(r, ignore_label)
        return tf.constant(True), d["image"], d["label"], d["filename"]

    empty = (tf.constant(False), tf.zeros([0, 0, 3], tf.uint8), tf.zeros([0, 0, 1], tf.uint8),
             tf.constant(""))
    good = tf.data.Dataset.from_tensors(record).filter(lambda r: tf.equal(kind, _KIND_RECORD))
    good = good.map(decode).ignore_errors()
    out = good.concatenate(tf.data.Dataset.from_tensors(empty)).take(1)
    return out.map(lambda ok, im, lb, fn: dict(path=path, file_id=file_id, index=index, kind=kind,
                                               ok=ok, image=im, label=lb, filename=fn))


def _problem(e, num_classes, ignore_label, validate_labels):
    """'' if the element is fine, else the problem text (scalar string tensor)."""
    im_shape, lb_shape = tf.shape(e["image"]), tf.shape(e["label"])
    size_ok = tf.reduce_all(tf.equal(im_shape[:2], lb_shape[:2]))
    if validate_labels:
        lb = tf.cast(e["label"], tf.int32)
        bad = tf.logical_and(lb >= num_classes, tf.not_equal(lb, ignore_label))
        n_bad = tf.reduce_sum(tf.cast(bad, tf.int32))
        worst = tf.reduce_max(tf.where(bad, lb, -1))
    else:
        n_bad, worst = tf.constant(0), tf.constant(-1)
    size_msg = tf.strings.format("image size {}x{} differs from label size {}x{}",
                                 (im_shape[0], im_shape[1], lb_shape[0], lb_shape[1]))
    label_msg = tf.strings.format(
        "{} label value(s) outside [0, %d) other than ignore %d (e.g. {})" % (num_classes, ignore_label),
        (n_bad, worst))
    return tf.case([
        (tf.equal(e["kind"], _KIND_CORRUPT),
         lambda: tf.constant("corrupt record (bad length/CRC or truncated TFRecord file)")),
        (tf.logical_not(e["ok"]),
         lambda: tf.constant("undecodable example (bad proto, or image/label bytes not a valid JPEG/PNG)")),
        (tf.logical_not(size_ok), lambda: size_msg),
        (n_bad > 0, lambda: label_msg),
    ], default=lambda: tf.constant(""), exclusive=False)


def _raise_if_bad(e, problem):
    msg = tf.strings.join(["DataError: ", e["path"], " record ", tf.strings.as_string(e["index"]), ": ",
                           problem])
    check = tf.debugging.Assert(tf.equal(problem, ""), [msg], summarize=1)
    with tf.control_dependencies([check]):
        return {k: tf.identity(v) for k, v in e.items()}


# ----------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------

def make_dataset(dataset_dir, split, descriptor, *, batch_size, is_training, crop_size=(65, 65),
                 min_scale_factor=0.5, max_scale_factor=2.0, scale_factor_step_size=0.25,
                 min_resize_value=None, max_resize_value=None, resize_factor=None,
                 subset=None, split_seed=0, seed=None, deterministic=False, repeat=None,
                 shuffle_buffer=256, num_shards=1, shard_index=0, validate_labels=True,
                 skip_corrupt_records=False, drop_remainder=None, eval_pad_stride=None):
    """tf.data.Dataset of dicts, batched with the GLOBAL `batch_size`:

    image float32 [N,h,w,3] (0..255, padding 127.5), label int32 [N,h,w,1] (padding ignore_label),
    height/width int32 [N] (size before padding: the decoded image in training, the possibly
    resized image in evaluation), filename string [N].

    Training: official random scale / pad / crop / flip, static [N, crop_h, crop_w, .] shapes,
    shuffled, repeated. Evaluation: pad to `crop_size` (None: no minimum) and, with
    `eval_pad_stride=s`, to the next s*k+1 size; no crop, no flip, file order. Batches of differently
    sized eval images are padded to the largest (127.5 / ignore).
    `subset`: "trainA" / "trainB" are the disjoint halves of the split for the search (see
    `split_halves`). `seed` drives file/record shuffling and every random preprocessing choice (via a
    per-example stateless seed), so a fixed seed with `deterministic=True` reproduces a run exactly.
    Bad records raise tf.errors.InvalidArgumentError("DataError: <path> record <i>: <problem>") when
    iterated, or are dropped with `skip_corrupt_records=True` (count in `dataset.skipped_records`).
    """
    desc: DatasetDescriptor = get_descriptor(descriptor)
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    repeat = is_training if repeat is None else repeat
    drop_remainder = is_training if drop_remainder is None else drop_remainder
    if seed is None:
        seed = 0 if deterministic else random.SystemRandom().randrange(2 ** 31)
    num_classes, ignore = desc.num_classes, desc.ignore_label
    if is_training and crop_size is None:
        raise ValueError("training needs a crop_size")

    files = list_split_files(dataset_dir, split)
    sizes = [os.path.getsize(p) for p in files]
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(files), tf.range(len(files), dtype=tf.int64),
                                             tf.constant(sizes, tf.int64)))
    if is_training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    par_det = bool(deterministic or not is_training)
    ds = ds.interleave(_read_file, cycle_length=min(len(files), 8) if is_training else 1, block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=par_det)
    if subset is not None:
        members = _subset_members(files, subset, split_seed)
        ds = ds.filter(lambda p, f, i, r, k: tf.logical_or(
            tf.equal(k, _KIND_CORRUPT), _is_member(members, f * (1 << 32) + i)))
    if is_training and shuffle_buffer and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    # Every worker builds the same record stream (same seed); `position` is a record's place in it.
    # It seeds the record's augmentation, and worker k keeps the k-th slice of every global batch
    # (`batch_size` is the per-worker batch), so N workers train on exactly what N replicas of one
    # process would (sharding before the shuffle would give each worker its own order instead).
    ds = ds.enumerate()
    if num_shards > 1:
        ds = ds.filter(lambda m, t: tf.equal((m // batch_size) % num_shards, shard_index))
    ds = ds.interleave(lambda m, t: _safe_decode(*t, ignore).map(lambda e: dict(e, position=m)),
                       cycle_length=4, num_parallel_calls=tf.data.AUTOTUNE, deterministic=par_det)

    skipped = None
    if skip_corrupt_records:
        with tf.init_scope():
            skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_records")

        def mark(e):
            bad = tf.not_equal(_problem(e, num_classes, ignore, validate_labels), "")
            skipped.assign_add(tf.cast(bad, tf.int64))
            return e, bad

        ds = ds.map(mark).filter(lambda e, bad: tf.logical_not(bad))
        ds = ds.map(lambda e, bad: e)
    else:
        ds = ds.map(lambda e: _raise_if_bad(e, _problem(e, num_classes, ignore, validate_labels)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=par_det)

    def prep(e):
        shape = tf.shape(e["image"])
        if is_training:
            ex_seed = tf.stack([tf.constant(seed, tf.int64), e["position"]])
            image, label = preprocess.preprocess_for_train(
                e["image"], e["label"], ex_seed, crop_size=tuple(crop_size), ignore_label=ignore,
                min_scale_factor=min_scale_factor, max_scale_factor=max_scale_factor,
                scale_factor_step_size=scale_factor_step_size, min_resize_value=min_resize_value,
                max_resize_value=max_resize_value, resize_factor=resize_factor)
            h, w = shape[0], shape[1]
        else:
            image, label = tf.cast(e["image"], tf.float32), tf.cast(e["label"], tf.int32)
            if min_resize_value or max_resize_value:
                image, label = preprocess.resize_to_range(image, label, min_resize_value,
                                                          max_resize_value, resize_factor)
            rs = tf.shape(image)
            h, w = rs[0], rs[1]
            image, label = preprocess.preprocess_for_eval(
                image, label, ignore_label=ignore, crop_size=crop_size, pad_stride=eval_pad_stride)
        return {"image": image, "label": label, "height": tf.cast(h, tf.int32),
                "width": tf.cast(w, tf.int32), "filename": e["filename"]}

    ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=par_det)
    if is_training:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    else:
        ds = ds.padded_batch(batch_size, padding_values={
            "image": tf.constant(preprocess.MEAN_PIXEL, tf.float32), "label": tf.constant(ignore, tf.int32),
            "height": 0, "width": 0, "filename": ""}, drop_remainder=drop_remainder)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    opts = tf.data.Options()
    opts.deterministic = par_det
    ds = ds.with_options(opts)
    ds.skipped_records = skipped
    return ds
