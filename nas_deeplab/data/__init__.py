"""Data: official-format TFRecords, descriptors, the tf.data pipeline, the built-in synthetic set.

Modules: `descriptors` (get_descriptor), `tfrecord` (example format, shards), `preprocess` (official
train/eval preprocessing), `pipeline` (make_dataset, count_records), `synthetic`
(ensure_builtin_dataset, resolve_dataset), `builder` (generic folder -> TFRecords) and the
per-dataset converters `cityscapes`, `voc`, `ade20k`. Errors: `errors.DataError`.
"""
