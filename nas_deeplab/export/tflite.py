"""TFLite export: one fixed-size uint8 image in, DeepLab labels out, for phones and edge devices.

The graph is the serving SavedModel's own labels path (`saved_model.SegmentationServer.predict`,
not a copy): cast, pad bottom/right with 127.5 to the next 32k+1 size inside the graph (nothing to
pad when the crop already is 32k+1, e.g. 513), the network in inference mode, crop back, argmax.

- Input `ImageTensor`: uint8 [1, H, W, 3] with (H, W) = the crop size, fixed: TFLite delegates
  (GPU, NNAPI, int8 accelerators) want static shapes, hence no export without `--crop_size`.
  A smaller image is padded bottom/right to (H, W) by the client (`pad_to_crop`, value 128, the
  uint8 nearest the official 127.5) and its labels cropped back.
- Output `SemanticPredictions`: int32 [1, H, W].
- Quantization: "none" (float32), "float16" (weights stored as float16, computed in float32), "int8"
  (full-integer: int8 weights and activations, calibrated on a representative set drawn from the
  training TFRecords, `representative_images_from_split`; only the uint8 -> float cast and its
  quantize stay outside). The converter quietly leaves an op without an int8 kernel in float;
  the result names any such op (`float_ops`), none for the published network.

Ops the converter rejects are reported by name (`UnsupportedOpsError`). TF select (Flex) kernels
are never switched on silently: `allow_select_tf_ops=True` asks for them, and the result lists the
ops that needed them (an app then has to link the Flex delegate; TF's pip interpreter has none).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import warnings
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from nas_deeplab.export import saved_model as sm
from nas_deeplab.io_utils import OutputError, atomic_write_bytes, check_writable_dir

QUANTIZATIONS = ("none", "float16", "int8")
PAD_VALUE_UINT8 = 128   # client-side padding: the official mean pixel 127.5, rounded half to even
FLEX_PREFIX = "Flex"    # custom-op code of a TF select op in the flatbuffer


class UnsupportedOpsError(sm.ExportError):
    """The converter rejected ops: `ops` holds their TF names, `needs_select` those that TF select
    kernels could run."""

    def __init__(self, message: str, ops: Sequence[str], needs_select: Sequence[str]):
        super().__init__(message)
        self.ops = tuple(ops)
        self.needs_select = tuple(needs_select)


@dataclasses.dataclass(frozen=True)
class TFLiteResult:
    path: str
    quantization: str
    crop_size: tuple[int, int]
    size_bytes: int
    conversion_s: float
    select_tf_ops: tuple[str, ...] = ()   # TF ops left to select (Flex) kernels
    float_ops: tuple[str, ...] = ()       # int8: ops without an int8 kernel, computed in float
    xnnpack_error: str | None = None      # the default CPU delegate refused the model (runs without it)

    def describe(self) -> str:
        """What an export CLI prints: the file, its size, and every op that is not plain TFLite."""
        out = [f"wrote {self.path} ({self.size_bytes / 2 ** 20:.2f} MiB, {self.quantization}, input uint8 "
               f"[1, {self.crop_size[0]}, {self.crop_size[1]}, 3], converted in {self.conversion_s:.1f} s)"]
        if self.select_tf_ops:
            out.append("  runs TF select ops (the app needs the TFLite Flex delegate): "
                       + ", ".join(self.select_tf_ops))
        if self.float_ops:
            out.append(f"  WARNING: no int8 kernel, computed in float between (de)quantize ops: "
                       f"{', '.join(self.float_ops)}")
        if self.xnnpack_error:
            out.append(f"  WARNING: the XNNPACK delegate (TFLite's default CPU path) cannot prepare this "
                       f"model ({self.xnnpack_error}); it runs on the builtin kernels, more slowly")
        return "\n".join(out)


# -- arguments ------------------------------------------------------------------------------------

def check_crop_size(crop_size) -> tuple[int, int]:
    """(H, W) as ints, or ExportError naming --crop_size."""
    if crop_size is None:
        raise sm.ExportError("TFLite export needs a fixed input size: pass --crop_size=H,W (e.g. 513,513; "
                             "a client pads smaller images to it)")
    try:
        h, w = (int(c) for c in crop_size)
    except (TypeError, ValueError):
        raise sm.ExportError(f"--crop_size must be two positive integers (height,width), got "
                             f"{crop_size!r}") from None
    if min(h, w) < 1:
        raise sm.ExportError(f"--crop_size must be two positive integers (height,width), got [{h}, {w}]")
    return h, w


def check_quantization(quantization: str) -> str:
    if quantization not in QUANTIZATIONS:
        raise sm.ExportError(f"--tflite_quantization must be one of {', '.join(QUANTIZATIONS)}, got "
                             f"{quantization!r}")
    return quantization


def _representative_batches(images, crop_size):
    """The converter's representative_dataset: a callable yielding [uint8 [1, H, W, 3]] per image."""
    if images is None:
        raise sm.ExportError("int8 quantization needs a representative set of training images to "
                             "calibrate on: pass --representative_split=train (and "
                             "--representative_examples=N)")
    materialised = [np.asarray(im) for im in (images() if callable(images) else images)]
    if not materialised:
        raise sm.ExportError("the representative set is empty (--representative_examples must be >= 1)")
    want = (1, crop_size[0], crop_size[1], 3)
    batches = []
    for i, im in enumerate(materialised):
        im = im[None] if im.ndim == 3 else im
        if im.shape != want or im.dtype != np.uint8:
            raise sm.ExportError(f"representative image {i} is {im.dtype} {list(im.shape)}; expected uint8 "
                                 f"{list(want)} (the --crop_size)")
        batches.append(im)
    return lambda: ([b] for b in batches)


