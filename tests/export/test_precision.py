"""export.py --precision and --fold_batch_norm: 16-bit SavedModels with the float32 contract, batch
norm folded into the convs (numerically the unfolded model, no BN op left), refusals naming the flag.

Two models: the published cell and path at F=2 with random weights and non-trivial BN statistics
(folding numerics), and a searched path (1, 2, 2) at F=2 trained for a few steps on a small built-in
set (the 16-bit exports, whose labels are compared with the float32 export's).
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture as arch_lib
from nas_deeplab.data import synthetic
from nas_deeplab.export import bn_folding, exporter
from nas_deeplab.export import saved_model as sm
from nas_deeplab.model import layers
from nas_deeplab.model.deeplab import ModelOptions, build_deeplab
from nas_deeplab.training.model_config import ModelConfig

from export_testlib import randomize

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BN_OPS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")


def _images(n, h, w, seed):
    return np.random.RandomState(seed).randint(0, 256, (n, h, w, 3)).astype(np.uint8)


def _bn_layers(model):
    return [l for l in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(l, layers.BatchNorm)]


def _nodes(graph):
    """Every NodeDef of a graph and of the functions in its library (a loaded signature calls them)."""
    graph_def = graph.as_graph_def()
    yield from graph_def.node
    for fdef in graph_def.library.function:
        yield from fdef.node_def


def _count_ops(graph, types):
    return sum(node.op in types for node in _nodes(graph))


def _trained_like(model, seed=0):
    """Random weights, then BN statistics far from (0, 1) as in a trained model: means up to +-2, variances
    0.05..4, gamma 0.3..2: folding errors (a wrong epsilon, the scale on the wrong axis) show at once."""
    randomize(model, seed)
    rng = np.random.RandomState(seed + 1)
    for bn in _bn_layers(model):
        c = bn.gamma.shape[0]
        bn.gamma.assign(rng.uniform(0.3, 2.0, c).astype(np.float32))
        bn.beta.assign(rng.uniform(-1.0, 1.0, c).astype(np.float32))
        bn.moving_mean.assign(rng.uniform(-2.0, 2.0, c).astype(np.float32))
        bn.moving_variance.assign(np.exp(rng.uniform(np.log(0.05), np.log(4.0), c)).astype(np.float32))
    kernel = model.logits.conv.kernel   # initialised with stddev 0.01: logits of a trained model are O(10)
    kernel.assign(kernel * 100.0)
    return model


# -- folding on the published cell and path ---------------------------------------------------------

@pytest.fixture(scope="module")
def published():
    arch = arch_lib.published(2, name="tiny_published")
    model = build_deeplab(arch, ModelOptions(num_classes=3, aspp_convs_filters=16, decoder_filters=16))
    return arch, _trained_like(model)


def _naive_bn_after_conv(x, kernel, bn, depthwise=False):
    """A conv then the fused inference BN, written out with numpy-able TF ops (the unfolded math)."""
    eps = max(float(bn.epsilon), 1.001e-5)
    y = (tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME") if depthwise
         else tf.nn.conv2d(x, kernel, 1, "SAME"))
    return (y - bn.moving_mean) / tf.sqrt(bn.moving_variance + eps) * bn.gamma + bn.beta


def test_folded_kernels_and_bias_reproduce_conv_then_bn_for_each_kind_of_pair(published):
    """Per pair: the folded kernel + bias applied to a random input equals conv -> BN (written out here)
    for a regular conv, a separable conv's pointwise kernel and a head's depthwise kernel."""
    _, model = published
    pairs = bn_folding.conv_bn_pairs(model)
    values = bn_folding.folded_values(model)
    kinds = {}
    for p in pairs:
        kinds.setdefault((p.channel_axis, tuple(p.kernel.shape[:2])), p)
    assert {axis for axis, _ in kinds} == {2, 3}   # depthwise (heads) and conv / pointwise kernels
    rng = np.random.RandomState(0)
    for p in kinds.values():
        cin = p.kernel.shape[2]
        x = tf.constant(rng.randn(1, 9, 9, cin).astype(np.float32))
        depthwise = p.channel_axis == 2
        ref = _naive_bn_after_conv(x, p.kernel, p.bn, depthwise)
        k = values.kernels[p.kernel.path]
        y = (tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME") if depthwise else tf.nn.conv2d(x, k, 1, "SAME"))
        y = y + values.biases[p.bn.path]
        np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4 * np.abs(ref.numpy()).max(),
                                   err_msg=p.bn.path)


def test_folding_equals_the_unfolded_model_and_removes_every_batch_norm_op(published):
    """The whole folded model against the unfolded one (logits within 1e-4 of their scale, labels equal
    wherever the top two logits are not within 1e-4 of each other), and its graph has no BN op left:
    the unfolded graph has one FusedBatchNormV3 per BatchNorm layer."""
    arch, model = published
    folded, _ = exporter.build_model(arch, 3, {"aspp_convs_filters": 16, "decoder_filters": 16})
    for a, b in zip(folded.variables, model.variables):
        a.assign(b)
    n_bn = len(_bn_layers(model))
    assert bn_folding.fold(folded) == n_bn == len(bn_folding.conv_bn_pairs(model))
    x = tf.constant(_images(2, 41, 57, seed=1).astype(np.float32))
    ref, out = model(x, training=False).numpy(), folded(x, training=False).numpy()
    scale = np.abs(ref).max()
    assert scale > 1.0            # trained-like: logits far from the ~1e-5 of untouched random weights
    err = np.abs(out - ref).max()
    assert err <= 1e-4 * scale, err
    top2 = np.sort(ref, -1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-4 * scale
    np.testing.assert_array_equal(out.argmax(-1)[clear], ref.argmax(-1)[clear])

    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    unfolded_graph = tf.function(lambda v: model(v, training=False)).get_concrete_function(spec).graph
    folded_graph = tf.function(lambda v: folded(v, training=False)).get_concrete_function(spec).graph
    assert _count_ops(unfolded_graph, BN_OPS) == n_bn
    assert _count_ops(folded_graph, BN_OPS) == 0
    assert _count_ops(folded_graph, ("BiasAdd",)) == n_bn + 1   # + the logits' own bias
    with pytest.raises(bn_folding.FoldingError, match="folded already"):
        bn_folding.fold(folded)


def test_a_batch_norm_without_a_conv_before_it_is_refused_not_skipped(published):
    _, model = published
    pairs = bn_folding.conv_bn_pairs(model)
    cell = model.backbone.cells[0]
    original = cell.conv_1x1
    try:
        object.__setattr__(cell, "conv_1x1", layers.Conv2D(cell.filters, 1, use_bias=True))  # has a bias
        with pytest.raises(bn_folding.FoldingError, match="cannot fold"):
            bn_folding.conv_bn_pairs(model)
    finally:
        object.__setattr__(cell, "conv_1x1", original)
    assert len(bn_folding.conv_bn_pairs(model)) == len(pairs)


# -- 16-bit exports of a briefly trained searched architecture ---------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder: the searched path (1, 2, 2) at F=2, 40 steps on 8 built-in synthetic images."""
    from nas_deeplab.training.trainer import TrainConfig, train
    root = tmp_path_factory.mktemp("precision")
    data = str(root / "data")
    synthetic.build(data, num_train=8, num_val=2)
    arch = arch_lib.Architecture(("separable_3x3_2", "atrous_3x3", "max_pool_3x3", "skip_connect"),
                                 (1, 0, 2, 0), (1, 2, 2), 2, name="searched_test")
    arch_path = str(root / "arch.json")
    arch.save(arch_path)
    cfg = TrainConfig(model=ModelConfig(architecture=arch_path), train_logdir=str(root / "run"),
                      dataset="synthetic", dataset_dir=data, train_batch_size=4, train_crop_size=(49, 49),
                      training_number_of_steps=40, base_learning_rate=0.05, save_interval_steps=40,
                      log_interval_steps=100, summary_interval_steps=100, strategy="one_device",
                      deterministic=True, seed=1)
    result = train(cfg, stream=io.StringIO())
    return result.train_logdir, data


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    run, _ = trained
    out = tmp_path_factory.mktemp("exports")
    results = {}
    for precision in ("float32", "bfloat16"):
        cfg = exporter.ExportConfig(export_path=str(out / precision), checkpoint_path=run, precision=precision)
        results[precision] = exporter.run_export(cfg)
    return results


