"""Every model variable under its official TF1 checkpoint key, in the official creation order; and the
scopes official DeepLab leaves out of a fine-tuning restore.

The map is built by walking the model's structure (not by parsing Keras paths), so it holds for any
genotype: a cell is `hnasnet/cell_i/{prev_1x1, prev_bn, 1x1, beginning_bn}` then
`comb_iter_b/{left,right}/<op scopes>` with the op scopes of nas_cell.py (`separable_KxK_n` +
`bn_sep_KxK_n`, `atrous_KxK` + `bn_atr_KxK`, and `1x1` + `bn_1` for pool/skip ops when they project).
BN variables are `gamma, beta, moving_mean, moving_variance`.

Heads (root scope, as model.py): `image_pooling`, `aspp0`, `aspp{i}_depthwise` / `aspp{i}_pointwise`,
`concat_projection`, `decoder/feature_projection0`, `decoder/decoder_conv{j}_depthwise` /
`_pointwise`, `logits/semantic/{weights,biases}`; head BNs are `<scope>/BatchNorm/*`.
With regular (non-separable) convs, the names are what the official code creates under those flags:
`aspp{i}/weights` + `aspp{i}/BatchNorm/*`, and (slim.repeat) `decoder/decoder_conv0/decoder_conv0_1`
and `.../decoder_conv0_2`, each `/weights` + `/BatchNorm/*`.

`last_layer_scopes` is official `model.get_extra_layer_scopes`: what `--initialize_last_layer=false`
excludes from the restore (the logits alone with `--last_layers_contain_logits_only`, else every
head scope), matched as official `get_variables_to_restore(exclude=...)` does, by name prefix.
"""

from __future__ import annotations

import collections

from nas_deeplab.model import layers
from nas_deeplab.model.backbone import HNASNet
from nas_deeplab.model.cell import Cell
from nas_deeplab.model.heads import ASPP, ConvBNReLU, Decoder, Logits, SplitSeparableConv
from nas_deeplab.model.operations import AtrousOp, PoolOp, SeparableOp, SkipOp

BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")

# Official model.py scope names (get_extra_layer_scopes); meta_architecture is created by other
# meta-architectures only, kept so the exclusion list is the official one.
LOGITS_SCOPE = "logits"
HEAD_SCOPES = (LOGITS_SCOPE, "image_pooling", "aspp", "concat_projection", "decoder", "meta_architecture")
BACKBONE_SCOPE = "hnasnet"


def last_layer_scopes(logits_only: bool = False) -> tuple[str, ...]:
    """Official get_extra_layer_scopes(last_layers_contain_logits_only)."""
    return (LOGITS_SCOPE,) if logits_only else HEAD_SCOPES


def in_scopes(name: str, scopes) -> bool:
    """True when `name` lies under one of `scopes` (official: tf.get_collection's re.match, i.e. a
    name prefix, so 'aspp' covers aspp0, aspp1_depthwise, ...)."""
    return any(name.startswith(scope) for scope in scopes)


def _get(layer, attr, name):
    if not layer.built or not hasattr(layer, attr):
        raise ValueError(f"{name}: layer {layer.name!r} is not built yet (call the model once or "
                         "use build_deeplab / build_backbone with an input_shape)")
    return getattr(layer, attr)


def _bn(prefix, bn: layers.BatchNorm):
    return [(f"{prefix}/{v}", _get(bn, v, f"{prefix}/{v}")) for v in BN_VARIABLES]


def _conv(prefix, conv: layers.Conv2D):
    out = [(f"{prefix}/weights", _get(conv, "kernel", f"{prefix}/weights"))]
    if conv.use_bias:
        out.append((f"{prefix}/biases", _get(conv, "bias", f"{prefix}/biases")))
    return out