# -- conversion -------------------------------------------------------------------------------------

def labels_function(model, crop_size, num_classes: int | None = None, inference_scales=(1.0,),
                    add_flipped_images: bool = False):
    """(concrete function uint8 [1, H, W, 3] -> {SemanticPredictions: int32 [1, H, W]}, the server
    that holds its variables: keep it alive while the function is used)."""
    h, w = check_crop_size(crop_size)
    if num_classes is None:  # only recorded by the server; the labels do not depend on it
        options = getattr(model, "options", None)
        num_classes = int(options.num_classes if options is not None else model.output_shape[-1])
    # crop_size=None: pad to 32k+1 as the any-size SavedModel does; the input itself is fixed here.
    server = sm.SegmentationServer(model, num_classes, inference_scales=inference_scales,
                                   add_flipped_images=add_flipped_images, crop_size=None)

    @tf.function(input_signature=[tf.TensorSpec([1, h, w, 3], tf.uint8, name=sm.INPUT_NAME)])
    def labels(ImageTensor):  # noqa: N803  (the name is the model's input name)
        predictions, _ = server.predict(ImageTensor, with_probabilities=False)
        return {sm.PREDICTIONS: predictions}

    return labels.get_concrete_function(), server


def _converter(concrete_fn, server, quantization, representative, allow_select_tf_ops):
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete_fn], server)
    # Freeze the function directly instead of round-tripping it through a temporary SavedModel
    # (the default): same ops, but 3 s instead of 58 s for the F=4 network here.
    converter.experimental_lower_to_saved_model = False
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if quantization == "int8" else tf.lite.OpsSet.TFLITE_BUILTINS]
    if allow_select_tf_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
    return converter


_OP_IN_MESSAGE = re.compile(r"'(tfl?)\.(\w+)' op")
_SELECT_LIST = re.compile(r"TF Select ops: ([\w, ]+)")


def rejected_ops(error: Exception) -> tuple[list[str], list[str], list[str]]:
    """(op names, those that TF select kernels could run, one 'op: reason' line each) of a
    converter error, from its structured error records, else from its message."""
    names, select, lines = [], [], []
    for data in getattr(error, "errors", None) or []:
        name = data.operator.name.split(".", 1)[-1] if data.operator.name else ""
        if not name:
            continue
        code = type(data).ErrorCode.Name(data.error_code) if data.error_code else ""
        if name not in names:
            names.append(name)
            reason = data.error_message.split("\n", 1)[0].strip()
            lines.append(f"{name}: {reason}" + (f" ({code})" if code else ""))
        if code == "ERROR_NEEDS_FLEX_OPS" and name not in select:
            select.append(name)
    text = str(error)
    for m in _SELECT_LIST.finditer(text):
        for name in (n.strip() for n in m.group(1).split(",")):
            if name and name not in select:
                select.append(name)
    for _, name in _OP_IN_MESSAGE.findall(text):
        if name not in names:
            names.append(name)
            lines.append(f"{name}: rejected by the converter")
    for name in select:
        if name not in names:
            names.append(name)
            lines.append(f"{name}: needs TF select ops")
    return names, select, lines


