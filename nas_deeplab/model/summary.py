"""Parameter counts, multiply-adds and a printable layer table (train.py --print_summary).

Multiply-add convention (numbers.md): only convolutions count.
  regular conv (incl. 1x1, atrous, logits): H_out * W_out * k * k * C_in * C_out
  depthwise conv:                            H_out * W_out * k * k * C
  separable conv = its depthwise + its 1x1 pointwise part.
Not counted: BN, ReLU, additions, pooling, bilinear resizes (incl. the final upsampling of the
logits), biases. Shapes are the real ones of the graph at that input size (1024 is not 32k+1, so
the (d-1)*2+1 upsampling makes the later cells slightly smaller, exactly as in the official graph).
Auto-DeepLab-S, regular-conv heads, 19 classes: 315.14B at 1024x2048 and 320.45B at 1025x2049,
against the paper's 333.25B (numbers.md: ~319.2B with plain conv counting; the paper's own
convention is not published). The separable-head default model: 126.8B at 1024x2048.
"""

from __future__ import annotations

import keras
import numpy as np

from nas_deeplab.architecture import Architecture


def count_trainable_params(model) -> int:
    return int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))


def _children(layer):
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _walk(layer, prefix=""):
    """(path, layer) for every leaf layer, depth first in construction order."""
    for child in _children(layer):
        path = f"{prefix}/{child.name}" if prefix else child.name
        if _children(child):
            yield from _walk(child, path)
        else:
            yield path, child


def _trace(model, input_size):
    """Run the model symbolically at a static size so every conv records its shapes (skipped
    when the last call already was a single image of that size)."""
    h, w = (int(s) for s in input_size)
    stem = getattr(getattr(model, "backbone", None), "conv0", None)
    if stem is not None and stem.last_input_shape == (1, h, w, 3):
        return
    model(keras.Input(shape=(h, w, 3), batch_size=1))


def _as_model(model_or_arch, options):
    if isinstance(model_or_arch, Architecture):
        from nas_deeplab.model.deeplab import ModelOptions, build_deeplab
        options = options or ModelOptions(num_classes=19, aspp_with_separable_conv=False,
                                          decoder_use_separable_conv=False)
        return build_deeplab(model_or_arch, options, input_shape=None)
    return model_or_arch


def count_multiply_adds(model_or_arch, options=None, input_size=(1024, 2048)) -> int:
    """Multiply-adds of one image of `input_size` (H, W); convention in the module docstring.
    An Architecture is built with `options` (default: 19 classes, regular-conv heads = the
    paper's configuration). input_size=None reuses the shapes of the model's last static call."""
    model = _as_model(model_or_arch, options)
    if input_size is not None:
        _trace(model, input_size)
    return int(sum(layer.multiply_adds() for _, layer in _walk(model)
                   if hasattr(layer, "multiply_adds") and layer.last_output_shape is not None))


def _official_scopes(model):
    """id(variable) -> its official TF1 scope (e.g. 'hnasnet/cell_3/comb_iter_0/left/atrous_5x5'),
    so the table speaks the names DeepLab users know; {} when the model has no official naming."""
    from nas_deeplab.official.names import official_variable_map
    try:
        names = official_variable_map(model)
    except (TypeError, ValueError, AttributeError):
        return {}
    return {id(v): name.rsplit("/", 1)[0] for name, v in names.items()}


def layer_table(model, input_size=None) -> str:
    """One row per leaf layer: official scope (Keras path when there is none), type, output shape,
    parameters, multiply-adds (when the model has been traced at a static size, e.g. via
    input_size)."""
    if input_size is not None:
        _trace(model, input_size)
    scopes = _official_scopes(model)
    rows = [("layer", "type", "output shape", "params", "mult-adds")]
    for path, layer in _walk(model):
        if layer.weights and id(layer.weights[0]) in scopes:
            path = scopes[id(layer.weights[0])]
        params = int(sum(int(np.prod(v.shape)) for v in layer.trainable_variables))
        shape = getattr(layer, "last_output_shape", None)
        macs = (layer.multiply_adds() if hasattr(layer, "multiply_adds") and shape is not None
                else None)
        if params == 0 and macs is None:
            continue
        rows.append((path, type(layer).__name__,
                     "" if shape is None else str(tuple(shape[1:])),
                     f"{params:,}", "" if macs is None else f"{macs:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) if i < 3 else c.rjust(widths[i])
                               for i, c in enumerate(r)))
        if k == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)