def _op(prefix, op):
    if isinstance(op, SeparableOp):
        out = []
        for conv, bn in zip(op.convs, op.bns):
            p = f"{prefix}/{conv.name}"
            out += [(f"{p}/depthwise_weights", _get(conv, "depthwise_kernel", p)),
                    (f"{p}/pointwise_weights", _get(conv, "pointwise_kernel", p))]
            out += _bn(f"{prefix}/{bn.name}", bn)
        return out
    if isinstance(op, AtrousOp):
        k = op.kernel_size
        return _conv(f"{prefix}/atrous_{k}x{k}", op.conv) + _bn(f"{prefix}/bn_atr_{k}x{k}", op.bn)
    if isinstance(op, (PoolOp, SkipOp)):
        if not op.project:
            return []
        return _conv(f"{prefix}/1x1", op.conv) + _bn(f"{prefix}/bn_1", op.bn)
    raise TypeError(f"no official naming for op layer {type(op).__name__}")


def _cell(prefix, cell: Cell):
    out = []
    if cell.has_prev_1x1:
        out += _conv(f"{prefix}/prev_1x1", cell.prev_1x1) + _bn(f"{prefix}/prev_bn", cell.prev_bn)
    out += _conv(f"{prefix}/1x1", cell.conv_1x1) + _bn(f"{prefix}/beginning_bn", cell.beginning_bn)
    for b, block in enumerate(cell.blocks):
        out += _op(f"{prefix}/comb_iter_{b}/left", block.left)
        out += _op(f"{prefix}/comb_iter_{b}/right", block.right)
    return out


def backbone_variables(backbone: HNASNet, scope="hnasnet"):
    """[(official name, variable)] of the backbone, official order."""
    out = []
    for conv, bn in ((backbone.conv0, backbone.conv0_bn), (backbone.conv1, backbone.conv1_bn),
                     (backbone.conv2, backbone.conv2_bn)):
        out += _conv(f"{scope}/{conv.name}", conv) + _bn(f"{scope}/{bn.name}", bn)
    for i, cell in enumerate(backbone.cells):
        out += _cell(f"{scope}/cell_{i}", cell)
    return out


def _conv_bn_relu(scope, layer: ConvBNReLU):
    return _conv(scope, layer.conv) + _bn(f"{scope}/BatchNorm", layer.bn)


def _split_separable(scope, layer: SplitSeparableConv):
    name = f"{scope}_depthwise/depthwise_weights"
    return ([(name, _get(layer.depthwise.conv, "depthwise_kernel", name))]
            + _bn(f"{scope}_depthwise/BatchNorm", layer.depthwise.bn)
            + _conv_bn_relu(f"{scope}_pointwise", layer.pointwise))


def _branch(scope, layer):
    if isinstance(layer, SplitSeparableConv):
        return _split_separable(scope, layer)
    return _conv_bn_relu(scope, layer)


def aspp_variables(aspp: ASPP):
    out = []
    if aspp.add_image_level_feature:
        out += _conv_bn_relu("image_pooling", aspp.image_pooling)
    out += _conv_bn_relu("aspp0", aspp.aspp0)
    for i, branch in enumerate(aspp.branches, 1):
        out += _branch(f"aspp{i}", branch)
    out += _conv_bn_relu("concat_projection", aspp.concat_projection)
    return out


def decoder_variables(decoder: Decoder, scope="decoder"):
    out = _conv_bn_relu(f"{scope}/feature_projection0", decoder.feature_projection0)
    for j, conv in enumerate(decoder.convs):
        if decoder.separable:
            out += _split_separable(f"{scope}/decoder_conv{j}", conv)
        else:
            out += _conv_bn_relu(f"{scope}/decoder_conv0/decoder_conv0_{j + 1}", conv)
    return out


def logits_variables(logits: Logits):
    return _conv("logits/semantic", logits.conv)


def official_variable_map(model) -> "collections.OrderedDict[str, object]":
    """OrderedDict official key -> Keras variable, official creation order. `model` is a DeepLab
    model (backbone + heads) or an HNASNet backbone layer. The model must be built."""
    if isinstance(model, HNASNet):
        items = backbone_variables(model)
    else:
        items = backbone_variables(model.backbone) + aspp_variables(model.aspp)
        if model.decoder is not None:
            items += decoder_variables(model.decoder)
        items += logits_variables(model.logits)
    result = collections.OrderedDict()
    for name, var in items:
        if name in result:
            raise ValueError(f"duplicate official name {name}")
        result[name] = var
    return result