def _unsupported(error: Exception, quantization: str, allow_select_tf_ops: bool) -> sm.ExportError:
    names, select, lines = rejected_ops(error)
    if not names:  # no op to name: pass the converter's own words on, not a summary that hides them
        head = "\n".join(str(error).strip().splitlines()[:20])
        return sm.ExportError(f"TFLite conversion ({quantization}) failed:\n{head}")
    hint = ""
    if select and not allow_select_tf_ops:
        hint = (f"\n{', '.join(select)} can run as TF select ops: re-export with "
                "--tflite_allow_select_tf_ops (the app then needs the TFLite Flex delegate), or change "
                "the model")
    return UnsupportedOpsError(f"TFLite conversion ({quantization}) rejected {len(names)} op(s): "
                               f"{', '.join(names)}\n  " + "\n  ".join(lines) + hint, names, select)


# Ops with a float output that an int8 model may have: the input's cast, (de)quantize ops, and the
# padding of the cast input (before its quantize op).
_INT8_FLOAT_BORDER = frozenset({"CAST", "QUANTIZE", "DEQUANTIZE"})
_PADS = frozenset({"PAD", "PADV2"})


def _finish(tflite_bytes: bytes, quantization: str) -> tuple[bytes, tuple[str, ...], tuple[str, ...]]:
    """(the model with its tensors named as the SavedModel's, ImageTensor -> SemanticPredictions,
    and a `serving_default` signature for LiteRT signature runners; the TF ops it runs through
    select (Flex) kernels; in an int8 model, the ops that still compute in float). The
    frozen-function conversion leaves `serving_default_ImageTensor:0` -> `Identity`, no signature,
    and an op without an int8 kernel silently in float between a dequantize and a quantize."""
    from tensorflow.lite.python import schema_py_generated as schema  # noqa: PLC0415
    from tensorflow.lite.tools import flatbuffer_utils  # noqa: PLC0415
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    graph = model.subgraphs[0]
    (inp,), (out,) = [int(i) for i in graph.inputs], [int(o) for o in graph.outputs]
    graph.tensors[inp].name, graph.tensors[out].name = sm.INPUT_NAME, sm.PREDICTIONS
    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = sm.SIGNATURE_KEY, 0
    signature.inputs, signature.outputs = [schema.TensorMapT()], [schema.TensorMapT()]
    signature.inputs[0].name, signature.inputs[0].tensorIndex = sm.INPUT_NAME, inp
    signature.outputs[0].name, signature.outputs[0].tensorIndex = sm.PREDICTIONS, out
    model.signatureDefs = [signature]

    flex, floats, producer = set(), set(), {}
    for op in graph.operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        custom = code.customCode.decode() if isinstance(code.customCode, bytes) else (code.customCode or "")
        if custom.startswith(FLEX_PREFIX):
            flex.add(custom[len(FLEX_PREFIX):])
        name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
        outputs = [int(o) for o in (op.outputs if op.outputs is not None else [])]
        producer.update((o, name) for o in outputs)
        pads_input = name in _PADS and producer.get(int(op.inputs[0])) == "CAST"
        if (quantization == "int8" and name not in _INT8_FLOAT_BORDER and not pads_input
                and any(graph.tensors[o].type == schema.TensorType.FLOAT32 for o in outputs)):
            floats.add(custom or name)
    return flatbuffer_utils.convert_object_to_bytearray(model), tuple(sorted(flex)), tuple(sorted(floats))


def convert(model, crop_size, quantization: str = "none", representative_images=None,
            num_classes: int | None = None, inference_scales=(1.0,), add_flipped_images: bool = False,
            allow_select_tf_ops: bool = False) -> tuple[bytes, tuple[str, ...], tuple[str, ...]]:
    """(the .tflite bytes, the TF ops left to select kernels, the ops an int8 model still computes
    in float) for `model`; see the module docstring."""
    crop_size = check_crop_size(crop_size)
    quantization = check_quantization(quantization)
    representative = (_representative_batches(representative_images, crop_size)
                      if quantization == "int8" else None)
    concrete_fn, server = labels_function(model, crop_size, num_classes, inference_scales, add_flipped_images)
    converter = _converter(concrete_fn, server, quantization, representative, allow_select_tf_ops)
    try:
        with warnings.catch_warnings():  # about the uint8 input, which is cast, not quantized
            warnings.filterwarnings("ignore", "Statistics for quantized inputs", UserWarning)
            data = converter.convert()
    except Exception as e:  # noqa: BLE001 - ConverterError is not public API; any failure is reported
        raise _unsupported(e, quantization, allow_select_tf_ops) from e
    return _finish(data, quantization)


