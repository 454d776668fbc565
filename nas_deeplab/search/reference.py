"""The supernet written edge by edge: the paper's equations as Keras layers, for reading and testing.

`supernet.Supernet` computes the same function as few, large, fused ops (the graph compiler needs
that); this module is its readable twin, in the shape of DARTS's `model_search.py`, and the place to
try a new candidate op before writing its fused form. Every op layer comes from `model/operations.py`,
the final network's own op table, so what is searched here is what is trained.

    MixedOp        eq. 2: sum_k softmax(alpha_e)[k] * op_k(x) over `architecture.OP_VOCABULARY`
    SearchCell     eqs. 1-5: block i = sum over j < i + 2 of MixedOp_(i,j)(state j); the states are
                   H^{l-1} (after its 1x1), H^{l-2} (after its 1x1) and blocks 0..i-1; the output is
                   the concat of the B blocks
    Node           eq. 6: H(l, v) = sum over the incoming directions d of beta_d * Cell_(l,v)(...),
                   beta normalised as eq. 7 (`transition_probabilities`)
    SearchASPP     the search head of each level of the last layer
    ReferenceSupernet   stem, trellis of nodes, ASPPs upsampled and summed

It follows the fused supernet's conventions (its module docstring), written literally:
* every BN normalises with the current batch statistics and is non-affine: the op layers' BN scale
  and offset stay 1 and 0 (they are no weights of the search); their moving statistics are unused;
* a node's 2-3 incoming directions call ONE cell (shared block ops); only the input 1x1 is per
  direction (the inputs' channels differ); the upsample direction resizes H^{l-1} bilinearly to the
  node's size before its 1x1; in the downsample direction the ops reading H^{l-1} stride (with the
  same kernels; only the strided skip has its own 1x1);
* H^{l-2} is the state (l-2, v), else the coarsest state of layer l-2 (stem outputs: layer -2 = OS2,
  layer -1 = OS4), resized bilinearly to the node's size;
* beta is normalised by a softmax over each node's OUTGOING transitions;
* search ASPP: ReLU, then 1x1 and 3x3 rate 96/stride (conv -> BN -> ReLU) and image pooling (mean ->
  1x1 with bias -> ReLU, no BN), concatenated, 1x1 (+bias) to the logits.

`from_supernet(net)` builds a reference holding a fused supernet's weights (kernels sliced per edge),
so the two can be compared; `fused_layout` is that correspondence. Slow: one small op per edge,
candidate and direction (search.py --help gives the measured cost).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from nas_deeplab import architecture, resize
from nas_deeplab.model import layers, operations
from nas_deeplab.search import decode, trellis

OPS = architecture.OP_VOCABULARY


def _resize_to(x, size):
    return x if tuple(x.shape[1:3]) == tuple(size) else resize.resize_bilinear(x, size)


class ReLUConvBN(layers.Composite):
    """A cell input's preprocessing ("1x1"/"beginning_bn", "prev_1x1"/"prev_bn"): ReLU -> 1x1 -> BN."""

    def __init__(self, filters, input_filters, **kwargs):
        super().__init__(**kwargs)
        self.input_filters = int(input_filters)
        self.conv = layers.conv(filters, 1, name="1x1")
        self.bn = layers.batch_norm(name="bn")

    def build_children(self, in_channels):
        layers.build_child(self.conv, self.input_filters)
        layers.build_child(self.bn, self.conv.filters)

    def call(self, x, training=True):
        return self.bn(self.conv(tf.nn.relu(x)), training=training)


def share_kernels(strided_op, op):
    """Make the (unbuilt) stride-2 variant of a candidate use the stride-1 op's kernels: a node has one
    cell, whose ops stride in the downsample direction. A new candidate with weights needs a rule here."""
    if isinstance(op, operations.SeparableOp):
        for strided_conv, conv in zip(strided_op.convs, op.convs):
            strided_conv.depthwise_kernel = conv.depthwise_kernel
            strided_conv.pointwise_kernel = conv.pointwise_kernel
            strided_conv.built = True
    elif isinstance(op, operations.AtrousOp):
        strided_op.conv.kernel, strided_op.conv.bias = op.conv.kernel, None
        strided_op.conv.built = True
    elif op.trainable_weights:
        raise NotImplementedError(f"share_kernels: no rule for {type(op).__name__}")
    # pools have no weights; the stride-1 skip is the identity, the strided one has its own 1x1


