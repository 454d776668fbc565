"""The serving signatures declare the input contract (uint8 [N, H, W, 3]) and a wrong image says so
in a sentence that names the input and the shape it got (issue 18).

Uses the small stand-in model of `export_testlib` (no DeepLab build), exported once per module.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from nas_deeplab.export import saved_model as sm

from export_testlib import make_standin

KEYS = ("serving_default", "predict_labels")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = sm.export_saved_model(make_standin(num_classes=3), str(tmp_path_factory.mktemp("sig") / "m"))
    return path, tf.saved_model.load(path)


def test_signature_declares_three_channels_in_python_and_in_the_saved_model_proto(exported):
    path, loaded = exported
    for key in KEYS:
        _, kwargs = loaded.signatures[key].structured_input_signature
        spec = kwargs["ImageTensor"]
        assert spec.shape.as_list() == [None, None, None, 3] and spec.dtype == tf.uint8
    # What `saved_model_cli show` and TF Serving read: the SignatureDef in saved_model.pb.
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    (meta,) = proto.meta_graphs
    for key in KEYS:
        dims = [d.size for d in meta.signature_def[key].inputs["ImageTensor"].tensor_shape.dim]
        assert dims == [-1, -1, -1, 3]


@pytest.mark.parametrize("shape", [(1, 33, 33, 4), (2, 17, 21, 1)])
def test_wrong_channel_count_is_refused_with_a_sentence_naming_input_and_shape(exported, shape):
    _, loaded = exported
    for key in KEYS:
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            loaded.signatures[key](ImageTensor=tf.zeros(shape, tf.uint8))
        message = str(info.value)
        sentence = f"ImageTensor must be RGB images [N, H, W, 3] (uint8); got shape [{' '.join(map(str, shape))}]"
        assert sentence in message
        # The first line after TF's own header (and the node TF names) already says what is wrong.
        assert "ImageTensor_must_have_3_channels" in message.splitlines()[2]
        assert message.split("assertion failed: [", 1)[1].startswith(sentence)


def test_three_channel_images_still_serve(exported):
    _, loaded = exported
    images = np.random.RandomState(0).randint(0, 256, (2, 19, 23, 3)).astype(np.uint8)
    out = loaded.signatures["serving_default"](ImageTensor=tf.constant(images))
    assert out["SemanticPredictions"].shape == (2, 19, 23)
    assert out["SemanticProbabilities"].shape == (2, 19, 23, 3)
    np.testing.assert_allclose(out["SemanticProbabilities"].numpy().sum(-1), 1.0, atol=1e-5)