def export_tflite(model, path: str, crop_size=None, quantization: str = "none", representative_images=None,
                  num_classes: int | None = None, inference_scales=(1.0,), add_flipped_images: bool = False,
                  allow_select_tf_ops: bool = False, overwrite: bool = False) -> TFLiteResult:
    """Write `path` (.tflite) atomically: converted under no name, then written to a temporary
    name and renamed, so a failed export leaves nothing and replaces nothing.

    `representative_images` (int8 only): uint8 [H, W, 3] or [1, H, W, 3] arrays at the crop size,
    or a callable returning them (see `representative_images_from_split`)."""
    crop_size = check_crop_size(crop_size)
    check_quantization(quantization)
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        raise OutputError(f"--export_path={path} is a folder; a TFLite export is one file "
                          "(e.g. model.tflite)")
    if os.path.exists(path) and not overwrite:
        raise OutputError(f"{path} exists (pass --overwrite to replace it)")
    check_writable_dir(os.path.dirname(path), "export folder")  # before minutes of conversion
    t0 = time.monotonic()
    data, select, floats = convert(model, crop_size, quantization, representative_images, num_classes,
                                   inference_scales, add_flipped_images, allow_select_tf_ops)
    seconds = time.monotonic() - t0
    xnnpack_error = None
    if not select:   # the pip interpreter has no Flex delegate: select-op models cannot be loaded here
        xnnpack_error = TFLiteSegmenter(data).xnnpack_error   # loads, or raises: nothing written
    atomic_write_bytes(path, data)
    return TFLiteResult(path, quantization, crop_size, len(data), round(seconds, 2), select, floats,
                        xnnpack_error)


# -- input: client padding and the representative set ---------------------------------------------

def pad_to_crop(image: np.ndarray, crop_size) -> np.ndarray:
    """uint8 [h, w, 3] (or [1, h, w, 3]) -> uint8 [1, H, W, 3], padded bottom/right with 128: what a
    client does with an image smaller than the export's fixed size (then keeps labels[:, :h, :w])."""
    h_crop, w_crop = check_crop_size(crop_size)
    image = np.asarray(image)
    image = image[None] if image.ndim == 3 else image
    _, h, w, _ = image.shape
    if h > h_crop or w > w_crop:
        raise ValueError(f"image {h}x{w} is larger than the TFLite input {h_crop}x{w_crop} (--crop_size)")
    return np.pad(image.astype(np.uint8), [[0, 0], [0, h_crop - h], [0, w_crop - w], [0, 0]],
                  constant_values=PAD_VALUE_UINT8)


def representative_images_from_split(dataset_dir: str, split: str, descriptor, crop_size,
                                     num_examples: int = 100, seed: int = 0, min_resize_value=None,
                                     max_resize_value=None, resize_factor=None) -> np.ndarray:
    """uint8 [N, H, W, 3]: N images drawn from a split's TFRecords (shards in a seeded order,
    interleaved, shuffled in a small buffer), preprocessed as for evaluation (optional
    resize_to_range, padded with 127.5 to at least the crop), then a seeded crop of the crop size
    (images larger than it) and rounded to uint8, as the model's input will be."""
    from nas_deeplab.data import descriptors, preprocess, tfrecord  # noqa: PLC0415

    crop_h, crop_w = check_crop_size(crop_size)
    if int(num_examples) < 1:
        raise sm.ExportError(f"--representative_examples must be >= 1, got {num_examples}")
    desc = descriptors.get_descriptor(descriptor)
    files = tfrecord.list_split_files(dataset_dir, split)   # DataError naming the pattern if none
    order = np.random.RandomState(seed).permutation(len(files))
    ds = tf.data.Dataset.from_tensor_slices([files[i] for i in order]).interleave(
        tf.data.TFRecordDataset, cycle_length=len(files), block_length=1)
    ds = ds.shuffle(4 * int(num_examples) if num_examples < 64 else 256, seed=seed).take(int(num_examples))

    def prepare(index, record):
        e = tfrecord.decode_example(record, desc.ignore_label)
        image, _ = preprocess.preprocess_for_eval(
            e["image"], e["label"], ignore_label=desc.ignore_label, crop_size=(crop_h, crop_w),
            min_resize_value=min_resize_value, max_resize_value=max_resize_value, resize_factor=resize_factor)
        image = tf.image.stateless_random_crop(image, [crop_h, crop_w, 3],
                                               seed=tf.stack([tf.constant(seed, tf.int64), index]))
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    images = list(ds.enumerate().map(prepare).as_numpy_iterator())
    if not images:
        raise sm.ExportError(f"--representative_split={split}: no records in {dataset_dir}")
    return np.stack(images)


