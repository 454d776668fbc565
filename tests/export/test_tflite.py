"""TFLite export: labels of the converted model against the Keras model itself (padded by hand, an
independent reference), quantized variants that run, refusals, and rejected ops reported by name.

One tiny network (published cell and path, F=4, 3 classes) is shared by the module. Its weights
are fixed so that the labels are decisive and vary over the image: random BN statistics, then a
logits layer that projects the decoder features' deviation from their mean (a freshly built
network gives logits of ~1e-5, a randomised one the same class everywhere; a broken conversion
would pass either).
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture as arch_lib
from nas_deeplab.data import synthetic
from nas_deeplab.export import saved_model as sm
from nas_deeplab.export import tflite
from nas_deeplab.io_utils import OutputError
from nas_deeplab.model.deeplab import ModelOptions, build_deeplab

from export_testlib import make_standin, randomize

NUM_CLASSES = 3
CROP = (33, 40)   # 33 = 32k+1, 40 is padded to 65 inside


def _image(h, w, seed):
    """A smooth scene with edges (not white noise: the network's labels then follow its content)."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(yy * 5 + rs.randint(256)) % 256, (xx * 3 + rs.randint(256)) % 256,
                    np.where((yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2, 230, 30)], -1)
    return (img + rs.randint(0, 20, img.shape)).clip(0, 255).astype(np.uint8)[None]


