"""Precise BN (training/precise_bn.py): the recomputed statistics against independent references, the
failure it repairs, the warnings, and the checkpoint it stores (eval picks it, training resumes)."""

import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from training_fixtures import tiny_train_config
from nas_deeplab.data.descriptors import get_descriptor
from nas_deeplab.data.pipeline import make_dataset
from nas_deeplab.data.tfrecord import list_split_files
from nas_deeplab.training import checkpointing, evaluator, metrics, precise_bn

DESC = get_descriptor("synthetic")
N_BATCHES, BATCH = 3, 2


def _model(prefix):
    return evaluator._load_model(evaluator.EvalConfig(checkpoint_path=prefix), DESC.num_classes, prefix)


def _numpy_eval_batches(dataset_dir, split, n_batches, batch):
    """The split's first images in file order, decoded with PIL and padded as evaluation pads them
    (bottom/right with 127.5 to the next 32k+1 size, a batch to its largest image), in numpy."""
    images = []
    for path in list_split_files(dataset_dir, split):
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            ex = tf.train.Example.FromString(record)
            png = ex.features.feature["image/encoded"].bytes_list.value[0]
            images.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float64))
    out = []
    for b in range(n_batches):
        group = images[b * batch:(b + 1) * batch]
        h = max((im.shape[0] - 1 + 31) // 32 * 32 + 1 for im in group)
        w = max((im.shape[1] - 1 + 31) // 32 * 32 + 1 for im in group)
        padded = np.full((len(group), h, w, 3), 127.5)
        for i, im in enumerate(group):
            padded[i, :im.shape[0], :im.shape[1]] = im
        out.append(padded)
    return out


def _numpy_stem_statistics(model, batches):
    """conv0_bn's input is conv0 (3x3, stride 2, fixed padding 1, no bias) of (2/255) x - 1: the mean
    and the Bessel-corrected variance of all its values over the batches (and the mean of the per-batch
    variances, the batch-size-dependent estimator precise BN must not be), in float64."""
    kernel = model.backbone.conv0.kernel.numpy().astype(np.float64)
    values, per_batch = [], []
    for images in batches:
        x = np.pad(images * (2.0 / 255.0) - 1.0, ((0, 0), (1, 1), (1, 1), (0, 0)))
        ho, wo = (images.shape[1] - 1) // 2 + 1, (images.shape[2] - 1) // 2 + 1
        y = sum(x[:, a:a + 2 * ho:2, b:b + 2 * wo:2, :] @ kernel[a, b] for a in range(3) for b in range(3))
        flat = y.reshape(-1, y.shape[-1])
        values.append(flat)
        per_batch.append(flat.var(0, ddof=1))
    pooled = np.concatenate(values, 0)
    return pooled.mean(0), pooled.var(0, ddof=1), np.mean(per_batch, 0)


def _assert_stem_matches_numpy(got_mean, got_var, model, batches):
    """To ~1e-5 (float32 moments over ~8,000 pixels), and much closer to the pooled variance than to
    the mean of the per-batch variances."""
    mean, var, mean_of_batch_var = _numpy_stem_statistics(model, batches)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_var, var, rtol=1e-5, atol=1e-5)
    assert np.abs(got_var - var).sum() < 0.1 * np.abs(got_var - mean_of_batch_var).sum()
    assert np.ptp(var) > 1e-3   # not a trivial all-equal case


@pytest.fixture(scope="module")
def eval_batches(synthetic_dir):
    ds = precise_bn.eval_batches(DESC, synthetic_dir, "train", BATCH)
    return [b["image"] for b in ds.take(N_BATCHES)]


def _stats(model):
    return {l.path: (l.moving_mean.numpy(), l.moving_variance.numpy())
            for l in precise_bn.batch_norm_layers(model)}


def test_statistics_equal_numpy_and_the_layers_own_training_mode_average(trained_run, synthetic_dir,
                                                                         eval_batches):
    """Every BN (18: stem, cells, ASPP with image pooling) against the layer's own training-mode
    statistics of ALL the batches at once (one batch of every image: its mean and Bessel-corrected
    variance are the pooled population statistics), and the stem BN against numpy on independently
    decoded and padded images."""
    prefix = os.path.join(trained_run.train_logdir, "ckpt-6")
    model = _model(prefix)
    before = {v.path: v.numpy() for v in model.variables if "moving_" not in v.path}
    result = precise_bn.recompute_bn_statistics(model, eval_batches)
    assert result.num_batches == N_BATCHES and result.num_images == N_BATCHES * BATCH
    assert len(result.updated) == 18 and not result.kept
    ours = _stats(model)
    for v in model.variables:   # frozen: no weight (nor step) changed
        if "moving_" not in v.path:
            np.testing.assert_array_equal(v.numpy(), before[v.path], err_msg=v.path)

    # The reference: each batch through the layers' own training mode (momentum 0: the moving
    # statistics become that batch's mean and Bessel-corrected variance, every BN normalising with
    # its batch's statistics as in training), then pooled by hand: mean of all values and their
    # Bessel-corrected variance. Every batch is padded to one size, so each layer sees n values a batch.
    same_size = [b["image"] for b in precise_bn.eval_batches(DESC, synthetic_dir, "train", BATCH,
                                                             crop_size=(161, 161)).take(N_BATCHES)]
    pooled_model = _model(prefix)
    precise_bn.recompute_bn_statistics(pooled_model, same_size)
    pooled = _stats(pooled_model)
    reference = _model(prefix)
    reference.aspp.dropout.keep_prob = 1.0            # training mode without dropout
    layers = precise_bn.batch_norm_layers(reference)
    for layer in layers:
        layer.momentum = 0.0
    counts, per_batch = {}, {l.path: [] for l in layers}
    original_call = type(layers[0]).call

    def counting_call(self, inputs, *args, **kwargs):
        counts[self.path] = int(np.prod(inputs.shape[:-1]))
        return original_call(self, inputs, *args, **kwargs)
    try:
        type(layers[0]).call = counting_call
        for images in same_size:
            reference(images, training=True)
            for layer in layers:
                per_batch[layer.path].append((layer.moving_mean.numpy().astype(np.float64),
                                              layer.moving_variance.numpy().astype(np.float64)))
    finally:
        type(layers[0]).call = original_call
    for path, stats in per_batch.items():
        n, k = counts[path], len(stats)
        means = np.stack([m for m, _ in stats])
        total_sq = sum((n - 1) * v + n * m * m for m, v in stats)
        mean = means.mean(0)
        var = (total_sq - k * n * mean * mean) / (k * n - 1)
        np.testing.assert_allclose(pooled[path][0], mean, rtol=1e-4, atol=1e-5, err_msg=path)
        np.testing.assert_allclose(pooled[path][1], var, rtol=1e-4, atol=1e-6, err_msg=path)
    assert BATCH in counts.values()   # the image-pooling BN (2 values a batch) is among them

    np_batches = _numpy_eval_batches(synthetic_dir, "train", N_BATCHES, BATCH)
    for np_images, images in zip(np_batches, eval_batches):
        assert np_images.shape == tuple(images.shape)   # padded areas included, as evaluated
    _assert_stem_matches_numpy(*ours["deeplab/hnasnet/conv0_bn"], model, np_batches)


def _predict(predict, dataset):
    preds, cm = [], np.zeros((DESC.num_classes,) * 2, np.int64)
    for batch in dataset:
        pred = predict(batch["image"])[0].numpy()[0]
        h, w = int(batch["height"][0]), int(batch["width"][0])
        preds.append(pred[:h, :w])
        cm += metrics.confusion_matrix_np(batch["label"].numpy()[0, :h, :w, 0], pred[:h, :w],
                                          DESC.num_classes, DESC.ignore_label)
    return preds, metrics.mean_iou(cm)


@pytest.fixture(scope="module")
def crop_trained_run(tmp_path_factory, tiny_model_config, synthetic_dir):
    """30 steps on 33x33 crops (BN decay 0.9): a model that predicts several classes."""
    from nas_deeplab.training.trainer import train
    logdir = tmp_path_factory.mktemp("runs") / "crops"
    return train(tiny_train_config(logdir, tiny_model_config, synthetic_dir, training_number_of_steps=30,
                                   save_interval_steps=30), stream=io.StringIO())


def test_crop_statistics_of_another_distribution_break_full_images_and_precise_bn_restores(
        crop_trained_run, synthetic_dir, eval_batches):
    """Moving statistics taken on 33x33 training crops of colour-inverted images (a distribution the
    full-size images do not have) make the network disagree with its population-statistics self on
    most pixels; precise BN on full-size eval-preprocessed images restores the statistics (to the
    numpy ones of those images) and every prediction."""
    model = _model(crop_trained_run.checkpoint)
    predict = evaluator.make_predict_fn(model, (1.0,), False)
    full = make_dataset(synthetic_dir, "val", DESC, batch_size=1, is_training=False, eval_pad_stride=32,
                        repeat=False)
    precise_bn.recompute_bn_statistics(model, eval_batches)
    good_stats = _stats(model)
    good_preds, good_miou = _predict(predict, full)

    crops = make_dataset(synthetic_dir, "train", DESC, batch_size=4, is_training=True, crop_size=(33, 33),
                         seed=0, deterministic=True)
    precise_bn.recompute_bn_statistics(model, crops.map(lambda b: 255.0 - b["image"]), 4)
    bad_preds, bad_miou = _predict(predict, full)
    agree = np.mean(np.concatenate([(a == b).ravel() for a, b in zip(bad_preds, good_preds)]))
    assert len(set(np.concatenate([p.ravel() for p in good_preds]))) >= 3   # not a constant predictor
    assert agree < 0.6 and bad_miou < good_miou - 0.1, (agree, bad_miou, good_miou)  # 0.28, 0.03, 0.30

    precise_bn.recompute_bn_statistics(model, eval_batches)
    restored = _stats(model)
    for path, (mean, var) in good_stats.items():
        np.testing.assert_allclose(restored[path][0], mean, rtol=1e-6, atol=1e-7, err_msg=path)
        np.testing.assert_allclose(restored[path][1], var, rtol=1e-6, atol=1e-7, err_msg=path)
    _assert_stem_matches_numpy(*restored["deeplab/hnasnet/conv0_bn"], model,
                               _numpy_eval_batches(synthetic_dir, "train", N_BATCHES, BATCH))
    preds, miou = _predict(predict, full)
    for a, b in zip(preds, good_preds):
        np.testing.assert_array_equal(a, b)
    assert miou == good_miou


def test_degenerate_moving_variance_is_named_and_single_image_batches_refused(trained_run, eval_batches):
    model = _model(os.path.join(trained_run.train_logdir, "ckpt-6"))
    precise_bn.recompute_bn_statistics(model, eval_batches)
    assert precise_bn.degenerate_channels(model, eval_batches[0][:1]) == []
    bn = model.backbone.conv0_bn
    var = bn.moving_variance.numpy()
    var[:5] = 1e-12
    bn.moving_variance.assign(var)
    found = precise_bn.degenerate_channels(model, eval_batches[0][:1])
    assert found == [("deeplab/hnasnet/conv0_bn", 5, 64)]
    line = precise_bn.degenerate_warning(found)
    assert "conv0_bn (5/64 channels)" in line and "--precise_bn_batches" in line
    with pytest.raises(ValueError, match="image_pooling.*batches of >= 2 images"):
        precise_bn.recompute_bn_statistics(model, [eval_batches[0][:1]])


def test_crop_warning_threshold():
    assert precise_bn.crop_warning((33, 33), (65, 66)) is None           # 3.9x the area
    line = precise_bn.crop_warning((33, 33), (129, 161))
    assert "19x" in line and "33x33" in line and "--precise_bn_batches" in line
    assert precise_bn.crop_warning(None, (129, 161)) is None


def _tensors(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k not in ("_CHECKPOINTABLE_OBJECT_GRAPH", checkpointing.INFO_TENSOR)}


def test_eval_stores_a_precise_checkpoint_that_eval_picks_and_training_resumes_from(
        tmp_path, trained_run, tiny_model_config, synthetic_dir, eval_batches):
    run = tmp_path / "run"
    shutil.copytree(trained_run.train_logdir, run, ignore=shutil.ignore_patterns("eval", "train"))
    stream = io.StringIO()
    plain = evaluator.evaluate(evaluator.EvalConfig(checkpoint_path=str(run), dataset_dir=synthetic_dir,
                                                    output_dir=str(tmp_path / "e0")), stream)
    assert plain["precise_bn"] is None
    out = stream.getvalue()
    assert "warning: the evaluated images" in out and "--precise_bn_batches" in out

    stream = io.StringIO()
    res = evaluator.evaluate(evaluator.EvalConfig(
        checkpoint_path=str(run), dataset_dir=synthetic_dir, output_dir=str(tmp_path / "e1"),
        precise_bn_batches=N_BATCHES, precise_bn_batch_size=BATCH), stream)
    new = str(run / "ckpt_precise_bn-6")
    assert res["checkpoint"] == new and tf.train.latest_checkpoint(str(run)) == new
    assert res["global_step"] == 6 and res["results_json"].endswith("results_step6_scales1_precise_bn.json")
    assert "warning: the evaluated images" not in stream.getvalue()
    info = precise_bn.read_info(new)
    assert info["num_batches"] == N_BATCHES and info["batch_size"] == BATCH and info["split"] == "train"
    assert info["source_checkpoint"] == "ckpt-6" and info["padding_included"] is True
    assert precise_bn.read_info(str(run / "ckpt-6")) is None
    state = tf.train.get_checkpoint_state(str(run))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-3", "ckpt-6",
                                                                                "ckpt_precise_bn-6"]

    # The new checkpoint: the source's tensors (weights, optimizer slots, step) with the BN
    # statistics replaced by the ones recompute_bn_statistics gives on the same batches.
    old, stored = _tensors(str(run / "ckpt-6")), _tensors(new)
    assert old.keys() == stored.keys()
    expected = _model(str(run / "ckpt-6"))
    precise_bn.recompute_bn_statistics(expected, eval_batches)
    changed = {k for k in old if not np.array_equal(old[k], stored[k])}
    assert len(changed) == 36 and all("moving_" in k for k in changed)
    reloaded = _model(new)
    for a, b in zip(precise_bn.batch_norm_layers(reloaded), precise_bn.batch_norm_layers(expected)):
        np.testing.assert_array_equal(a.moving_variance.numpy(), b.moving_variance.numpy())

    # Training resumes from it (the step, optimizer and weights are the source's) and moves on.
    result = train_more(run, tiny_model_config, synthetic_dir)
    assert result.resumed_from == new and result.step == 8
    assert tf.train.latest_checkpoint(str(run)).endswith("ckpt-8")