# -- running and checking an export ---------------------------------------------------------------

def _interpreter_class():
    """TF's own interpreter (deprecated in favour of LiteRT but working in TF 2.21), else the
    optional `ai-edge-litert` package's."""
    cls = getattr(getattr(tf, "lite", None), "Interpreter", None)
    if cls is not None:
        return cls
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
    except ImportError:
        raise ImportError("this TensorFlow has no tf.lite.Interpreter: pip install ai-edge-litert") from None
    return Interpreter


class TFLiteSegmenter:
    """An exported .tflite, run by the TFLite interpreter: uint8 [1, H, W, 3] -> int32 [1, H, W]."""

    def __init__(self, model: str | bytes, num_threads: int | None = None):
        """With the default delegates (XNNPACK on CPU); if XNNPACK refuses to prepare the model (seen
        with int8 models of some searched cells), with the builtin kernels, saying so in
        `xnnpack_error` (export_tflite reports it)."""
        self.xnnpack_error = None
        try:
            self.interpreter = self._load(model, num_threads, delegates=True)
            self.interpreter.allocate_tensors()
        except RuntimeError as e:
            if "XNNPACK" not in str(e) and "Delegate" not in str(e):
                raise
            self.xnnpack_error = " ".join(str(e).split())
            self.interpreter = self._load(model, num_threads, delegates=False)
            self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"])

    @staticmethod
    def _load(model, num_threads, delegates: bool):
        with warnings.catch_warnings():  # the "tf.lite.Interpreter is deprecated" notice
            warnings.simplefilter("ignore", UserWarning)
            cls = _interpreter_class()
            kwargs = {"num_threads": num_threads} if num_threads else {}
            if not delegates:
                resolver = getattr(getattr(tf.lite, "experimental", None), "OpResolverType", None)
                if resolver is not None:
                    kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            if isinstance(model, (bytes, bytearray)):
                return cls(model_content=bytes(model), **kwargs)
            return cls(model_path=model, **kwargs)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.shape != self.input_shape or images.dtype != np.uint8:
            raise ValueError(f"the TFLite model takes uint8 {list(self.input_shape)}, got {images.dtype} "
                             f"{list(images.shape)} (pad smaller images with pad_to_crop)")
        self.interpreter.set_tensor(self._input["index"], images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output["index"]).copy()


def compare_on_split(segmenter: TFLiteSegmenter, reference: Callable, dataset_dir: str, split: str,
                     descriptor, max_images: int | None = None) -> dict:
    """Labels of `segmenter` against `reference` (both uint8 [1, H, W, 3] -> labels [1, H, W]) on a
    split's images, each padded to the input size with `pad_to_crop` (an image larger than it: its
    top-left window), compared over the image (padding excluded): pixel agreement, and the mIoU of
    each against the ground truth."""
    from nas_deeplab.data import descriptors, pipeline  # noqa: PLC0415
    from nas_deeplab.training import metrics  # noqa: PLC0415

    desc = descriptors.get_descriptor(descriptor)
    crop = segmenter.input_shape[1:3]
    ds = pipeline.make_dataset(dataset_dir, split, desc, batch_size=1, is_training=False, crop_size=None,
                               repeat=False)
    n_classes, ignore = desc.num_classes, desc.ignore_label
    cm = {key: np.zeros((n_classes, n_classes), np.int64) for key in ("tflite", "reference")}
    same = total = n = 0
    for batch in ds:
        if max_images is not None and n >= max_images:
            break
        h, w = min(int(batch["height"][0]), crop[0]), min(int(batch["width"][0]), crop[1])
        image = pad_to_crop(batch["image"].numpy()[0, :h, :w].astype(np.uint8), crop)
        ours, ref = segmenter(image)[0, :h, :w], np.asarray(reference(image))[0, :h, :w]
        label = batch["label"].numpy()[0, :h, :w, 0]
        same += int(np.sum(ours == ref))
        total += h * w
        cm["tflite"] += metrics.confusion_matrix_np(label, ours, n_classes, ignore)
        cm["reference"] += metrics.confusion_matrix_np(label, ref, n_classes, ignore)
        n += 1
    return {"num_images": n, "pixels": total, "agreement": same / max(total, 1),
            "miou_tflite": metrics.mean_iou(cm["tflite"]),
            "miou_reference": metrics.mean_iou(cm["reference"])}