def _dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_bfloat16_export_records_precision_folds_bn_and_stores_16_bit_weights(exports):
    f32, bf16 = exports["float32"], exports["bfloat16"]
    info32 = json.loads(sm.read_asset(f32.path, "export_info.json"))
    info16 = json.loads(sm.read_asset(bf16.path, "export_info.json"))
    assert (info32["precision"], info32["batch_norm_folded"]) == ("float32", 0)   # default: unchanged
    n_bn = len(_bn_layers(f32.model))
    assert (info16["precision"], info16["batch_norm_folded"]) == ("bfloat16", n_bn)
    assert info16["outputs"] == info32["outputs"]
    assert "computes in bfloat16" in exporter.describe(bf16)
    loaded32, loaded16 = tf.saved_model.load(f32.path), tf.saved_model.load(bf16.path)
    dtypes = {v.dtype for v in loaded16.model_variables}
    assert tf.bfloat16 in dtypes and {v.dtype for v in loaded32.model_variables} <= {tf.float32, tf.int64}
    # The graph no longer reads gamma and the moving statistics: they are not saved either.
    assert len(loaded16.model_variables) == len(loaded32.model_variables) - 3 * n_bn
    for key in (sm.SIGNATURE_KEY, sm.LABELS_SIGNATURE_KEY):
        assert _count_ops(loaded16.signatures[key].graph, BN_OPS) == 0
        assert _count_ops(loaded32.signatures[key].graph, BN_OPS) == n_bn
        assert _count_ops(loaded16.signatures[key].graph, ("Conv2D",)) > 0
    conv_types = {tf.as_dtype(node.attr["T"].type) for node in _nodes(loaded16.signatures[sm.LABELS_SIGNATURE_KEY].graph)
                  if node.op == "Conv2D"}
    assert tf.bfloat16 in conv_types      # the backbone and heads compute in bfloat16 ...
    assert tf.float32 in conv_types       # ... the logits layer in float32
    var32 = _dir_bytes(os.path.join(f32.path, "variables"))
    var16 = _dir_bytes(os.path.join(bf16.path, "variables"))
    assert var16 < 0.6 * var32, (var16, var32)


