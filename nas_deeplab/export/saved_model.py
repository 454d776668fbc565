"""A serving SavedModel: uint8 images of any size in, DeepLab predictions at that size out.

Same tensor names as the official `export_model.py` (`ImageTensor` in, `SemanticPredictions` /
`SemanticProbabilities` out) so DeepLab users' client code keeps working, but with two differences
that make it servable as is: the batch size and the image size are free (the official graph was
fixed to one image no larger than `crop_size`), and it is a TF2 SavedModel with a
`serving_default` signature (TF Serving, `saved_model_cli`, `tf.saved_model.load`), not a frozen
graph. A second signature, `predict_labels`, returns only `SemanticPredictions`: what a client that
fetches only the labels of the official graph gets, without the cost of the softmax over every pixel
and of a float [N, H, W, C] output (160 MB for one 1025x2049 Cityscapes image at 19 classes).
Everything the official pipeline does around the network happens inside the graph:

1. cast to float and pad bottom/right with 127.5 (`mean_pixel` of the NAS variants) to the next
   size of the form 32k+1 (the sizes the network aligns cleanly on, spec 1.7), or to a fixed
   `crop_size` as the official exporter does;
2. the network (inference mode: moving BN statistics, no dropout or drop path) on the padded
   image; with several inference scales or flips, on each scaled (and flipped) image, the softmax
   probabilities of all passes averaged, resampled as official `predict_labels_multi_scale`
   (`model/inference.py`, shared with evaluation);
3. crop back to H x W; predictions = argmax (of the logits for a single pass, as
   `model.predict_labels` does).

The architecture, dataset (class names, palette) and model options travel as asset files, so a
served model explains itself without this package.

Precision (`export.py --precision`): the model passed in may compute in bfloat16 or float16
(`exporter.serving_model` builds it); the signatures are the same (uint8 in, int32 labels and float32
probabilities out: the logits layer and everything after it run in float32), and
`export_info.json` records `"precision"` and how many batch norms were folded into the convs.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Mapping, Sequence

import tensorflow as tf

from nas_deeplab.model import inference
from nas_deeplab.io_utils import OutputError, atomic_directory

INPUT_NAME = "ImageTensor"
PREDICTIONS = "SemanticPredictions"
PROBABILITIES = "SemanticProbabilities"
SIGNATURE_KEY = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY  # 'serving_default'
LABELS_SIGNATURE_KEY = "predict_labels"  # SemanticPredictions only
PAD_VALUE = 127.5      # official mean_pixel('nas_hnasnet'): padded pixels become 0 after [-1, 1] scaling
SIZE_MULTIPLE = 32     # pad to 32k+1
# Both signatures: clients (and `saved_model_cli show`) see the contract, 3 channels.
_IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)


class ExportError(ValueError):
    """An export that cannot be done as asked; the message names the flag or path."""


def padded_length(length, multiple: int = SIZE_MULTIPLE):
    """Smallest multiple*k + 1 >= length with k >= 1 (ints or int32 scalar tensors)."""
    if isinstance(length, tf.Tensor):
        k = tf.maximum((length - 1 + multiple - 1) // multiple, 1)
        return k * multiple + 1
    return max((int(length) - 1 + multiple - 1) // multiple, 1) * multiple + 1


class SegmentationServer(tf.Module):
    """The exported object: `serve(ImageTensor)` plus the model's variables and metadata assets."""

    def __init__(self, model, num_classes: int, inference_scales: Sequence[float] = (1.0,),
                 add_flipped_images: bool = False, crop_size: Sequence[int] | None = None,
                 asset_files: Mapping[str, str] | None = None, exclude_variables=()):
        super().__init__(name="nas_deeplab_server")
        scales = tuple(float(s) for s in inference_scales)
        if not scales or any(s <= 0 for s in scales):
            raise ExportError(f"--inference_scales must be positive numbers, got {list(scales)}")
        if crop_size is not None:
            crop_size = tuple(int(c) for c in crop_size)
            if len(crop_size) != 2 or min(crop_size) < 1:
                raise ExportError(f"--crop_size must be two positive integers (height,width), got "
                                  f"{list(crop_size)}")
        # Only the variables are tracked, not the Keras model: SavedModel tracking does not see
        # Keras 3 layers kept in Python lists (their variables would be dropped), and saving the
        # model object would also try to serialise whatever tf.functions it carries.
        self._keras_call = lambda images: model(images, training=False)   # plain callables: untracked
        self._probabilities = lambda images: inference.predict_probabilities(
            model, images, self.inference_scales, self.add_flipped_images)
        # The tf.Variables themselves (`.value`), not Keras 3 variable wrappers: a wrapper is saved
        # as its own object, which TF1-style loaders (saved_model_cli run, TF Serving) cannot bind
        # to the graph's variable reads ("Could not find variable ...").
        # `exclude_variables`: variables the graph does not read (a folded BN's gamma and
        # moving statistics), left out of the SavedModel.
        excluded = {id(v) for v in exclude_variables}
        self.model_variables = [getattr(v, "value", v) for v in model.variables if id(v) not in excluded]
        self.num_classes = int(num_classes)
        self.inference_scales = scales
        self.add_flipped_images = bool(add_flipped_images)
        self.crop_size = crop_size
        self.assets = {name: tf.saved_model.Asset(path) for name, path in (asset_files or {}).items()}

    # -- the graph ---------------------------------------------------------------------------
    def _logits(self, images):
        out = self._keras_call(images)
        return tf.cast(out, tf.float32)

    def predict(self, images_uint8, with_probabilities: bool = True):
        """(predictions int32 [N,H,W], probabilities float32 [N,H,W,C]) for uint8 [N,H,W,3];
        probabilities is None when not `with_probabilities` (then a single pass skips the softmax)."""
        # A loaded signature called from Python does not check the declared shape: say what is
        # wrong in one sentence (TF prints it right after its "Graph execution error" header).
        with tf.name_scope("check_input"):
            shape = tf.shape(images_uint8)
            check = tf.debugging.Assert(
                tf.logical_and(tf.equal(tf.size(shape), 4), tf.equal(shape[-1], 3)),
                [tf.strings.format(f"{INPUT_NAME} must be RGB images [N, H, W, 3] (uint8); got shape {{}}",
                                   [shape])], name=f"{INPUT_NAME}_must_have_3_channels")
            with tf.control_dependencies([check]):
                images = tf.ensure_shape(tf.identity(images_uint8), [None, None, None, 3])
        h, w = tf.shape(images)[1], tf.shape(images)[2]
        if self.crop_size is None:
            ph, pw = padded_length(h), padded_length(w)
        else:
            ph, pw = tf.constant(self.crop_size[0]), tf.constant(self.crop_size[1])
            fits = tf.debugging.assert_less_equal(
                tf.stack([h, w]), tf.stack([ph, pw]),
                message=f"image larger than the export's fixed crop size {list(self.crop_size)} "
                        "(re-export with a larger --crop_size, or without it for any size)")
            with tf.control_dependencies([fits]):
                ph = tf.identity(ph)
        padded = tf.pad(tf.cast(images, tf.float32), [[0, 0], [0, ph - h], [0, pw - w], [0, 0]],
                        constant_values=PAD_VALUE)
        if inference.is_single_scale(self.inference_scales, self.add_flipped_images):
            scores = self._logits(padded)[:, :h, :w, :]
            probabilities = tf.nn.softmax(scores) if with_probabilities else None
        else:
            scores = probabilities = self._probabilities(padded)[:, :h, :w, :]  # the labels need them
        predictions = tf.argmax(scores, axis=3, output_type=tf.int32)
        return predictions, (probabilities if with_probabilities else None)

    @tf.function(input_signature=[_IMAGES_SPEC])
    def serve(self, ImageTensor):  # noqa: N803  (the argument name is the signature's input key)
        predictions, probabilities = self.predict(ImageTensor)
        return {PREDICTIONS: tf.identity(predictions, name=PREDICTIONS),
                PROBABILITIES: tf.identity(probabilities, name=PROBABILITIES)}

    @tf.function(input_signature=[_IMAGES_SPEC])
    def serve_labels(self, ImageTensor):  # noqa: N803
        predictions, _ = self.predict(ImageTensor, with_probabilities=False)
        return {PREDICTIONS: tf.identity(predictions, name=PREDICTIONS)}