def train_more(run, model_config, dataset_dir):
    from nas_deeplab.training.trainer import train
    return train(tiny_train_config(run, model_config, dataset_dir, training_number_of_steps=8,
                                   save_interval_steps=2, max_to_keep=5), stream=io.StringIO())


def test_bad_precise_bn_settings_are_refused_naming_the_flag(tmp_path, trained_run):
    from nas_deeplab.export import exporter
    from nas_deeplab.training.trainer import TrainConfig
    with pytest.raises(ValueError, match="--precise_bn_batches"):
        evaluator.EvalConfig(checkpoint_path="x", precise_bn_batches=-1).validate()
    with pytest.raises(ValueError, match="--precise_bn_batch_size"):
        evaluator.EvalConfig(checkpoint_path="x", precise_bn_batches=2, precise_bn_batch_size=1).validate()
    with pytest.raises(ValueError, match="--precise_bn_batch_size"):
        TrainConfig(precise_bn_batches=2, precise_bn_batch_size=1).validate()
    with pytest.raises(exporter.ExportError, match="--precise_bn_batches"):
        exporter.run_export(exporter.ExportConfig(export_path=str(tmp_path / "x"), precise_bn_batches=-1,
                                                  checkpoint_path=trained_run.train_logdir))
    assert not (tmp_path / "x").exists()
    frozen = tmp_path / "frozen"
    shutil.copytree(trained_run.train_logdir, frozen, ignore=shutil.ignore_patterns("eval", "train"))
    recorded = json.load(open(frozen / "train_config.json"))
    json.dump(dict(recorded, fine_tune_batch_norm=False), open(frozen / "train_config.json", "w"))
    with pytest.raises(ValueError, match="fine_tune_batch_norm=false"):
        precise_bn.store_precise_checkpoint(str(frozen / "ckpt-6"), 2, 2)


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_cli(name, argv):
    """Run train.py / eval.py in-process on private flags -> (exit status, output)."""
    import importlib.util
    from absl import flags
    spec = importlib.util.spec_from_file_location(f"_{name}_cli_pbn", os.path.join(ROOT, f"{name}.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv([f"{name}.py"] + list(argv))
    out = io.StringIO()
    return cli.run(fv, stream=out), out.getvalue()


def test_train_py_runs_precise_bn_before_its_closing_eval_and_export_stores_and_uses_it(
        tmp_path, tiny_arch_path, synthetic_dir, capsys):
    run = tmp_path / "run"
    model_flags = [f"--architecture={tiny_arch_path}", "--atrous_rates=2", "--decoder_output_stride=none",
                   f"--dataset_dir={synthetic_dir}"]
    rc, out = _run_cli("train", model_flags + [
        "--training_number_of_steps=2", "--train_batch_size=2", "--train_crop_size=33,33",
        "--strategy=one_device", f"--train_logdir={run}", "--precise_bn_batches=2"])
    assert rc == 0, out
    assert "precise BN: moving statistics of 18 BN layers recomputed over 2 batches (4 images)" in out
    assert "checkpoint ckpt_precise_bn-2: miou" in out and "warning: the evaluated images" not in out
    assert tf.train.latest_checkpoint(str(run)).endswith("ckpt_precise_bn-2")
    assert json.load(open(run / "eval" / "results.json"))["precise_bn"]["num_batches"] == 2

    from nas_deeplab.export import exporter
    result = exporter.run_export(exporter.ExportConfig(
        export_path=str(tmp_path / "exported"), checkpoint_path=str(run / "ckpt-2"),
        export_format="official_checkpoint", allow_unpublished_architecture=True, precise_bn_batches=3))
    new = str(run / "ckpt_precise_bn-2")
    assert precise_bn.read_info(new)["num_batches"] == 3 and tf.train.latest_checkpoint(str(run)) == new
    stored = _stats(_model(new))["deeplab/aspp/image_pooling/BatchNorm"][1]
    exported = tf.train.load_checkpoint(tf.train.latest_checkpoint(result.path))
    values = [exported.get_tensor(k) for k in exported.get_variable_to_shape_map()]
    assert any(v.shape == stored.shape and np.array_equal(v, stored) for v in values)

    rc, _ = _run_cli("eval", [f"--checkpoint_path={run}", "--precise_bn_batches=3",
                              "--precise_bn_batch_size=1"])
    assert rc == 2 and "--precise_bn_batch_size" in capsys.readouterr().err