def test_bfloat16_labels_agree_with_the_float32_export_on_a_trained_model(exports, trained):
    """Same signatures and dtypes; on the run's images (train and val) the labels agree on >= 99% of the
    pixels, and everywhere the float32 top two log-probabilities are more than 0.5 apart."""
    _, data = trained
    s32 = tf.saved_model.load(exports["float32"].path).signatures[sm.SIGNATURE_KEY]
    s16 = tf.saved_model.load(exports["bfloat16"].path).signatures[sm.SIGNATURE_KEY]
    assert s16.structured_outputs.keys() == s32.structured_outputs.keys()
    from nas_deeplab.data.descriptors import get_descriptor
    from nas_deeplab.data.pipeline import make_dataset
    equal = total = 0
    for split in ("train", "val"):
        for e in make_dataset(data, split, get_descriptor("synthetic"), batch_size=1, is_training=False):
            h, w = int(e["height"][0]), int(e["width"][0])
            img = tf.cast(e["image"][:, :h, :w], tf.uint8)
            a, b = s32(ImageTensor=img), s16(ImageTensor=img)
            for k in (sm.PREDICTIONS, sm.PROBABILITIES):
                assert b[k].dtype == a[k].dtype and b[k].shape == a[k].shape
            assert b[sm.PREDICTIONS].dtype == tf.int32 and b[sm.PROBABILITIES].dtype == tf.float32
            pa, pb = a[sm.PREDICTIONS].numpy(), b[sm.PREDICTIONS].numpy()
            logp = np.log(a[sm.PROBABILITIES].numpy() + 1e-30)
            top2 = np.sort(logp, -1)[..., -2:]
            clear = top2[..., 1] - top2[..., 0] > 0.5
            np.testing.assert_array_equal(pb[clear], pa[clear])
            equal += int((pa == pb).sum())
            total += pa.size
    assert equal / total >= 0.99, equal / total