def save_atomically(module, export_path: str, signatures, overwrite: bool = False) -> str:
    """tf.saved_model.save into a temporary folder renamed into place (io_utils.atomic_directory)."""
    with atomic_directory(export_path, overwrite=overwrite) as tmp:
        try:
            tf.saved_model.save(module, tmp, signatures=signatures)
        except (OSError, tf.errors.OpError) as e:
            raise OutputError(f"cannot write SavedModel {export_path}: {e}") from e
    return os.path.abspath(export_path)


def write_asset_sources(folder: str, metadata: Mapping[str, object]) -> dict[str, str]:
    """Each {name: text or JSON-able} as a file in `folder` (the SavedModel copies them as assets)."""
    files = {}
    for name, content in metadata.items():
        if os.sep in name or name.startswith("."):
            raise ExportError(f"bad asset file name {name!r}")
        text = content if isinstance(content, str) else json.dumps(content, indent=2) + "\n"
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        files[name] = path
    return files


def export_saved_model(model, export_path: str, num_classes: int | None = None,
                       metadata: Mapping[str, object] | None = None,
                       inference_scales: Sequence[float] = (1.0,), add_flipped_images: bool = False,
                       crop_size: Sequence[int] | None = None, overwrite: bool = False,
                       precision: str = "float32", batch_norm_folded: int = 0,
                       weight_rounding: str = "nearest") -> str:
    """Write the serving SavedModel of `model` (raw 0..255 float images -> logits at input size).

    `precision` / `batch_norm_folded` / `weight_rounding` describe `model` (exporter.serving_model) for
    export_info.json;
    the variables of folded BNs that the graph no longer reads are left out.

    `metadata` maps asset file names to text or JSON-able objects (e.g. 'architecture.json').
    Written into a temporary folder renamed into place: a failed export leaves nothing behind, and
    an existing non-empty `export_path` is refused unless `overwrite`.
    """
    if num_classes is None:
        num_classes = int(model.output_shape[-1])
    metadata = dict(metadata or {})
    metadata.setdefault("export_info.json", {
        "format": "nas_deeplab.saved_model", "version": 1,
        "signature": SIGNATURE_KEY, "signatures": {SIGNATURE_KEY: [PREDICTIONS, PROBABILITIES],
                                                   LABELS_SIGNATURE_KEY: [PREDICTIONS]},
        "input": {INPUT_NAME: "uint8 [N, H, W, 3], " + (
            f"H <= {crop_size[0]}, W <= {crop_size[1]}" if crop_size else "any H, W")},
        "outputs": {PREDICTIONS: "int32 [N, H, W]", PROBABILITIES: f"float32 [N, H, W, {num_classes}]"},
        "num_classes": int(num_classes), "inference_scales": [float(s) for s in inference_scales],
        "add_flipped_images": bool(add_flipped_images),
        "crop_size": None if crop_size is None else [int(c) for c in crop_size],
        "pad_value": PAD_VALUE, "pad_to": "crop_size" if crop_size else f"{SIZE_MULTIPLE}k+1",
        "precision": str(precision), "batch_norm_folded": int(batch_norm_folded),
        "weight_rounding": str(weight_rounding)})
    unused = ()
    if batch_norm_folded:
        from nas_deeplab.export.bn_folding import unused_variables  # noqa: PLC0415
        unused = unused_variables(model)
    with tempfile.TemporaryDirectory(prefix="nas_deeplab_assets_") as asset_dir:
        server = SegmentationServer(model, num_classes, inference_scales, add_flipped_images, crop_size,
                                    write_asset_sources(asset_dir, metadata), exclude_variables=unused)
        signatures = {SIGNATURE_KEY: server.serve.get_concrete_function(),
                      LABELS_SIGNATURE_KEY: server.serve_labels.get_concrete_function()}
        return save_atomically(server, export_path, signatures, overwrite)


def read_asset(export_path: str, name: str) -> str:
    """The text of an asset file of an exported model (plain file read; no TF needed)."""
    path = os.path.join(export_path, "assets", name)
    with open(path, encoding="utf-8") as f:
        return f.read()