def _reference_labels(model, image_uint8):
    """The Keras model on the image padded by hand (127.5, bottom/right, to 32k+1), cropped, argmax."""
    _, h, w, _ = image_uint8.shape
    ph, pw = (max((d - 1 + 31) // 32, 1) * 32 + 1 for d in (h, w))
    x = np.pad(image_uint8.astype(np.float32), [[0, 0], [0, ph - h], [0, pw - w], [0, 0]], constant_values=127.5)
    logits = model(tf.constant(x), training=False).numpy()[:, :h, :w]
    return logits.argmax(-1), logits


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)   # the same initial weights whichever tests ran before
    net = build_deeplab(arch_lib.published(4, name="tiny"), ModelOptions(num_classes=NUM_CLASSES))
    randomize(net, seed=0)
    feats = net.end_points(tf.constant(_image(65, 65, 0), tf.float32))["decoder"].numpy()
    feats = feats.reshape(-1, feats.shape[-1])
    rng = np.random.RandomState(1)
    scale = 20 / np.sqrt(feats.shape[1])   # margins of ~1: far above float32 rounding
    kernel = rng.randn(feats.shape[1], NUM_CLASSES) / (feats.std(0)[:, None] + 1e-6) * scale
    w, b = net.logits.variables
    w.assign(kernel.reshape(w.shape).astype(np.float32))
    b.assign((-feats.mean(0) @ kernel).astype(np.float32))
    return net


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small built-in set (8 train / 3 val scenes, 97..161 pixels a side)."""
    path = str(tmp_path_factory.mktemp("data") / "synthetic")
    synthetic.build(path, num_train=8, num_val=3)
    return path


def _descriptor(data_dir):
    return os.path.join(data_dir, "descriptor.json")


@pytest.fixture(scope="module")
def float32_export(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("f32")
    result = tflite.export_tflite(model, str(folder / "m.tflite"), crop_size=CROP)
    assert os.listdir(folder) == ["m.tflite"]  # no temporary left behind
    return result


def test_float32_labels_match_the_keras_model(model, float32_export):
    """>= 99.9% of pixels agree with the Keras model (in fact all, bar near-ties). The 33x40 input
    is padded to 33x65 inside the graph as the SavedModel does (rows: nothing to pad), cropped back."""
    result, path, crop = float32_export, float32_export.path, CROP
    assert result.size_bytes == os.path.getsize(path) and result.select_tf_ops == ()
    with open(path, "rb") as f:
        head = f.read(8)
    assert head[4:8] == b"TFL3"  # the flatbuffer file identifier of a TFLite model
    seg = tflite.TFLiteSegmenter(path)
    assert seg.input_shape == (1, *crop, 3)
    detail = seg.interpreter.get_input_details()[0]
    assert detail["dtype"] == np.uint8 and detail["name"] == sm.INPUT_NAME
    assert seg.interpreter.get_output_details()[0]["name"] == sm.PREDICTIONS
    # What LiteRT apps call (its own interpreter: a runner keeps views of the tensors it returns).
    runner = tflite.TFLiteSegmenter(path).interpreter.get_signature_runner(sm.SIGNATURE_KEY)
    via_runner = runner(**{sm.INPUT_NAME: _image(*crop, 0)})[sm.PREDICTIONS]
    np.testing.assert_array_equal(via_runner, seg(_image(*crop, 0)))
    for seed in (0, 1):
        image = _image(*crop, seed)
        labels = seg(image)
        assert labels.shape == (1, *crop) and labels.dtype == np.int32
        ref, logits = _reference_labels(model, image)
        counts = np.bincount(ref.ravel(), minlength=NUM_CLASSES)
        assert counts.min() > 0.05 * ref.size, counts   # labels vary: the comparison means something
        agree = np.mean(labels == ref)
        assert agree >= 0.999, agree
        top2 = np.sort(logits, -1)[..., -2:]
        ties = (top2[..., 1] - top2[..., 0]) < 1e-3
        assert np.all((labels == ref) | ties)  # any disagreement is a near-tie of the float logits


def _conv_dtypes(interpreter):
    """{(op, weight dtype, output dtype): count} over the convolutions; a weight that a DEQUANTIZE
    op expands (float16 storage) counts with the dtype it is stored in."""
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # noqa: SLF001 - the interpreter's only op listing
    producer = {o: d for d in ops if d["op_name"] != "DELEGATE" for o in d["outputs"]}
    counts = {}
    for d in ops:
        if d["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w = d["inputs"][1]
            if w in producer and producer[w]["op_name"] == "DEQUANTIZE":
                w = producer[w]["inputs"][0]
            key = (d["op_name"], np.dtype(tensors[w]["dtype"]).name,
                   np.dtype(tensors[d["outputs"][0]]["dtype"]).name)
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_float16_stores_every_conv_weight_in_half_precision(model, float32_export, tmp_path):
    f16 = tflite.export_tflite(model, str(tmp_path / "f16.tflite"), CROP, quantization="float16")
    assert 0.4 < f16.size_bytes / float32_export.size_bytes < 0.6, (f16.size_bytes, float32_export.size_bytes)
    n_convs = sum(_conv_dtypes(tflite.TFLiteSegmenter(float32_export.path).interpreter).values())
    assert n_convs > 300  # the whole network, not a stub
    seg = tflite.TFLiteSegmenter(f16.path)
    counts = _conv_dtypes(seg.interpreter)
    assert {k[1:] for k in counts} == {("float16", "float32")} and sum(counts.values()) == n_convs, counts
    image = _image(*CROP, 2)
    labels = seg(image)
    assert labels.shape == (1, *CROP) and labels.dtype == np.int32
    assert np.mean(labels == _reference_labels(model, image)[0]) >= 0.99   # float32 arithmetic


def test_int8_with_a_tiny_representative_set_runs_in_integers(model, float32_export, tmp_path, data_dir):
    rep = tflite.representative_images_from_split(data_dir, "train", _descriptor(data_dir), CROP, 2, seed=3)
    i8 = tflite.export_tflite(model, str(tmp_path / "i8.tflite"), CROP, quantization="int8",
                              representative_images=rep)
    assert i8.float_ops == ()   # every op of the network has an int8 kernel
    # int8 weights (and int32 biases, graph): about a quarter of float32.
    assert 0.2 < i8.size_bytes / float32_export.size_bytes < 0.45, (i8.size_bytes, float32_export.size_bytes)
    seg = tflite.TFLiteSegmenter(i8.path)
    counts = _conv_dtypes(seg.interpreter)
    assert {k[1:] for k in counts} == {("int8", "int8")} and sum(counts.values()) > 300, counts
    labels = seg(_image(*CROP, 2))
    assert labels.shape == (1, *CROP) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES


def test_representative_images_are_seeded_windows_of_training_images(data_dir):
    crop = (33, 40)
    rep = tflite.representative_images_from_split(data_dir, "train", _descriptor(data_dir), crop, 3, seed=5)
    assert rep.shape == (3, 33, 40, 3) and rep.dtype == np.uint8
    again = tflite.representative_images_from_split(data_dir, "train", _descriptor(data_dir), crop, 3, seed=5)
    np.testing.assert_array_equal(rep, again)
    # Brute force: each one is a window of one of the 8 training images (decoded independently).
    images = []
    for name in sorted(os.listdir(data_dir)):
        if name.startswith("train-"):
            for record in tf.data.TFRecordDataset(os.path.join(data_dir, name)):
                ex = tf.train.Example.FromString(record.numpy())
                images.append(tf.io.decode_png(ex.features.feature["image/encoded"].bytes_list.value[0]).numpy())
    assert len(images) == 8
    found = []
    for window in rep:
        # candidate corners: where the window's top-left pixel occurs; then compare whole windows
        hits = [(i, y, x) for i, im in enumerate(images)
                for y, x in zip(*np.nonzero(np.all(im[:im.shape[0] - 32, :im.shape[1] - 39] == window[0, 0], -1)))
                if np.array_equal(im[y:y + 33, x:x + 40], window)]
        assert hits, "a representative image is no window of any training image"
        found.append(hits[0][0])
    assert len(set(found)) == 3   # three different images
    # A crop larger than every image (97..161 a side): the whole image, padded bottom/right with 128.
    big = tflite.representative_images_from_split(data_dir, "train", _descriptor(data_dir), (170, 165), 2, seed=0)
    for padded in big:
        matches = [im for im in images if np.array_equal(padded[:im.shape[0], :im.shape[1]], im)]
        assert len(matches) == 1
        h, w = matches[0].shape[:2]
        assert (padded[h:] == 128).all() and (padded[:, w:] == 128).all()


def test_refusals_name_the_flag_and_write_nothing(model, tmp_path):
    path = str(tmp_path / "m.tflite")
    with pytest.raises(sm.ExportError, match="--crop_size"):
        tflite.export_tflite(model, path)
    with pytest.raises(sm.ExportError, match="--crop_size"):
        tflite.export_tflite(model, path, crop_size=(65, 0))
    with pytest.raises(sm.ExportError, match="--tflite_quantization"):
        tflite.export_tflite(model, path, (65, 65), quantization="int4")
    with pytest.raises(sm.ExportError, match="--representative_split"):
        tflite.export_tflite(model, path, (65, 65), quantization="int8")
    with pytest.raises(sm.ExportError, match=r"uint8 \[1, 65, 65, 3\]"):
        tflite.export_tflite(model, path, (65, 65), quantization="int8",
                             representative_images=[np.zeros((33, 33, 3), np.uint8)])
    with pytest.raises(OutputError, match="is a folder"):
        tflite.export_tflite(model, str(tmp_path), (65, 65))
    assert os.listdir(tmp_path) == []
    with open(path, "wb") as f:
        f.write(b"keep")
    with pytest.raises(OutputError, match="--overwrite"):
        tflite.export_tflite(model, path, (65, 65))
    assert open(path, "rb").read() == b"keep"
    with pytest.raises(ValueError, match="larger than the TFLite input"):
        tflite.pad_to_crop(np.zeros((66, 10, 3), np.uint8), (65, 65))
    padded = tflite.pad_to_crop(np.full((2, 3, 3), 7, np.uint8), (4, 5))
    assert padded.shape == (1, 4, 5, 3) and padded[0, :2, :3].min() == 7
    assert padded[0, 2:].min() == padded[0, :, 3:].max() == 128


class _Inverse(keras.layers.Layer):
    """Adds a per-image matrix inverse (TF's MatrixInverse: no TFLite builtin, a TF select op),
    erfinv (neither) or a cumulative sum (a TFLite op without an int8 kernel) to the logits."""

    def __init__(self, op, **kwargs):
        super().__init__(**kwargs)
        self.op = op

    def call(self, x):
        m = tf.reduce_mean(x, [1, 2])[:, :1, None] * tf.ones([1, 2, 2]) + 3.0 * tf.eye(2)
        if self.op == "cumsum":
            return x + 0.01 * tf.math.cumsum(x, axis=1)
        if self.op == "inverse":
            extra = tf.reduce_sum(tf.linalg.inv(m), [1, 2])
        else:
            extra = tf.reduce_sum(tf.math.erfinv(tf.tanh(m) * 0.5), [1, 2])
        return x + extra[:, None, None, None]


def _with_op(op):
    base = make_standin(NUM_CLASSES)
    out = _Inverse(op)(base.output)
    return keras.Model(base.input, out)


def test_rejected_ops_are_named_and_select_ops_only_on_request(tmp_path):
    path = str(tmp_path / "m.tflite")
    model = _with_op("inverse")
    with pytest.raises(tflite.UnsupportedOpsError) as err:
        tflite.export_tflite(model, path, (17, 17))
    assert err.value.ops == ("MatrixInverse",) and err.value.needs_select == ("MatrixInverse",)
    assert "MatrixInverse" in str(err.value) and "--tflite_allow_select_tf_ops" in str(err.value)
    assert os.listdir(tmp_path) == []
    with open(path, "wb") as f:
        f.write(b"keep")
    with pytest.raises(tflite.UnsupportedOpsError):   # a failed export replaces nothing
        tflite.export_tflite(model, path, (17, 17), overwrite=True)
    assert open(path, "rb").read() == b"keep" and os.listdir(tmp_path) == ["m.tflite"]
    result = tflite.export_tflite(model, path, (17, 17), allow_select_tf_ops=True, overwrite=True)
    assert result.select_tf_ops == ("MatrixInverse",)
    with open(path, "rb") as f:
        assert b"FlexMatrixInverse" in f.read()
    # erfinv has neither a TFLite kernel nor a TF select one: named, and select ops do not help.
    with pytest.raises(tflite.UnsupportedOpsError) as err:
        tflite.export_tflite(_with_op("erfinv"), str(tmp_path / "e.tflite"), (17, 17), allow_select_tf_ops=True)
    assert "Erfinv" in err.value.ops and "Erfinv" not in err.value.needs_select
    assert not os.path.exists(tmp_path / "e.tflite")
    # The converter leaves CUMSUM in float inside an "int8" model without a word: we name it.
    result = tflite.export_tflite(_with_op("cumsum"), str(tmp_path / "c.tflite"), (17, 17), quantization="int8",
                                  representative_images=[np.full((17, 17, 3), 50, np.uint8)])
    assert result.float_ops == ("CUMSUM",) and "CUMSUM" in result.describe()


def test_compare_on_split_counts_pixels_and_iou_independently(data_dir):
    """A fake segmenter that says class 0 everywhere against one that says the true label: agreement
    = share of class-0 pixels, IoU checked by hand on the decoded val labels."""
    crop = (120, 130)
    labels = []
    for name in sorted(os.listdir(data_dir)):
        if name.startswith("val-"):
            for record in tf.data.TFRecordDataset(os.path.join(data_dir, name)):
                ex = tf.train.Example.FromString(record.numpy())
                seg = ex.features.feature["image/segmentation/class/encoded"].bytes_list.value[0]
                labels.append(tf.io.decode_png(seg).numpy()[:crop[0], :crop[1], 0])  # top-left window
    it = iter(labels)
    current = {}

    class Zeros:
        input_shape = (1, *crop, 3)

        def __call__(self, image):
            assert image.shape == self.input_shape and image.dtype == np.uint8
            current["label"] = next(it)
            return np.zeros((1, *crop), np.int32)

    def oracle(image):
        out = np.zeros((1, *crop), np.int32)
        lab = current["label"]
        out[0, :lab.shape[0], :lab.shape[1]] = np.where(lab == 255, 0, lab)
        return out

    res = tflite.compare_on_split(Zeros(), oracle, data_dir, "val", _descriptor(data_dir))
    flat = np.concatenate([lab.ravel() for lab in labels])
    assert res["num_images"] == 3 and res["pixels"] == flat.size
    assert res["agreement"] == pytest.approx(np.mean((flat == 0) | (flat == 255)))
    valid = flat != 255
    assert res["miou_reference"] == pytest.approx(1.0)
    # all-zero predictions: IoU_0 = |label 0| / |valid|, every other class present has IoU 0.
    present = np.unique(flat[valid])
    assert res["miou_tflite"] == pytest.approx(np.mean(flat[valid] == 0) / len(present))