def test_bfloat16_saved_model_serves_in_saved_model_cli_with_the_float32_contract(exports, tmp_path):
    """`saved_model_cli run` (TF1-style loading in another process, as TF Serving does): uint8 in,
    int32 labels and float32 probabilities out, the labels those of the loaded SavedModel."""
    path = exports["bfloat16"].path
    images = _images(1, 37, 45, seed=9)
    np.save(tmp_path / "x.npy", images)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        ["saved_model_cli", "run", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default",
         "--inputs", f"ImageTensor={tmp_path / 'x.npy'}", "--outdir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pred = np.load(tmp_path / "out" / "SemanticPredictions.npy")
    probs = np.load(tmp_path / "out" / "SemanticProbabilities.npy")
    assert pred.dtype == np.int32 and pred.shape == (1, 37, 45)
    assert probs.dtype == np.float32 and probs.shape == (1, 37, 45, 6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    ref = tf.saved_model.load(path).signatures[sm.SIGNATURE_KEY](ImageTensor=tf.constant(images))
    np.testing.assert_array_equal(pred, ref[sm.PREDICTIONS].numpy())


def test_float16_and_unfolded_bfloat16_exports_serve(trained, exports, tmp_path):
    """float16 runs on TF's CPU kernels; --nofold_batch_norm keeps the BNs (and float32 weights, so the
    statistics are not rounded) in a bfloat16 graph; --fold_batch_norm folds a float32 export too."""
    run, _ = trained
    images = tf.constant(_images(1, 33, 40, seed=2))
    ref = tf.saved_model.load(exports["float32"].path).signatures[sm.LABELS_SIGNATURE_KEY](
        ImageTensor=images)[sm.PREDICTIONS].numpy()
    n_bn = len(_bn_layers(exports["float32"].model))
    for name, kw, folded, agree in (("f16", dict(precision="float16"), n_bn, 0.99),
                                    ("bf16_nofold", dict(precision="bfloat16", fold_batch_norm=False), 0, 0.99),
                                    ("f32_fold", dict(fold_batch_norm=True), n_bn, 0.9999)):
        result = exporter.run_export(exporter.ExportConfig(export_path=str(tmp_path / name), checkpoint_path=run,
                                                           **kw))
        assert result.batch_norm_folded == folded
        loaded = tf.saved_model.load(result.path)
        sig = loaded.signatures[sm.LABELS_SIGNATURE_KEY]
        assert _count_ops(sig.graph, BN_OPS) == n_bn - folded
        labels = sig(ImageTensor=images)[sm.PREDICTIONS]
        assert labels.dtype == tf.int32
        assert (labels.numpy() == ref).mean() >= agree, name
        info = json.loads(sm.read_asset(result.path, "export_info.json"))
        assert info["precision"] == kw.get("precision", "float32") and info["batch_norm_folded"] == folded
    nofold = tf.saved_model.load(str(tmp_path / "bf16_nofold"))
    assert {v.dtype for v in nofold.model_variables} <= {tf.float32, tf.int64}


def test_mean_preserving_export_is_recorded_and_serves_like_float32(trained, exports, tmp_path):
    """--weight_rounding=mean_preserving: calibrated on the run's training images, recorded in
    export_info.json and the summary, other 16-bit weights than the nearest-rounded export's, labels
    within 1% of float32 (tests/export/test_rounding.py checks the values themselves)."""
    run, _ = trained
    result = exporter.run_export(exporter.ExportConfig(
        export_path=str(tmp_path / "mp"), checkpoint_path=run, precision="bfloat16",
        weight_rounding="mean_preserving", representative_examples=2))
    info = json.loads(sm.read_asset(result.path, "export_info.json"))
    assert (info["precision"], info["weight_rounding"]) == ("bfloat16", "mean_preserving")
    assert "weights rounded mean-preserving" in exporter.describe(result)
    assert json.loads(sm.read_asset(exports["bfloat16"].path, "export_info.json"))["weight_rounding"] == "nearest"
    near = {v.path: v.numpy() for v in exports["bfloat16"].model.variables}
    changed = 0
    for v in result.model.variables:
        if v.dtype == "bfloat16" and v.path in near:
            assert v.numpy().shape == near[v.path].shape
            changed += int((v.numpy() != near[v.path]).sum())
    assert changed > 0
    # the logits layer computes in float32 in every export: its weights are not rounded at all
    f32_vars = {v.path: v.numpy() for v in exports["float32"].model.variables}
    logits = [v for v in result.model.variables if "logits/semantic" in v.path]
    assert logits and all(v.dtype == "float32" and np.array_equal(v.numpy(), f32_vars[v.path]) for v in logits)
    images = tf.constant(_images(1, 33, 40, seed=2))
    sigs = {k: tf.saved_model.load(p).signatures[sm.LABELS_SIGNATURE_KEY]
            for k, p in (("f32", exports["float32"].path), ("mp", result.path))}
    labels = {k: s(ImageTensor=images)[sm.PREDICTIONS].numpy() for k, s in sigs.items()}
    assert (labels["mp"] == labels["f32"]).mean() >= 0.99


def test_export_precision_agreement_script_on_the_trained_run(trained, tmp_path):
    """bench/export_precision_agreement.py end to end: every variant and draw is recorded, a rounding
    draw leaves the float32 labels (all but near ties) alone, and the 16-bit labels stay close."""
    run, data = trained
    out = tmp_path / "epa.json"
    script = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "export_precision_agreement.py")
    proc = subprocess.run([sys.executable, script, f"--checkpoint_path={run}", "--dataset=synthetic",
                           f"--dataset_dir={data}", "--draws=2", "--calibration_examples=2",
                           "--variants=bfloat16:fold,float16:fold:mean_preserving", f"--output_json={out}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    recs = report["records"]
    assert [(r["draw"], r["variant"]) for r in recs] == [
        (d, v) for d in (0, 1) for v in ("bfloat16:fold", "float16:fold:mean_preserving")]
    pixels = recs[0]["pixels"]
    for r in recs:
        assert r["pixels"] == pixels and r["batch_norm_folded"] > 0
        assert r["float32_labels_moved"] <= 1e-4 * pixels
        assert r["equal"] / pixels == r["equal_fraction"] >= 0.98
    assert {k: v["draws"] for k, v in report["summary"].items()} == {"bfloat16:fold": 2,
                                                                    "float16:fold:mean_preserving": 2}
    assert "8 draws" not in proc.stdout and "2 draws: equal >=" in proc.stdout


# -- refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,path,kw,match", [
    ("tflite", "m.tflite", dict(precision="bfloat16", crop_size=(33, 33)), r"--precision=bfloat16 .*--tflite_quantization"),
    ("keras", "m.keras", dict(precision="float16"), r"--precision=float16 applies to --export_format=saved_model"),
    ("official_checkpoint", "ckpt", dict(precision="bfloat16"), r"--precision=bfloat16 .*checkpoints stay float32"),
    ("keras", "m.keras", dict(fold_batch_norm=True), r"--fold_batch_norm applies to"),
    ("saved_model", "sm", dict(precision="float64"), r"--precision='float64': choose one of"),
    ("saved_model", "sm", dict(weight_rounding="mean_preserving"), r"--weight_rounding=mean_preserving applies to 16-bit"),
    ("tflite", "m.tflite", dict(weight_rounding="mean_preserving", crop_size=(33, 33)),
     r"--weight_rounding=mean_preserving applies to --export_format=saved_model\|features"),
    ("saved_model", "sm", dict(precision="bfloat16", weight_rounding="stochastic"), r"--weight_rounding='stochastic'"),
    ("saved_model", "sm", dict(precision="bfloat16", representative_split="train"),
     r"--representative_split applies to --export_format=tflite \(int8\) and to --weight_rounding"),
])
def test_unsupported_combinations_are_refused_naming_the_flag(tmp_path, fmt, path, kw, match):
    cfg = exporter.ExportConfig(export_path=str(tmp_path / path), export_format=fmt, allow_random_init=True, **kw)
    with pytest.raises(exporter.ExportError, match=match) as info:
        exporter.run_export(cfg)
    assert "\n" not in str(info.value)
    assert not os.listdir(tmp_path)


def test_cli_refuses_precision_for_tflite_with_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "export.py"), "--allow_random_init", "--export_format=tflite",
         "--crop_size=33,33", "--precision=bfloat16", f"--export_path={tmp_path / 'm.tflite'}"],
        capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("export.py: error:")]
    assert len(errors) == 1 and "--precision=bfloat16" in errors[0] and "--tflite_quantization" in errors[0]
