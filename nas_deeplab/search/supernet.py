"""The Auto-DeepLab supernet (paper Sec. 3-4.1), built as few, large ops so it compiles fast.

What it computes (per node (l, v) of `trellis`, F filter multiplier, C = F * 2**v, B blocks):

    H(l, v) = sum_d softmax_eq7(beta)[d] * Cell_{l,v}(pre_d(H(l-1, src_d)), prev(H2(l, v)); softmax(alpha))

* pre_d, the cell's input 1x1 ("1x1"/"beginning_bn" of the official cell), one per direction since the
  input channels differ: ReLU -> 1x1 conv -> BN. Upsample direction: bilinear resize (align_corners) to
  the node's size first, then this 1x1 halves the filters (paper: "bilinear + 1x1"). Downsample
  direction: the cell is a stride-2 cell (ops reading H^{l-1} stride, official strided variants).
* prev ("prev_1x1"/"prev_bn"): ReLU -> 1x1 -> BN of the second input H2(l, v) = H(l-2, v) (paper eq. 6).
  Where (l-2, v) does not exist, H2 is the coarsest existing state of layer l-2 (the stem outputs are
  layers -2 = OS2 and -1 = OS4), resized bilinearly (align_corners) to the node's size: the official
  `_cell_base` rule for a prev_layer of another resolution. In a stride-2 cell the second input is
  already at the output resolution (eq. 6), so only the ops reading H^{l-1} stride (deviation from the
  official cell, where both inputs are at the input resolution).
* The cell's block ops are shared by the node's incoming directions (see "one cell per node" below).
* Mixed op = sum_k softmax(alpha)[e, k] * op_k with the 8 candidates of `architecture.OP_VOCABULARY`,
  official semantics (ReLU -> conv -> BN; separable = two stacked separable layers; atrous = regular
  conv dilation 2; strided sep = fixed padding + VALID; strided atrous = bilinear x0.5 then rate-1 conv;
  pools 3x3 SAME without ReLU/BN; skip = identity, strided skip = ReLU -> 1x1/2 -> BN; zero = nothing).
* Search ASPP on every level of the last layer: ReLU, then 1x1, 3x3 rate 96/s (ReLU -> conv -> BN -> ReLU)
  and image pooling (mean -> 1x1 with bias -> ReLU; no BN: with batch 2 its batch statistics over two
  values are degenerate), B*C filters each, concatenated, 1x1 (+bias) to class logits, bilinearly
  upsampled (align_corners) to the input size and summed over the levels.

Deviations and interpretations (documented, deliberate):
* BN: every BN in the supernet is non-affine and always normalises with the current batch statistics
  (DARTS search convention: no learned scale confounds alpha, no moving averages), so "eval" of the
  supernet also uses batch statistics; BN statistics are per direction (as separate cell calls would
  compute them) and per replica.
* One cell per node: a node's 2-3 incoming directions (the three Cell(.; alpha) terms of eq. 6) share
  one set of block-op weights; only the input 1x1 pre_d (its input channels differ) and the BN
  statistics are per direction. Eq. 6 does not say whether the terms are one cell or three (alpha is
  shared either way); the public PyTorch re-implementation (NoamRosenberg/autodeeplab,
  `cell_level_search.Cell`: preprocess_down/same/up, one `_ops` list run on every direction) does the
  same. Separate cells would give a node with D incoming directions D times the op weights.
* Stem: the official 3-conv stem (3x3/2 64 -> 3x3 64 -> 3x3/2 128, `stem_filters`; the retraining stem
  of Sec. 5.2), where Sec. 3.2 describes the search stem as "two layers" that each halve the resolution.
  It still ends at stride 4 with an OS2 state before it, so the trellis and eq. 6 are unchanged; the
  PyTorch re-implementation also uses three convs.
* Search ASPP: the three branches of Sec. 5.1 (1x1, 3x3 at rate 96/s, image pooling, B*F*s/4 filters
  each); their concatenation goes straight to the 1x1 logits, with no 1x1 projection (conv, BN, ReLU)
  after the concat as DeepLab's ASPP has (the paper names none). The image-pooling branch has a bias
  instead of BN (batch 2: BN over two pooled values is degenerate).

How it stays small (the graph compiler is the bottleneck, not FLOPs):
* The incoming directions of a node are stacked along CHANNELS ([N, h, w, D*C]); convs use grouped
  kernels (the shared kernel tiled D times), so per-direction BN statistics are simply per-channel and
  every BN is one FusedBatchNorm op.
* Each cell state (H^{l-1}, H^{l-2}, block outputs) is processed ONCE for all the blocks consuming it:
  separable layers for all consumers and both kernel sizes (3x3 zero-padded into 5x5, which is exact)
  as one depthwise + one grouped 1x1 (on the large stride-4 maps of big crops, one per kernel size),
  the two atrous convs as one conv each with the consumers' kernels concatenated on the output
  channels, pools and skip once, and the BNs of all consumers at once.
* H^{l-2} is identical for every direction, so its ops run once per node and are broadcast.
* softmax(alpha) rows are permuted once per step into "state-major" order, so every state's consumer
  weights and kernels are static slices.
* Each node is one traced function shared by every node of the same kind (level, directions,
  shapes): about 14 kinds at L=12 instead of 45 nodes, so tracing and differentiating the graph and
  optimising it at the first step cost O(kinds); the calls are not inlined (`_noinline`).
* Variables are stored in the layouts the kernels need (no transposes in the step).
* The separable ops' depthwise filter gradient is itself a depthwise conv (`model/depthwise.py`): the
  oneDNN kernel for it was 39% of the weight step.
* The max pool's gradient recomputes the pool next to MaxPoolGrad (`model/max_pool.py`), so TF runs
  oneDNN's kernel instead of Eigen's, which was about 10x slower.
* Forms chosen by map size: on maps of LARGE_MAP_SIZE and more, the separable input is repeated
  inside the depthwise op (not kept for the backward pass) and the pools are weighted by one 1x1
  conv; on maps of PER_OUTPUT_BN_MIN_SIZE and more each conv output has its own BN; on maps of
  SPLIT_SEPARABLE_MIN_SIZE and more the 3x3 and 5x5 separable ops run as separate convs. Smaller
  maps keep the forms with fewer ops (per-op overhead dominates there).
* XLA (`jit_compile`) on the node functions was tried and rejected: 18x slower steps, 4x the start-up.

Memory (`recompute_cheap_ops`, on by default for 16-bit compute): what the node functions keep for
the backward pass, measured at crop 321 in bfloat16 (paper size, weight step, tensors after buffer
aliases; tests/search/test_supernet.py counts the same way): 2.83 GiB, of which 0.70 GiB are the
separable ops' depthwise outputs (needed only by the pointwise kernels' gradient), 0.22 GiB stacked
pools and directions (needed only by alpha's and beta's gradients) and 0.10 GiB copies of small-map
inputs repeated for the depthwise op. With the option the backward pass rebuilds them from tensors
it keeps anyway (`depthwise.separable_conv2d`; `tf.recompute_grad` on the pool mix and the direction
sum; the repeat inside the depthwise op on every map size): 1.87 GiB kept, peak RSS 6.96 -> 5.84 GiB.
The rest: BN inputs (conv outputs, 1.0 GiB), ReLU'd states (0.5 GiB), kernels. The recompute
boundaries change TF's op fusions, so round-off differs; float32 keeps it off by default so its
results stay exactly as they were (turn it on for float32 memory the same way).
Measured (2 CPU cores, L=12 B=5 F=8, batch 2, one thread per op: training/threads.py): crop 65:
build 1.5 s, start-up 43-48 s, then 0.8-0.9 s per weight step and 0.5 s per arch step, 3.7 GiB;
crop 321: 6.0 s per weight step, 9.8 GiB, or with `recompute_levels=(0, 1)` 6.7 s and 5.9 GiB
(bench/results.json has the current figures; this machine's speed drifts 10-20% by the day).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from nas_deeplab import architecture, resize
from nas_deeplab.model import depthwise, dilated_conv, max_pool
from nas_deeplab.search import decode, trellis

BN_EPSILON = 1e-3  # nas_arg_scope
# On maps at least this size (the stride-4 level of crops >= 253) the 3x3 and 5x5 separable ops run as
# separate convs: the 3x3 ones then skip the zero taps of their 5x5 embedding (32% of the depthwise
# work), which outweighs the extra ops. Node bench at crop 321, one thread: 81x81 nodes 10-15% faster;
# 41x41 and smaller ones slower, so they share one 5x5 conv.
SPLIT_SEPARABLE_MIN_SIZE = 64
# Maps at least this size a side (strides 4 and 8 at crop 321) take the forms that save passes over
# memory (and saved activations) at the price of more ops: the separable input repeated inside the
# depthwise op, the pools weighted by a 1x1 conv. On smaller maps per-op overhead dominates (the crop-65
# weight step was 0.8 s with the fewer-op forms, 1.0 s with these).
LARGE_MAP_SIZE = 32
# Maps at least this size give each conv output of a mixed op its own BN instead of one BN over their
# concatenation: no concat, and in the backward pass no tiled copy of the sum's gradient and no slices
# of the concat's. Node bench (crop 321, one thread): 81x81 nodes 8-12% faster, 41x41 4%, 21x21 no
# gain; whole crop-321 step (bench/ab_search.py): weight 6.66 -> 6.12 s, arch 3.56 -> 3.33 s.
PER_OUTPUT_BN_MIN_SIZE = 32
NUM_OPS = len(architecture.OP_VOCABULARY)
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# Column indices into softmax(alpha) (the order of architecture.OP_VOCABULARY).
_SEP3, _SEP5, _ATR3, _ATR5, _AVG, _MAX, _SKIP, _ZERO = range(8)


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
    num_classes: int
    num_layers: int = 12
    num_blocks: int = 5
    filter_multiplier: int = 8
    num_levels: int = 4                 # strides 4 .. 4 * 2**(num_levels-1)
    stem_filters: tuple = (64, 64, 128)  # official 3-conv stem
    aspp_rate_numerator: int = 96        # 3x3 rate 96/s
    recompute: bool = False              # recompute each node in the backward pass (memory)
    recompute_levels: tuple = ()         # ... or only the nodes of these levels (0 = stride 4 holds most)
    compute_dtype: str = "float32"       # or bfloat16 / float16: activations and convs (see "Precision")
    recompute_cheap_ops: bool | None = None  # backward recomputes depthwise outputs, pool mixes and
                                             # direction sums instead of keeping them; None: 16-bit only

    def __post_init__(self):
        for name in ("num_classes", "num_layers", "num_blocks", "filter_multiplier"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.num_levels <= 4:
            raise ValueError(f"num_levels must be 1..4 (strides 4..32), got {self.num_levels}")
        bad = [v for v in self.recompute_levels if not 0 <= int(v) < self.num_levels]
        if bad:
            raise ValueError(f"recompute_levels {bad} outside 0..{self.num_levels - 1}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {list(COMPUTE_DTYPES)}, got {self.compute_dtype!r}")

    @property
    def recomputes_cheap_ops(self) -> bool:
        """See "Memory" in the module docstring: on by default for 16-bit compute only, so float32
        results stay exactly what they were (the recompute boundaries change TF's op fusions, hence
        float round-off)."""
        if self.recompute_cheap_ops is None:
            return self.compute_dtype != "float32"
        return bool(self.recompute_cheap_ops)

    def recomputes(self, level: int) -> bool:
        return self.recompute or level in self.recompute_levels


def state_major_rows(num_blocks):
    """Rows of alpha in state-major order: for each state j, its consumer blocks i (edge (i, j)).
    Returns (perm [E] edge indices, {state: (row0, row1)})."""
    perm, ranges = [], {}
    for j in range(num_blocks + 1):
        consumers = list(range(max(0, j - 1), num_blocks))
        if not consumers:
            continue
        ranges[j] = (len(perm), len(perm) + len(consumers))
        perm += [decode.edge_index(i, j) for i in consumers]
    return perm, ranges


def spatial_sizes(height, width, num_levels):
    """Static (h, w) of the stem OS2 output and of each level (strided convs: floor((d-1)/2)+1)."""
    def half(d):
        return (d - 1) // 2 + 1
    os2 = (half(height), half(width))
    sizes = [(half(os2[0]), half(os2[1]))]
    for _ in range(num_levels - 1):
        sizes.append((half(sizes[-1][0]), half(sizes[-1][1])))
    return os2, sizes


def _fbn(x, scale=None):
    """Non-affine BN with batch statistics, one fused op (per channel = per direction, see module);
    `scale` (optional, float32) multiplies the normalised output per channel. For 16-bit x the kernel
    takes float32 scale/offset and computes the statistics in float32."""
    c = x.shape[-1]
    if scale is None:
        scale = tf.ones([c], tf.float32)
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(
        x, tf.cast(scale, tf.float32), tf.zeros([c], tf.float32), epsilon=BN_EPSILON, is_training=True)
    return y


def _repeat(x, axis, times):
    """tf.tile along one size-1 axis, with a one-op gradient (a keepdims sum). TF's generic TileGrad
    builds about ten dynamic-shape ops per tile, which dominated the time to differentiate the graph."""
    if times == 1:
        return x
    multiples = [1] * x.shape.rank
    multiples[axis] = times

    @tf.custom_gradient
    def tile(t):
        def grad(g):
            return tf.reduce_sum(g, axis=axis, keepdims=True)
        return tf.tile(t, multiples), grad

    return tile(x)


def _weighted_sum(maps, weights, G, C):
    """sum_k weights[k, i] * maps[k] for every consumer i: k maps [N, h, w, G*C], weights [k, n]
    -> [N, h, w, G, n, C].

    For C < 32 on large maps (LARGE_MAP_SIZE) this is one 1x1 conv whose kernel is weights (x) identity(C),
    with the directions folded into the width: C times the multiply-adds, but one pass over memory
    instead of a [.., k, n, C] product and its reduction, and their gradients. Measured per call,
    forward and backward, one thread: 3x faster at C=8, 1.8x at C=16, equal at 32, slower at 64."""
    k, n = int(weights.shape[0]), int(weights.shape[1])
    h, w = int(maps[0].shape[1]), int(maps[0].shape[2])
    weights = tf.cast(weights, maps[0].dtype)
    if C >= 32 or h < LARGE_MAP_SIZE:
        stacked = tf.stack([tf.reshape(m, [-1, h, w, G, 1, C]) for m in maps], axis=4)  # [N,h,w,G,k,1,C]
        return tf.reduce_sum(stacked * tf.reshape(weights, [k, n, 1]), axis=4)
    stacked = tf.reshape(tf.stack([tf.reshape(m, [-1, h, w, G, C]) for m in maps], axis=4),
                         [-1, h, w * G, k * C])
    kernel = tf.reshape(weights[:, None, :, None] * tf.eye(C, dtype=weights.dtype)[None, :, None, :],
                        [1, 1, k * C, n * C])
    return tf.reshape(_conv(stacked, kernel, padding="VALID"), [-1, h, w, G, n, C])


def _grouped(kernel, shape, G):
    """A kernel shared by G stacked directions -> one copy per direction (a grouped conv's kernel)."""
    if G == 1:
        return tf.reshape(kernel, shape)
    kernel = tf.reshape(kernel, shape[:3] + [1, shape[3]])
    return tf.reshape(_repeat(kernel, 3, G), shape[:3] + [G * shape[3]])


def _separable(r, G, C, Q, stride, dw1, pw1, dw2, pw2, recompute_depthwise=False):
    """Both separable layers of Q (consumer, kernel) pairs reading one ReLU'd cell state r
    [N, h, w, G*C]: depthwise over Q copies of r, grouped 1x1, BN, ReLU, depthwise, grouped 1x1.
    Depthwise kernels [K, K, .., C] hold Q*C channels in (q, c) order, pointwise ones [C, .., C].
    recompute_depthwise: the backward pass recomputes each depthwise output instead of keeping it
    (`depthwise.separable_conv2d`; same values, less memory, one more depthwise pass), and the input
    is repeated inside the depthwise op on every map size (no copy of it is kept)."""
    K = int(dw1.shape[0])
    d1 = tf.reshape(_grouped(dw1, [K, K, 1, Q * C], G), [K, K, G * Q * C, 1])  # (g, q, c) order
    d2 = tf.reshape(_grouped(dw2, [K, K, 1, Q * C], G), [K, K, G * Q * C, 1])
    p1, p2 = _grouped(pw1, [1, 1, C, Q * C], G), _grouped(pw2, [1, 1, C, Q * C], G)
    groups, repeats = G, Q
    if int(r.shape[1]) < LARGE_MAP_SIZE and not recompute_depthwise:  # copy first: fewer gradient ops
        r, groups, repeats = depthwise.repeat_channels(r, G, Q), 1, 1
    stride_args = (2, "VALID") if stride == 2 else (1, "SAME")
    if stride == 2:
        r = resize.fixed_padding(r, K)

    def layer(x, dk, pk, stride, padding, groups, repeats):
        if recompute_depthwise:
            return depthwise.separable_conv2d(x, dk, pk, stride, padding, groups, repeats)
        return _conv(depthwise.depthwise_conv2d(x, dk, stride, padding, groups, repeats), pk)

    y = tf.nn.relu(_fbn(layer(r, d1, p1, *stride_args, groups, repeats)))
    return layer(y, d2, p2, 1, "SAME", 1, 1)


def _conv(x, k, stride=1, rate=1, padding="SAME"):
    if stride == 1 and padding == "SAME" and dilated_conv.needs_float32_filter_gradient(x, rate):
        return dilated_conv.conv2d(x, k, rate)   # TF's bf16 filter gradient can segfault here
    return tf.nn.conv2d(x, k, strides=stride, padding=padding, dilations=rate)


def _resize_to(x, size):
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    return _resize(x, size)


def _resize(x, size):
    """align_corners bilinear resize in x's dtype (TF's kernel always returns float32)."""
    return tf.cast(resize.resize_bilinear(x, size), x.dtype)


class Supernet(tf.Module):
    """Weights (`weight_variables`) and architecture parameters (`alpha`, `beta`) are separate."""

    def __init__(self, config: SupernetConfig, seed: int = 0, name="supernet"):
        super().__init__(name=name)
        self.config = cfg = config
        rng = np.random.default_rng(seed)
        B, F = cfg.num_blocks, cfg.filter_multiplier
        self.num_edges = decode.num_edges(B)
        self.perm, self.ranges = state_major_rows(B)
        # Architecture parameters, N(0, 1) * 1e-3 (paper Sec. 5.1).
        self.alpha = tf.Variable((rng.standard_normal((self.num_edges, NUM_OPS)) * 1e-3)
                                 .astype(np.float32), name="alpha")
        self.beta = tf.Variable((rng.standard_normal((cfg.num_layers, cfg.num_levels,
                                                      trellis.NUM_DIRECTIONS)) * 1e-3)
                                .astype(np.float32), name="beta")
        self.vars = {}
        self._rng = rng

        def var(key, shape, fan_in, limit=None):
            lim = math.sqrt(1.0 / fan_in) if limit is None else limit  # VarianceScaling(1/3, fan_in, uniform)
            v = tf.Variable(rng.uniform(-lim, lim, size=shape).astype(np.float32),
                            name=key.replace("/", "_"))
            self.vars[key] = v
            return v

        self._var = var
        s0, s1, s2 = cfg.stem_filters
        var("stem/conv0", (3, 3, 3, s0), 27)
        var("stem/conv1", (3, 3, s0, s1), 9 * s0)
        var("stem/conv2", (3, 3, s1, s2), 9 * s1)
        self.nodes = trellis.all_nodes(cfg.num_layers, cfg.num_levels)
        for (l, v) in self.nodes:
            C = F * 2 ** v
            p = f"l{l}_v{v}"
            E = self.num_edges
            for (src, k) in trellis.incoming(l, v, cfg.num_levels):
                cin = self._channels(l - 1, src)
                var(f"{p}/pre_{trellis.DIRECTION_NAMES[k]}", (1, 1, cin, C), cin)
            cprev = self._channels(*self._second_source(l, v))
            var(f"{p}/prev", (1, 1, cprev, C), cprev)
            if any(k == trellis.DOWN for _, k in trellis.incoming(l, v, cfg.num_levels)):
                var(f"{p}/skip_stride", (1, 1, C, B * C), C)  # strided skip on H^{l-1} (B consumers)
            # Depthwise kernels are initialised like slim does ([K, K, C, 1] -> fan_in = K*K*C).
            var(f"{p}/sep3_dw1", (3, 3, E, C), 9 * C)
            var(f"{p}/sep5_dw1", (5, 5, E, C), 25 * C)
            var(f"{p}/sep3_dw2", (3, 3, E, C), 9 * C)
            var(f"{p}/sep5_dw2", (5, 5, E, C), 25 * C)
            var(f"{p}/sep_pw1", (C, 2, E, C), C)   # [in, op (3x3, 5x5), edge, out]
            var(f"{p}/sep_pw2", (C, 2, E, C), C)
            var(f"{p}/atr3", (3, 3, C, E, C), 9 * C)
            var(f"{p}/atr5", (5, 5, C, E, C), 25 * C)
        for v in trellis.levels_of(cfg.num_layers - 1, cfg.num_levels):
            cin = self._channels(cfg.num_layers - 1, v)
            C = F * 2 ** v * B
            p = f"aspp_v{v}"
            var(f"{p}/conv1x1", (1, 1, cin, C), cin)
            var(f"{p}/conv3x3", (3, 3, cin, C), 9 * cin)
            var(f"{p}/pool", (1, 1, cin, C), cin)
            self.vars[f"{p}/pool_bias"] = tf.Variable(np.zeros(C, np.float32), name=f"{p}_pool_bias")
            var(f"{p}/logits", (1, 1, 3 * C, cfg.num_classes), 3 * C)
            self.vars[f"{p}/logits_bias"] = tf.Variable(np.zeros(cfg.num_classes, np.float32),
                                                        name=f"{p}_logits_bias")
        del self._rng, self._var
        self.weight_variables = list(self.vars.values())
        self.arch_variables = [self.alpha, self.beta]

    # -- static structure --------------------------------------------------------------------
    def _channels(self, layer, level):
        """Output channels of a state: stem OS2 / OS4 are layers -2 / -1."""
        if layer == -2:
            return self.config.stem_filters[1]
        if layer == -1:
            return self.config.stem_filters[2]
        return self.config.num_blocks * self.config.filter_multiplier * 2 ** level

    def _second_source(self, l, v):
        """(layer, level) of the node's second input (see module docstring)."""
        if l == 0:
            return (-2, 0)
        if l == 1:
            return (-1, 0)
        levels = trellis.levels_of(l - 2, self.config.num_levels)
        return (l - 2, v if v in levels else max(levels))

    def parameter_count(self, which="weights"):
        vs = self.weight_variables if which == "weights" else self.arch_variables
        return int(sum(np.prod(v.shape) for v in vs))

    # -- forward -----------------------------------------------------------------------------
    def alpha_probs(self):
        return tf.nn.softmax(self.alpha, axis=-1)

    def beta_probs(self):
        return trellis.softmax_beta_tf(self.beta, self.config.num_levels)

    def __call__(self, images, return_states=False, inline_nodes=False):
        """images float [N, H, W, 3] in 0..255 (static H, W) -> logits [N, H, W, num_classes].
        inline_nodes: trace every node into the caller's graph instead of calling the shared node
        functions (same values; one large graph, for FLOP counting by graph profilers)."""
        cfg = self.config
        V = self.vars
        H, W = int(images.shape[1]), int(images.shape[2])
        os2_size, sizes = spatial_sizes(H, W, cfg.num_levels)
        cdt = tf.as_dtype(cfg.compute_dtype)

        def weight(key):  # float32 master weight, read in the compute dtype (no-op for float32)
            return tf.cast(V[key], cdt)

        x = tf.cast(tf.cast(images, tf.float32) * (2.0 / 255.0) - 1.0, cdt)  # official nas preprocessing
        # Stem (official _nas_stem; BNs non-affine).
        x = tf.nn.relu(_fbn(_conv(resize.fixed_padding(x, 3), weight("stem/conv0"), 2, padding="VALID")))
        os2 = _fbn(_conv(x, weight("stem/conv1")))
        os4 = _fbn(_conv(resize.fixed_padding(tf.nn.relu(os2), 3), weight("stem/conv2"), 2,
                         padding="VALID"))
        states = {(-2, 0): os2, (-1, 0): os4}
        # softmax(alpha), softmax(beta) stay float32: alpha weights scale the (float32-parameter) BNs,
        # and are cast only where they multiply 16-bit maps (pools, direction sum).
        alpha_sm = tf.gather(self.alpha_probs(), self.perm)  # state-major rows, see state_weights
        beta_p = self.beta_probs()
        for (l, v) in self.nodes:
            inc = trellis.incoming(l, v, cfg.num_levels)
            inputs = [states[(l - 1, src)] for src, _ in inc]
            second = states[self._second_source(l, v)]
            betas = tf.stack([beta_p[l, src, k] for src, k in inc])
            p = f"l{l}_v{v}"
            kernels = [weight(f"{p}/{name}") for name in self._node_kernel_names(inc)]
            ks = tuple(k for _, k in inc)
            if inline_nodes:
                fn = self._make_node_fn(v, ks, sizes[v])
            else:
                fn = self._node_function(v, ks, sizes[v], tuple(second.shape[1:]),
                                         tuple(tuple(x.shape[1:]) for x in inputs))
            states[(l, v)] = fn(second, betas, alpha_sm, *kernels, *inputs)
        logits = 0.0   # float32: the loss, the softmax and the mIoU see full-precision logits
        for v in trellis.levels_of(cfg.num_layers - 1, cfg.num_levels):
            y = self._aspp(states[(cfg.num_layers - 1, v)], v)
            logits = logits + tf.cast(resize.resize_bilinear(y, (H, W)), tf.float32)
        if return_states:
            return logits, states
        return logits

    def cell_kernels(self, V):
        """The node's op kernels split per cell state (one Split op per kernel), in the layouts
        `mixed_ops` uses. Separable 3x3 kernels are also zero-padded into 5x5 (exact: the extra taps
        multiply zeros), so both separable ops can run as one depthwise conv (dw1, dw2), or each on
        its own (dw1_3, dw1_5, ...)."""
        sizes = [r1 - r0 for (r0, r1) in self.ranges.values()]
        pad = [[1, 1], [1, 1], [0, 0], [0, 0]]
        dw1 = tf.stack([tf.pad(V["sep3_dw1"], pad), V["sep5_dw1"]], axis=2)  # [5,5,2,E,C]
        dw2 = tf.stack([tf.pad(V["sep3_dw2"], pad), V["sep5_dw2"]], axis=2)
        parts = {"dw1": tf.split(dw1, sizes, axis=3), "dw2": tf.split(dw2, sizes, axis=3),
                 "pw1": tf.split(V["sep_pw1"], sizes, axis=2), "pw2": tf.split(V["sep_pw2"], sizes, axis=2),
                 "atr3": tf.split(V["atr3"], sizes, axis=3), "atr5": tf.split(V["atr5"], sizes, axis=3)}
        for kk in (3, 5):
            for layer in (1, 2):
                parts[f"dw{layer}_{kk}"] = tf.split(V[f"sep{kk}_dw{layer}"], sizes, axis=2)
        return {j: {k: parts[k][i] for k in parts} for i, j in enumerate(self.ranges)}

    def node_variables(self, l, v):
        """{short name: variable} of node (l, v)."""
        p = f"l{l}_v{v}/"
        return {k[len(p):]: t for k, t in self.vars.items() if k.startswith(p)}

    def state_weights(self, probs):
        """Per cell state j: the consumers' op weights. `probs` is softmax(alpha) in state-major row
        order. conv4: [4, n] for the BN-scaled conv outputs (sep3, sep5, atr3, atr5); skip: [1, n] for
        the strided skip (also BN-scaled); pool: [3, n] for avg, max, skip (skip unused when strided)."""
        sizes = [r1 - r0 for (r0, r1) in self.ranges.values()]
        out = {}
        for j, wj in zip(self.ranges, tf.split(tf.transpose(probs), sizes, axis=1)):  # [8, n] each
            out[j] = {"conv4": wj[_SEP3:_ATR5 + 1], "skip": wj[_SKIP:_SKIP + 1],
                      "pool": wj[_AVG:_SKIP + 1]}
        return out

    @staticmethod
    def _node_kernel_names(inc):
        names = [f"pre_{trellis.DIRECTION_NAMES[k]}" for _, k in inc] + ["prev"]
        if any(k == trellis.DOWN for _, k in inc):
            names.append("skip_stride")
        return names + ["sep3_dw1", "sep5_dw1", "sep3_dw2", "sep5_dw2", "sep_pw1", "sep_pw2",
                        "atr3", "atr5"]

    def _node_function(self, v, ks, size, second_shape, input_shapes):
        """One traced function per distinct node signature (level, directions, shapes): nodes of the
        same kind in different layers reuse it, so tracing, differentiating and optimising the graph
        cost O(#kinds) (about 14 at L=12), not O(#nodes). Variables enter as arguments. `_noinline`
        keeps the runtime from inlining 45 copies back into one huge graph."""
        key = (v, ks, size, second_shape, input_shapes)
        cache = self.__dict__.setdefault("_fn_cache", {})
        if key not in cache:
            fn = tf.function(self._make_node_fn(v, ks, size), autograph=False, reduce_retracing=False,
                             experimental_attributes={"_noinline": True})
            if self.config.recomputes(v):
                fn = tf.recompute_grad(fn)
            cache[key] = fn
        return cache[key]

    def forget_node_functions(self) -> int:
        """Drop the traced node functions (they hold their Python graphs): once the steps that call
        them are compiled (`training/compiled_step.py`), only the runtime needs them, and a later
        call of the supernet traces them afresh. Returns how many there were."""
        return len(self.__dict__.pop("_fn_cache", {}))

    def _make_node_fn(self, v, ks, size):
        cfg = self.config
        B, C = cfg.num_blocks, cfg.filter_multiplier * 2 ** v
        names = [trellis.DIRECTION_NAMES[k] for k in ks]
        kernel_names = self._node_kernel_names([(None, k) for k in ks])
        D = len(ks)

        def node(second, betas, alpha_sm, *args):
            V = dict(zip(kernel_names, args[:len(kernel_names)]))
            inputs = args[len(kernel_names):]
            weights = self.state_weights(alpha_sm)
            kern = self.cell_kernels(V)
            # Second input (shared by every direction).
            h1 = _fbn(_conv(tf.nn.relu(_resize_to(second, size)), V["prev"]))
            # First input, per direction.
            h0_down, h0_flat = None, []
            for x, name in zip(inputs, names):
                if name == "downsample":
                    h0_down = _fbn(_conv(tf.nn.relu(x), V["pre_downsample"]))
                else:
                    x = _resize_to(x, size)
                    h0_flat.append(_conv(tf.nn.relu(x), V[f"pre_{name}"]))
            mixes0 = []
            if h0_down is not None:
                mixes0.append(self.mixed_ops(h0_down, 1, C, kern[0], weights[0], stride=2,
                                             skip_kernel=V["skip_stride"]))
            if h0_flat:
                g = len(h0_flat)
                h0 = _fbn(tf.concat(h0_flat, axis=-1) if g > 1 else h0_flat[0])
                mixes0.append(self.mixed_ops(h0, g, C, kern[0], weights[0]))
            mix0 = tf.concat(mixes0, axis=3) if len(mixes0) > 1 else mixes0[0]  # [N,h,w,D,B,C]
            mix1 = self.mixed_ops(h1, 1, C, kern[1], weights[1])                   # [N,h,w,1,B,C]
            pending = tf.unstack(mix0 + mix1, axis=4)  # per consumer block: [N,h,w,D,C]
            blocks = []
            for i in range(B):
                b = pending[i]
                blocks.append(b)
                if i < B - 1:
                    later = self.mixed_ops(tf.reshape(b, [-1, size[0], size[1], D * C]), D, C, kern[i + 2],
                                           weights[i + 2])
                    for m, t in enumerate(tf.unstack(later, axis=4)):
                        pending[i + 1 + m] = pending[i + 1 + m] + t
            return recomputed(direction_sum)(betas, *blocks)

        def direction_sum(betas, *blocks):  # eq. 6's beta-weighted sum over the incoming directions
            cells = tf.stack(blocks, axis=4)  # [N,h,w,D,B,C]
            out = tf.reduce_sum(cells * tf.cast(tf.reshape(betas, [D, 1, 1]), cells.dtype), axis=3)
            return tf.reshape(out, [-1, size[0], size[1], B * C])

        recomputed = tf.recompute_grad if cfg.recomputes_cheap_ops else (lambda f: f)

        return node

    def mixed_ops(self, x, G, C, k, w, stride=1, skip_kernel=None, split_separable=None):
        """All mixed ops reading one cell state for every consumer block, for G stacked directions.

        x [N, h, w, G*C] -> [N, h', w', G, n, C] (n consumers; h' = h, or the strided size).
        k: this state's kernels (`cell_kernels`), w: its op weights (`state_weights`). The alpha
        weights of the conv ops are the scales of their (otherwise non-affine) BN, which is exact
        and saves a multiply on the largest tensor. split_separable: run the 3x3 and 5x5 separable
        ops as separate convs (default: on maps of SPLIT_SEPARABLE_MIN_SIZE and more)."""
        n = int(k["atr3"].shape[3])
        r = tf.nn.relu(x)

        # -- separable 3x3 and 5x5, both layers, all consumers: depthwise + grouped 1x1 ---------
        if split_separable is None:
            split_separable = int(x.shape[1]) >= SPLIT_SEPARABLE_MIN_SIZE
        if split_separable:
            seps = [(_separable(r, G, C, n, stride, k[f"dw1_{kk}"], k["pw1"][:, i], k[f"dw2_{kk}"],
                                k["pw2"][:, i], self.config.recomputes_cheap_ops), w["conv4"][i:i + 1])
                    for i, kk in enumerate((3, 5))]
        else:
            seps = [(_separable(r, G, C, 2 * n, stride, k["dw1"], k["pw1"], k["dw2"], k["pw2"],
                                self.config.recomputes_cheap_ops), w["conv4"][0:2])]
        y = seps[0][0]
        ho, wo = int(y.shape[1]), int(y.shape[2])
        # -- atrous: one conv per kernel size for all consumers (grouped over directions) --------
        if stride == 2:
            rs = _resize(r, (ho, wo))
            a3 = _conv(rs, _grouped(k["atr3"], [3, 3, C, n * C], G))
            a5 = _conv(rs, _grouped(k["atr5"], [5, 5, C, n * C], G))
        else:
            a3 = _conv(r, _grouped(k["atr3"], [3, 3, C, n * C], G), rate=2)
            a5 = _conv(r, _grouped(k["atr5"], [5, 5, C, n * C], G), rate=2)
        # BN of the conv outputs (statistics are per channel, so per op and direction), its
        # per-channel scale = the consumer's alpha weight; then the sum over the ops. One BN per
        # output on large maps (PER_OUTPUT_BN_MIN_SIZE), else one over their concatenation.
        terms = seps + [(a3, w["conv4"][2:3]), (a5, w["conv4"][3:4])]
        if stride == 2:
            # strided skip (official 'none' with stride): ReLU -> 1x1 stride 2 -> BN.
            sk = _conv(r, tf.reshape(skip_kernel, [1, 1, C, n * C]), stride=2)
            terms.append((sk, w["skip"]))

        def bn_scale(wr):  # per-channel BN scale: the consumers' weights, for each direction
            ops = int(wr.shape[0])
            return tf.reshape(_repeat(_repeat(tf.reshape(wr, [1, ops * n, 1]), 0, G), 2, C), [-1])

        if ho >= PER_OUTPUT_BN_MIN_SIZE:
            out = None
            for t, wr in terms:
                ops, z = int(wr.shape[0]), _fbn(t, bn_scale(wr))
                z = (tf.reduce_sum(tf.reshape(z, [-1, ho, wo, G, ops, n, C]), axis=4) if ops > 1
                     else tf.reshape(z, [-1, ho, wo, G, n, C]))
                out = z if out is None else out + z
        else:
            wrows = tf.concat([wr for _, wr in terms], axis=0)  # [ops, n], in the order of the parts
            nconv = int(wrows.shape[0])
            parts = [tf.reshape(t, [-1, ho, wo, G, int(wr.shape[0]) * n * C]) for t, wr in terms]
            z = _fbn(tf.reshape(tf.concat(parts, axis=4), [-1, ho, wo, G * nconv * n * C]), bn_scale(wrows))
            out = tf.reduce_sum(tf.reshape(z, [-1, ho, wo, G, nconv, n, C]), axis=4)
        # -- pools (no ReLU, no BN) and identity skip: [avg, max(, x)] x weights ----------------
        def pool_mix(x, weights):
            pools = [tf.nn.avg_pool2d(x, 3, stride, "SAME"), max_pool.max_pool_3x3(x, stride)]
            if stride == 1:
                pools.append(x)
            return _weighted_sum(pools, weights[:len(pools)], G, C)

        if self.config.recomputes_cheap_ops:  # keep x only: the stacked pools are rebuilt for alpha's gradient
            pool_mix = tf.recompute_grad(pool_mix)
        return out + pool_mix(x, w["pool"])

    def _aspp(self, x, v):
        V = {k.split("/", 1)[1]: tf.cast(t, x.dtype) for k, t in self.vars.items() if k.startswith(f"aspp_v{v}/")}
        s = 2 ** (v + 2)
        x = tf.nn.relu(x)
        h, w = int(x.shape[1]), int(x.shape[2])
        b1 = tf.nn.relu(_fbn(_conv(x, V["conv1x1"])))
        b2 = tf.nn.relu(_fbn(_conv(x, V["conv3x3"], rate=self.config.aspp_rate_numerator // s)))
        pooled = tf.cast(tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2], keepdims=True), x.dtype)
        b3 = tf.nn.relu(_conv(pooled, V["pool"]) + V["pool_bias"])
        b3 = tf.broadcast_to(b3, [tf.shape(x)[0], h, w, b3.shape[-1]])
        y = tf.concat([b1, b2, b3], axis=-1)
        return _conv(y, V["logits"]) + V["logits_bias"]
