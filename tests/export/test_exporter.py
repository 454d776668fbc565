"""End to end: a training run folder -> export.py (official checkpoint) -> back into a fresh model ->
serving SavedModel; numbers checked against the Keras model and an independent TF1 graph.

One tiny model (published cell and path, F=4, 3 classes) is built once per module and shared.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture as arch_lib
from nas_deeplab.export import exporter
from nas_deeplab.export import saved_model as sm
from nas_deeplab.official import checkpoint as oc
from nas_deeplab.official import restore
from nas_deeplab.io_utils import OutputError
from nas_deeplab.model.deeplab import ModelOptions, build_deeplab
from nas_deeplab.official.names import official_variable_map
from nas_deeplab.training import checkpointing

from export_testlib import make_standin
import tf1_reference

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NUM_CLASSES = 3
F = 4
STEP = 5
CLASS_NAMES = ["background", "thing", "stuff"]


def _images(n, h, w, seed):
    return np.random.RandomState(seed).randint(0, 256, (n, h, w, 3)).astype(np.uint8)


def _padded_logits(model, images):
    """Keras reference for the serving graph: pad with 127.5 to 32k+1, run, crop."""
    n, h, w, _ = images.shape
    ph, pw = sm.padded_length(h), sm.padded_length(w)
    x = np.pad(images.astype(np.float32), [[0, 0], [0, ph - h], [0, pw - w], [0, 0]],
               constant_values=sm.PAD_VALUE)
    return model(tf.constant(x), training=False).numpy()[:, :h, :w]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run folder as train.py leaves it: TF2 checkpoint ckpt-5 + checkpoint_meta.json."""
    arch = arch_lib.published(F, name="tiny")
    structure = {"atrous_rates": [12, 24, 36], "output_stride": 8, "decoder_output_stride": 4,
                 "aspp_with_separable_conv": True, "decoder_use_separable_conv": True}
    model = build_deeplab(arch, ModelOptions(num_classes=NUM_CLASSES))
    rng = np.random.RandomState(0)
    for v in model.variables:  # non-trivial BN statistics and biases
        leaf = v.path.rsplit("/", 1)[-1]
        if leaf in ("gamma", "moving_variance"):
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
        elif leaf in ("beta", "moving_mean", "biases"):
            v.assign(rng.uniform(-0.2, 0.2, v.shape).astype(np.float32))
    folder = str(tmp_path_factory.mktemp("run"))
    meta = checkpointing.build_metadata(arch, NUM_CLASSES, structure)
    checkpointing.ResumableCheckpoint(folder, meta, model=model).save(STEP)
    return folder, model, arch


@pytest.fixture(scope="module")
def official_dir(run_dir, tmp_path_factory):
    """The run's model written as an official-format checkpoint by the library."""
    _, model, arch = run_dir
    out = str(tmp_path_factory.mktemp("official") / "tf1")
    oc.export_official_checkpoint(model, os.path.join(out, "model.ckpt-5"), architecture=arch, global_step=STEP)
    return out


@pytest.fixture(scope="module")
def served(official_dir, tmp_path_factory):
    """The official checkpoint exported as a SavedModel (weights restored by official names)."""
    tmp = tmp_path_factory.mktemp("served")
    dataset = tmp / "tiny_set.json"
    dataset.write_text(json.dumps({"name": "tiny_set", "num_classes": NUM_CLASSES, "ignore_label": 255,
                                   "splits_to_sizes": {"train": 1}, "class_names": CLASS_NAMES}))
    cfg = exporter.ExportConfig(export_path=str(tmp / "saved"), checkpoint_path=official_dir,
                                dataset=str(dataset))
    result = exporter.run_export(cfg)
    return result, tf.saved_model.load(result.path)


# -- official checkpoint ---------------------------------------------------------------------------