class MixedOp(layers.Composite):
    """Paper eq. 2 on one edge: sum_k w[k] * op_k(x), op_k from the op table (`zero` adds nothing;
    its weight only takes part in the softmax). strided=True also builds the stride-2 variants."""

    def __init__(self, filters, strided=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.ops = {name: operations.make_op(name, filters, input_filters=filters, name=name)
                    for name in OPS if name != architecture.ZERO_OP}
        self.strided_ops = {name: operations.make_op(name, filters, stride=2, input_filters=filters,
                                                     name=f"{name}_stride2")
                            for name in self.ops} if strided else {}

    def build_children(self, in_channels):
        for name, op in self.ops.items():
            layers.build_child(op, self.filters)
            if name in self.strided_ops:
                share_kernels(self.strided_ops[name], op)
                layers.build_child(self.strided_ops[name], self.filters)

    def call(self, x, weights, stride=1, training=True):
        ops = self.ops if stride == 1 else self.strided_ops
        out = 0.0
        for k, name in enumerate(OPS):
            if name != architecture.ZERO_OP:
                out = out + weights[k] * ops[name](x, training=training)
        return out


class SearchCell(layers.Composite):
    """H^l = Cell(H^{l-1}, H^{l-2}; alpha) (paper eqs. 1-5), one per node (l, v); every incoming
    direction of the node calls it.

    input_filters: {direction name: channels of H^{l-1} from that side}; prev_filters: of H^{l-2}."""

    def __init__(self, filters, num_blocks, input_filters, prev_filters, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.num_blocks = int(filters), int(num_blocks)
        self.pre = {d: ReLUConvBN(filters, c, name=f"pre_{d}") for d, c in input_filters.items()}
        self.prev = ReLUConvBN(filters, prev_filters, name="prev")
        strided = "downsample" in input_filters
        # edge (i, j): block i reads state j (0 = H^{l-1}, 1 = H^{l-2}, 2 + k = block k)
        self.mixed = {(i, j): MixedOp(filters, strided=strided and j == 0, name=f"block{i}_state{j}")
                      for i in range(num_blocks) for j in range(i + 2)}

    def build_children(self, in_channels):
        for layer in [*self.pre.values(), self.prev, *self.mixed.values()]:
            layers.build_child(layer, 1)  # each sublayer knows its input channels

    def call(self, h_prev, h_prev_prev, direction, alpha_probs, size, training=True):
        """h_prev = H^{l-1} from `direction`; alpha_probs [E, 8] = softmax(alpha); size: the node's."""
        if direction == "downsample":  # a stride-2 cell: the ops reading H^{l-1} stride
            h0, stride0 = self.pre[direction](h_prev, training=training), 2
        else:
            h0, stride0 = self.pre[direction](_resize_to(h_prev, size), training=training), 1
        h1 = self.prev(_resize_to(h_prev_prev, size), training=training)
        states = [h0, h1]
        for i in range(self.num_blocks):
            states.append(sum(
                self.mixed[(i, j)](states[j], alpha_probs[decode.edge_index(i, j)],
                                   stride=stride0 if j == 0 else 1, training=training)
                for j in range(i + 2)))
        return tf.concat(states[2:], axis=-1)


class Node(layers.Composite):
    """Paper eq. 6: H(l, v) = sum_d beta_d * Cell_(l,v)(H(l-1, src_d), H^{l-2}), one cell for all d."""

    def __init__(self, filters, num_blocks, input_filters, prev_filters, **kwargs):
        super().__init__(**kwargs)
        self.cell = SearchCell(filters, num_blocks, input_filters, prev_filters, name="cell")

    def build_children(self, in_channels):
        layers.build_child(self.cell, 1)

    def call(self, inputs, h_prev_prev, betas, alpha_probs, size, training=True):
        """inputs / betas: {direction name: H(l-1, src) / its normalised beta}."""
        return sum(betas[d] * self.cell(x, h_prev_prev, direction=d, alpha_probs=alpha_probs, size=size,
                                        training=training)
                   for d, x in inputs.items())


class Stem(layers.Composite):
    """Official 3-conv stem: conv 3x3/2 -> BN -> ReLU -> conv 3x3 -> BN (OS2) -> ReLU -> conv 3x3/2 ->
    BN (OS4)."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = tuple(int(f) for f in filters)
        self.convs = [layers.conv(f, 3, stride=s, name=f"conv{n}")
                      for n, (f, s) in enumerate(zip(self.filters, (2, 1, 2)))]
        self.bns = [layers.batch_norm(name=f"bn{n}") for n in range(3)]

    def build_children(self, in_channels):
        for conv, bn, c in zip(self.convs, self.bns, (3,) + self.filters[:2]):
            layers.build_child(conv, c)
            layers.build_child(bn, conv.filters)

    def call(self, images, training=True):
        x = images * (2.0 / 255.0) - 1.0  # official nas preprocessing
        x = tf.nn.relu(self.bns[0](self.convs[0](x), training=training))
        os2 = self.bns[1](self.convs[1](x), training=training)
        os4 = self.bns[2](self.convs[2](tf.nn.relu(os2)), training=training)
        return os2, os4


class SearchASPP(layers.Composite):
    """ReLU, then [1x1 conv -> BN -> ReLU, 3x3 conv rate r -> BN -> ReLU, image pooling -> 1x1 (+bias)
    -> ReLU], concatenated, 1x1 (+bias) to the class logits."""

    def __init__(self, filters, input_filters, rate, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.input_filters = int(input_filters)
        self.conv1x1 = layers.conv(filters, 1, name="conv1x1")
        self.bn1x1 = layers.batch_norm(name="bn1x1")
        self.conv3x3 = layers.conv(filters, 3, rate=rate, name="conv3x3")
        self.bn3x3 = layers.batch_norm(name="bn3x3")
        self.pool = layers.Conv2D(filters, 1, use_bias=True, name="pool")
        self.logits = layers.Conv2D(num_classes, 1, use_bias=True, name="logits")

    def build_children(self, in_channels):
        for conv, bn in ((self.conv1x1, self.bn1x1), (self.conv3x3, self.bn3x3)):
            layers.build_child(conv, self.input_filters)
            layers.build_child(bn, conv.filters)
        layers.build_child(self.pool, self.input_filters)
        layers.build_child(self.logits, 3 * self.pool.filters)

    def call(self, x, training=True):
        x = tf.nn.relu(x)
        b1 = tf.nn.relu(self.bn1x1(self.conv1x1(x), training=training))
        b2 = tf.nn.relu(self.bn3x3(self.conv3x3(x), training=training))
        b3 = tf.nn.relu(self.pool(tf.reduce_mean(x, axis=[1, 2], keepdims=True)))
        b3 = tf.broadcast_to(b3, tf.concat([tf.shape(x)[:3], [b3.shape[-1]]], axis=0))
        return self.logits(tf.concat([b1, b2, b3], axis=-1))


def transition_probabilities(beta, num_layers, num_levels):
    """Paper eq. 7: {(l, src, k): weight of the transition from (l-1, src) in direction k}, a softmax
    over the transitions LEAVING each node (edge levels have two)."""
    probs = {}
    for l in range(num_layers):
        for src in trellis.levels_of(l - 1, num_levels):
            ks = [k for k in range(trellis.NUM_DIRECTIONS) if 0 <= src + k - 1 < num_levels]
            p = tf.nn.softmax(tf.stack([beta[l, src, k] for k in ks]))
            probs.update({(l, src, k): p[n] for n, k in enumerate(ks)})
    return probs


def level_size(size, level):
    """(h, w) of a trellis level: the OS4 stem output halved `level` times by stride-2 ops
    (fixed padding + VALID: floor((d - 1) / 2) + 1)."""
    h, w = size
    for _ in range(level + 2):  # two stem convs, then one per level
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return h, w


class ReferenceSupernet(tf.Module):
    """Same interface as `supernet.Supernet` (weights / alpha / beta, call -> logits)."""

    def __init__(self, config, seed: int = 0, name="reference_supernet"):
        super().__init__(name=name)
        self.config = cfg = config
        B, F, L = cfg.num_blocks, cfg.filter_multiplier, cfg.num_layers
        rng = np.random.default_rng(seed)
        # alpha, beta ~ N(0, 1) * 1e-3 (paper Sec. 5.1), drawn as the fused supernet draws them.
        self.alpha = tf.Variable((rng.standard_normal((decode.num_edges(B), len(OPS))) * 1e-3)
                                 .astype(np.float32), name="alpha")
        self.beta = tf.Variable((rng.standard_normal((L, cfg.num_levels, trellis.NUM_DIRECTIONS)) * 1e-3)
                                .astype(np.float32), name="beta")
        stem = Stem(cfg.stem_filters, name="stem")
        nodes = {}
        for (l, v) in trellis.all_nodes(L, cfg.num_levels):
            inputs = {trellis.DIRECTION_NAMES[k]: self.channels(l - 1, src)
                      for src, k in trellis.incoming(l, v, cfg.num_levels)}
            nodes[(l, v)] = Node(F * 2 ** v, B, inputs, self.channels(*self.second_source(l, v)),
                                 name=f"l{l}_v{v}")
        aspp = {v: SearchASPP(B * F * 2 ** v, self.channels(L - 1, v),
                              rate=cfg.aspp_rate_numerator // trellis.stride_of(v),
                              num_classes=cfg.num_classes, name=f"aspp_v{v}")
                for v in trellis.levels_of(L - 1, cfg.num_levels)}
        # Set past tf.Module's tracking: checkpoints hold `vars` (by path), alpha and beta, as the
        # fused supernet's do (its node layers are keyed by (layer, level), which TF cannot save).
        self.__dict__.update(stem=stem, nodes=nodes, aspp=aspp)
        all_layers = [self.stem, *self.nodes.values(), *self.aspp.values()]
        for layer in all_layers:
            layers.build_child(layer, 3)  # every layer knows its input channels; 3: the images'
            for sub in layer._flatten_layers():  # the layer and all its sublayers
                if isinstance(sub, layers.BatchNorm):  # non-affine (see module docstring)
                    sub.gamma.trainable = sub.beta.trainable = False
        weights = {}
        for layer in all_layers:
            for v in layer.trainable_weights:  # a shared kernel appears once
                weights.setdefault(v.path, v)
        # VarianceScaling(1/3, fan_in, uniform) like the fused supernet, from `seed`; biases stay 0.
        for v in weights.values():
            if len(v.shape) == 4:
                lim = np.sqrt(1.0 / np.prod(v.shape[:-1]))
                v.assign(rng.uniform(-lim, lim, size=v.shape).astype(np.float32))
        self.vars = {path: v.value for path, v in weights.items()}  # checkpointed by path
        self.weight_variables = list(self.vars.values())
        self.arch_variables = [self.alpha, self.beta]

    def channels(self, layer, level):
        """Channels of a state; the stem's OS2 / OS4 outputs are layers -2 / -1."""
        if layer < 0:
            return self.config.stem_filters[1 if layer == -2 else 2]
        return self.config.num_blocks * self.config.filter_multiplier * 2 ** level

    def second_source(self, l, v):
        """(layer, level) of H^{l-2} for node (l, v): (l-2, v), else the coarsest level of layer l-2."""
        if l < 2:
            return (l - 2, 0)
        levels = trellis.levels_of(l - 2, self.config.num_levels)
        return (l - 2, v if v in levels else max(levels))

    def parameter_count(self, which="weights"):
        vs = self.weight_variables if which == "weights" else self.arch_variables
        return int(sum(np.prod(v.shape) for v in vs))

    def forget_node_functions(self) -> int:
        """As `Supernet.forget_node_functions`; this one traces no functions of its own."""
        return 0

    def __call__(self, images, return_states=False):
        cfg = self.config
        H, W = int(images.shape[1]), int(images.shape[2])
        os2, os4 = self.stem(images)
        states = {(-2, 0): os2, (-1, 0): os4}
        alpha_probs = tf.nn.softmax(self.alpha, axis=-1)  # one cell architecture for every node
        beta_probs = transition_probabilities(self.beta, cfg.num_layers, cfg.num_levels)
        for (l, v), node in self.nodes.items():
            inc = trellis.incoming(l, v, cfg.num_levels)
            inputs = {trellis.DIRECTION_NAMES[k]: states[(l - 1, src)] for src, k in inc}
            betas = {trellis.DIRECTION_NAMES[k]: beta_probs[(l, src, k)] for src, k in inc}
            states[(l, v)] = node(inputs, states[self.second_source(l, v)], betas=betas,
                                  alpha_probs=alpha_probs, size=level_size((H, W), v))
        logits = 0.0
        for v, aspp in self.aspp.items():
            logits = logits + resize.resize_bilinear(aspp(states[(cfg.num_layers - 1, v)]), (H, W))
        return (logits, states) if return_states else logits


# -- the fused supernet's weights in the reference ------------------------------------------------
def fused_layout(ref: ReferenceSupernet, num_blocks: int):
    """[(reference weight, fused variable key, take)]: `take(fused tensor)` is that weight's slice of
    the fused kernel. Fused node kernels hold their edges state-major: for each state j, the blocks
    i >= j - 1 reading it, in order; sep_pw* are [in, (3x3, 5x5), edge, out]; skip_stride holds block
    i's strided-skip 1x1 in output channels i*C..(i+1)*C."""
    slot = {}
    for j in range(num_blocks + 1):
        for i in range(max(0, j - 1), num_blocks):
            slot[(i, j)] = len(slot)
    out = [(conv.kernel, f"stem/conv{n}", lambda t: t) for n, conv in enumerate(ref.stem.convs)]
    for (l, v), node in ref.nodes.items():
        p, cell, C = f"l{l}_v{v}", node.cell, node.cell.filters
        for d, pre in cell.pre.items():
            out.append((pre.conv.kernel, f"{p}/pre_{d}", lambda t: t))
        out.append((cell.prev.conv.kernel, f"{p}/prev", lambda t: t))
        for (i, j), mixed in cell.mixed.items():
            e = slot[(i, j)]
            for op_index, kk in enumerate((3, 5)):
                sep = mixed.ops[f"separable_{kk}x{kk}_2"]
                for n, conv in enumerate(sep.convs, start=1):
                    out.append((conv.depthwise_kernel, f"{p}/sep{kk}_dw{n}",
                                lambda t, e=e: t[:, :, e, :, None]))
                    out.append((conv.pointwise_kernel, f"{p}/sep_pw{n}",
                                lambda t, e=e, o=op_index: t[None, None, :, o, e, :]))
                out.append((mixed.ops[f"atrous_{kk}x{kk}"].conv.kernel, f"{p}/atr{kk}",
                            lambda t, e=e: t[:, :, :, e, :]))
            if mixed.strided_ops:
                out.append((mixed.strided_ops["skip_connect"].conv.kernel, f"{p}/skip_stride",
                            lambda t, i=i, C=C: t[..., i * C:(i + 1) * C]))
    for v, aspp in ref.aspp.items():
        for name in ("conv1x1", "conv3x3", "pool", "logits"):
            out.append((getattr(aspp, name).kernel, f"aspp_v{v}/{name}", lambda t: t))
        out.append((aspp.pool.bias, f"aspp_v{v}/pool_bias", lambda t: t))
        out.append((aspp.logits.bias, f"aspp_v{v}/logits_bias", lambda t: t))
    return out


def from_supernet(net) -> ReferenceSupernet:
    """A reference with the fused supernet `net`'s weights, alpha and beta (copies)."""
    ref = ReferenceSupernet(net.config)
    layout = fused_layout(ref, net.config.num_blocks)
    covered = {w.path for w, _, _ in layout}
    missing = [path for path in ref.vars if path not in covered]
    if missing:
        raise ValueError(f"reference weights with no fused counterpart: {missing[:5]}")
    for weight, key, take in layout:
        weight.assign(take(tf.convert_to_tensor(net.vars[key])))
    ref.alpha.assign(net.alpha)
    ref.beta.assign(net.beta)
    return ref