def test_cli_exports_run_folder_as_official_checkpoint_with_exact_names_values_and_step(run_dir, tmp_path):
    """`python export.py --export_format=official_checkpoint` on a training run folder (TF2 checkpoint
    + checkpoint_meta.json), in a subprocess."""
    folder, model, _ = run_dir
    out = str(tmp_path / "tf1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "export.py"), f"--checkpoint_path={folder}",
         f"--export_path={out}", "--export_format=official_checkpoint"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "restored all" in proc.stdout
    assert tf.train.latest_checkpoint(out).endswith(f"model.ckpt-{STEP}")
    assert sorted(os.listdir(out)) == ["architecture.json", "checkpoint", f"model.ckpt-{STEP}.data-00000-of-00001",
                                       f"model.ckpt-{STEP}.index", "official_flags.txt"]
    reader = tf.train.load_checkpoint(out)
    expected = official_variable_map(model)
    assert set(reader.get_variable_to_shape_map()) == set(expected) | {"global_step"}
    assert reader.get_tensor("global_step") == STEP
    for name, var in expected.items():
        np.testing.assert_array_equal(reader.get_tensor(name), var.numpy(), err_msg=name)
    flags_txt = open(os.path.join(out, "official_flags.txt")).read()
    assert "--model_variant=nas_hnasnet" in flags_txt and f"--nas_stem_output_num_conv_filters={F}" in flags_txt


def test_official_checkpoint_round_trip_is_exact_and_matches_the_tf1_graph(run_dir, official_dir, served):
    """Export -> import into a fresh model reproduces the outputs exactly; and that model computes
    what an independent TF1 graph (tf1_reference.py, written from the spec, restored by name with a
    TF1 Saver: every variable it creates must be in the checkpoint) computes, at all end points."""
    _, model, arch = run_dir
    result, _ = served
    assert result.restore.kind == oc.KIND_OFFICIAL
    assert result.restore.excluded == [] and result.restore.unused == ["global_step"]
    assert len(result.restore.restored) == len(model.variables)
    fresh = result.model
    assert fresh is not model
    for a, b in zip(model.variables, fresh.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    x = tf.constant(_images(1, 41, 53, 1).astype(np.float32))
    np.testing.assert_array_equal(model(x, training=False).numpy(), fresh(x, training=False).numpy())

    images = _images(1, 65, 97, 2).astype(np.float32)
    ref, tf1_names = tf1_reference.run_reference(tf.train.latest_checkpoint(official_dir), images, arch,
                                                 NUM_CLASSES)
    assert set(tf1_names) == set(official_variable_map(fresh))
    ours = fresh.end_points(tf.constant(images), training=False)
    for key in ["Stem"] + [f"Cell_{i}" for i in range(12)] + ["features"]:
        np.testing.assert_allclose(ours[key].numpy(), ref[key], rtol=1e-4, atol=1e-4, err_msg=key)
    np.testing.assert_allclose(ours["upsampled_logits"].numpy(), ref["logits"], rtol=1e-4, atol=1e-4)


# -- SavedModel --------------------------------------------------------------------------------------

def _assert_predictions_match_logits(pred, logits, margin=1e-4):  # logits or probabilities
    """pred == argmax(logits), except where two classes are within `margin` (the served graph and the
    Keras model sum in different orders, ~1e-5 apart): there any class that close to the top counts."""
    top = logits.max(-1, keepdims=True)
    picked = np.take_along_axis(logits, pred[..., None].astype(np.int64), axis=-1)
    assert np.all(picked >= top - margin), "a prediction is not (one of) the top-scoring classes"
    clear = np.sort(logits, -1)[..., -2] < top[..., 0] - margin
    np.testing.assert_array_equal(pred[clear], logits.argmax(-1)[clear])



def test_saved_model_serves_like_keras_carries_metadata_rejects_bad_images_and_runs_in_saved_model_cli(
        run_dir, served, tmp_path):
    _, model, arch = run_dir
    result, loaded = served
    fn = loaded.signatures["serving_default"]
    labels_fn = loaded.signatures["predict_labels"]
    assert list(labels_fn.structured_outputs) == ["SemanticPredictions"]
    for size in [(40, 50), (41, 53)]:  # even and odd
        images = _images(2, *size, seed=size[0])
        out = fn(ImageTensor=tf.constant(images))
        logits = _padded_logits(model, images)
        assert out["SemanticPredictions"].dtype == tf.int32
        assert out["SemanticPredictions"].shape == (2,) + size
        assert out["SemanticProbabilities"].shape == (2,) + size + (NUM_CLASSES,)
        np.testing.assert_allclose(out["SemanticProbabilities"].numpy(), tf.nn.softmax(logits).numpy(),
                                   atol=1e-5)
        _assert_predictions_match_logits(out["SemanticPredictions"].numpy(), logits)
        labels = labels_fn(ImageTensor=tf.constant(images))["SemanticPredictions"]
        assert labels.dtype == tf.int32 and labels.shape == (2,) + size
        _assert_predictions_match_logits(labels.numpy(), logits)
    assert len(loaded.model_variables) == len(model.variables)

    stored_arch = json.loads(sm.read_asset(result.path, "architecture.json"))
    assert arch_lib.Architecture.from_dict(stored_arch).to_dict() == dict(arch.to_dict(), name="published")
    dataset = json.loads(sm.read_asset(result.path, "dataset.json"))
    assert dataset["class_names"] == CLASS_NAMES and len(dataset["palette"]) == NUM_CLASSES
    options = json.loads(sm.read_asset(result.path, "model_options.json"))
    assert options["num_classes"] == NUM_CLASSES and options["atrous_rates"] == [12, 24, 36]
    info = json.loads(sm.read_asset(result.path, "export_info.json"))
    assert info["inference_scales"] == [1.0] and info["add_flipped_images"] is False
    assert info["signatures"] == {"serving_default": ["SemanticPredictions", "SemanticProbabilities"],
                                  "predict_labels": ["SemanticPredictions"]}

    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="uint8"):
        fn(ImageTensor=tf.zeros((1, 33, 33, 3), tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be RGB images \[N, H, W, 3\]"):
        fn(ImageTensor=tf.zeros((1, 33, 33, 4), tf.uint8))

    # `saved_model_cli run`: TF1-style loading in another process (as TF Serving does), without
    # this repository on the path. (Same test as above so the export is not repeated per xdist worker.)
    images = _images(1, 37, 45, seed=9)
    np.save(tmp_path / "x.npy", images)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        ["saved_model_cli", "run", "--dir", served[0].path, "--tag_set", "serve", "--signature_def",
         "serving_default", "--inputs", f"ImageTensor={tmp_path / 'x.npy'}", "--outdir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pred = np.load(tmp_path / "out" / "SemanticPredictions.npy")
    probs = np.load(tmp_path / "out" / "SemanticProbabilities.npy")
    logits = _padded_logits(run_dir[1], images)
    _assert_predictions_match_logits(pred, logits)
    np.testing.assert_allclose(probs, tf.nn.softmax(logits).numpy(), atol=1e-5)


def test_multi_scale_and_flip_average_probabilities_at_the_padded_size(run_dir):
    _, model, _ = run_dir
    images = _images(1, 25, 35, seed=4)
    server = sm.SegmentationServer(model, NUM_CLASSES, inference_scales=(0.75, 1.0), add_flipped_images=True)
    pred, probs = server.predict(tf.constant(images))
    labels_only, no_probs = server.predict(tf.constant(images), with_probabilities=False)
    assert no_probs is None
    np.testing.assert_array_equal(labels_only.numpy(), pred.numpy())  # same graph, same labels
    ph, pw = sm.padded_length(30), sm.padded_length(35)
    padded = np.pad(images.astype(np.float32), [[0, 0], [0, ph - 25], [0, pw - 35], [0, 0]],
                    constant_values=127.5)
    assert (ph, pw) == (33, 65)
    # Official predict_labels_multi_scale: flip, scale the image, logits (stride 4) resized to the
    # logits grid of the image at max(1, s), flipped back, resized to the padded size.
    resize_ac = lambda x, size: tf.compat.v1.image.resize_bilinear(x, size, align_corners=True)  # noqa: E731
    passes = []
    for scale, size, grid in ((0.75, [25, 49], [9, 17]), (1.0, [ph, pw], [9, 17])):  # (d - 1) * s + 1
        for flip in (False, True):
            x = padded[:, :, ::-1] if flip else padded
            x = resize_ac(x, size) if scale != 1.0 else tf.constant(x)
            logits = resize_ac(model.end_points(x, training=False)["logits"], grid).numpy()
            logits = logits[:, :, ::-1] if flip else logits
            passes.append(tf.nn.softmax(resize_ac(logits, [ph, pw])).numpy())
    want = np.mean(passes, axis=0)[:, :25, :35]
    np.testing.assert_allclose(probs.numpy(), want, atol=1e-5)
    _assert_predictions_match_logits(pred.numpy(), want)  # (probabilities: the same argmax rule)


# -- bad input -----------------------------------------------------------------------------------------

def test_refuses_without_checkpoint_unless_allow_random_init(tmp_path):
    with pytest.raises(exporter.ExportError, match="no --checkpoint_path given.*--allow_random_init"):
        exporter.run_export(exporter.ExportConfig(str(tmp_path / "x")))
    assert not os.path.exists(tmp_path / "x")


def test_missing_and_unreadable_checkpoints(tmp_path):
    with pytest.raises(oc.CheckpointError, match="checkpoint not found"):
        exporter.run_export(exporter.ExportConfig(str(tmp_path / "o"), str(tmp_path / "none" / "ckpt-1")))
    (tmp_path / "junk.index").write_bytes(b"\x00" * 64)
    with pytest.raises(oc.CheckpointError, match="cannot read checkpoint"):
        exporter.run_export(exporter.ExportConfig(str(tmp_path / "o"), str(tmp_path / "junk")))
    assert not os.path.exists(tmp_path / "o")


def test_non_empty_export_path_is_refused_before_any_work(run_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(OutputError, match="exists and is not empty.*--overwrite"):
        exporter.run_export(exporter.ExportConfig(str(tmp_path / "out"), run_dir[0]))
    assert os.listdir(tmp_path / "out") == ["keep.txt"]


def test_flags_contradicting_the_run_metadata_are_errors(run_dir, tmp_path):
    with pytest.raises(exporter.ExportError, match=r"filter_multiplier: 20 vs 4"):
        exporter.run_export(exporter.ExportConfig(str(tmp_path / "o"), run_dir[0], architecture="auto_deeplab_s"))
    with pytest.raises(exporter.ExportError, match="--num_classes says 5, .*checkpoint_meta.json says 3"):
        exporter.run_export(exporter.ExportConfig(str(tmp_path / "o"), run_dir[0], num_classes=5))
    with pytest.raises(exporter.ExportError, match="--decoder_output_stride=8 contradicts"):
        exporter.run_export(exporter.ExportConfig(str(tmp_path / "o"), run_dir[0],
                                                  structure={"decoder_output_stride": 8}))


def test_checkpoint_not_fitting_the_model_names_variable_and_shapes(run_dir, official_dir, tmp_path):
    model = run_dir[1]
    before = [v.numpy().copy() for v in model.variables[:20]]
    reader = tf.train.load_checkpoint(official_dir)
    values = {n: reader.get_tensor(n) * 2.0 for n in official_variable_map(model)}
    bad = "hnasnet/cell_4/comb_iter_1/right/atrous_3x3/weights"
    values[bad] = np.zeros((3, 3, 16, 8), np.float32)
    oc.write_official_checkpoint(values, str(tmp_path / "bad" / "model.ckpt"))
    with pytest.raises(oc.CheckpointError, match=f"{bad}: checkpoint has shape \\[3, 3, 16, 8\\], "
                                                 "model expects \\[3, 3, 16, 16\\]"):
        restore.restore_weights(model, str(tmp_path / "bad"))
    for b, v in zip(before, model.variables[:20]):  # nothing was assigned
        np.testing.assert_array_equal(b, v.numpy())
    other = tf.train.Checkpoint(**{checkpointing.MODEL_KEY: checkpointing.model_variable_map(make_standin())})
    with pytest.raises(oc.CheckpointError, match="does not fit this model"):
        restore.restore_weights(model, other.save(str(tmp_path / "other" / "ckpt")))
    foreign = tf.train.Checkpoint(model=make_standin()).save(str(tmp_path / "foreign" / "ckpt"))
    with pytest.raises(oc.CheckpointError, match="not written by nas_deeplab training"):
        restore.restore_weights(model, foreign)


def test_unpublished_architecture_is_refused_for_official_format(tmp_path):
    ops = list(arch_lib.PUBLISHED_OPERATIONS)
    ops[0] = "separable_5x5_2"
    arch = arch_lib.Architecture(tuple(ops), arch_lib.PUBLISHED_HIDDENSTATE_INDICES, arch_lib.PUBLISHED_BACKBONE, 4,
                                 name="searched")
    arch.save(str(tmp_path / "arch.json"))
    cfg = exporter.ExportConfig(str(tmp_path / "o"), None, export_format="official_checkpoint",
                                architecture=str(tmp_path / "arch.json"), num_classes=3, allow_random_init=True)
    with pytest.raises(oc.CheckpointError, match="'searched' is not the published Auto-DeepLab cell"):
        exporter.run_export(cfg)
    assert not os.path.exists(tmp_path / "o")


def test_failed_saved_model_export_leaves_nothing_and_overwrite_replaces(tmp_path, monkeypatch):
    model = make_standin()
    target = tmp_path / "sm"

    def broken_save(obj, path, signatures=None):
        open(os.path.join(path, "saved_model.pb"), "wb").write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(OutputError, match="No space left"):
        sm.export_saved_model(model, str(target))
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    sm.export_saved_model(model, str(target), metadata={"note.txt": "first"})
    sm.export_saved_model(model, str(target), metadata={"note.txt": "second"}, overwrite=True)
    assert sm.read_asset(str(target), "note.txt") == "second"
    assert sorted(os.listdir(tmp_path)) == ["sm"]


def test_random_init_needs_the_flag_and_then_uses_train_py_default_architecture(tmp_path):
    cfg = exporter.ExportConfig(str(tmp_path / "o"), allow_random_init=True, num_classes=3)
    arch, num_classes, structure, _, source = exporter.resolve_model(cfg, None, None)
    assert source == "train.py's default (random weights)"
    assert arch.is_published() and arch.filter_multiplier == 8 and num_classes == 3 and structure == {}
    with pytest.raises(exporter.ExportError, match="cannot tell the number of classes.*--dataset"):
        exporter.resolve_model(exporter.ExportConfig(str(tmp_path / "o"), allow_random_init=True), None, None)
