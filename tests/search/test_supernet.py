"""The vectorised supernet computes what the faithful per-op layers compute, and its parameters
receive gradients."""

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture
from nas_deeplab.model import operations
from nas_deeplab.search import decode, supernet, trellis

OPS = architecture.OP_VOCABULARY


def _tiny(**kw):
    cfg = dict(num_classes=3, num_layers=3, num_blocks=2, filter_multiplier=2)
    cfg.update(kw)
    return supernet.Supernet(supernet.SupernetConfig(**cfg), seed=1)


def _faithful_ops(V, row, C, x, stride, consumer):
    """The 7 non-zero candidates from operations.OPS with the supernet's weights for alpha row `row`."""
    outs = {}
    for name in OPS[:-1]:
        layer = operations.make_op(name, C, stride=stride, input_filters=C)
        layer(x, training=True)  # build
        if name.startswith("separable"):
            k = 0 if "3x3" in name else 1
            kk = 3 if k == 0 else 5
            for n, conv in enumerate(layer.convs, start=1):
                conv.depthwise_kernel.assign(V[f"sep{kk}_dw{n}"][:, :, row, :][..., None])
                conv.pointwise_kernel.assign(V[f"sep_pw{n}"][:, k, row, :][None, None])
        elif name.startswith("atrous"):
            layer.conv.kernel.assign(V[f"atr{name[7]}"][:, :, :, row, :])
        elif name == "skip_connect" and stride == 2:
            layer.conv.kernel.assign(V["skip_stride"][:, :, :, consumer * C:(consumer + 1) * C])
        outs[name] = layer(x, training=True)
    return outs


@pytest.mark.parametrize("stride,state,filters,split,large", [
    (1, 0, 2, False, False), (1, 1, 2, False, True), (1, 2, 2, False, False), (2, 0, 2, False, True),
    (2, 0, 2, False, False), (1, 0, 16, False, True), (1, 0, 2, True, True), (2, 1, 2, True, False)])
def test_fast_mixed_op_equals_weighted_sum_of_official_ops(stride, state, filters, split, large,
                                                           monkeypatch):
    """Every form the supernet picks by size: split (separable 3x3 and 5x5 as one shared 5x5 conv or
    one conv each), large (maps >= LARGE_MAP_SIZE: repeat inside the depthwise op, pools weighted by
    a 1x1 conv when C < 32; PER_OUTPUT_BN_MIN_SIZE: one BN per conv output; filters 2 -> C = 4,
    16 -> C = 32)."""
    monkeypatch.setattr(supernet, "LARGE_MAP_SIZE", 1 if large else 10 ** 6)
    monkeypatch.setattr(supernet, "PER_OUTPUT_BN_MIN_SIZE", 1 if large else 10 ** 6)
    net = _tiny(filter_multiplier=filters)
    l, v = 2, 1  # has a downsample direction -> skip_stride exists
    assert any(k == trellis.DOWN for _, k in trellis.incoming(l, v))
    V = {k: tf.convert_to_tensor(t) for k, t in net.node_variables(l, v).items()}
    C = net.config.filter_multiplier * 2 ** v
    rng = np.random.default_rng(state)
    alpha = rng.standard_normal((decode.num_edges(2), 8)).astype(np.float32)
    probs = tf.gather(tf.nn.softmax(alpha), net.perm)
    w = net.state_weights(probs)[state]
    size = 9 if stride == 1 else 17
    xs = [tf.constant(rng.standard_normal((2, size, size, C)).astype(np.float32))
          for _ in range(1 if stride == 2 else 2)]
    G = len(xs)
    fast = net.mixed_ops(tf.concat(xs, -1), G, C, net.cell_kernels(V)[state], w, stride=stride,
                         skip_kernel=V["skip_stride"], split_separable=split).numpy()  # [N,h,w,G,n,C]
    r0, r1 = net.ranges[state]
    assert fast.shape[3:] == (G, r1 - r0, C)
    for g, x in enumerate(xs):  # each direction on its own: per-direction BN statistics
        for m, row in enumerate(range(r0, r1)):
            edge = net.perm[row]
            outs = _faithful_ops(V, row, C, x, stride, m)
            ref = sum(float(tf.nn.softmax(alpha)[edge, OPS.index(k)]) * o for k, o in outs.items())
            np.testing.assert_allclose(fast[:, :, :, g, m, :], ref.numpy(), rtol=1e-4, atol=2e-5)


def test_gradients_reach_alpha_beta_and_weights():
    net = _tiny()
    x = tf.random.stateless_uniform([2, 33, 33, 3], [1, 2], 0, 255)
    y = tf.random.stateless_uniform([2, 33, 33, 1], [3, 4], 0, 3, tf.int32)
    with tf.GradientTape() as tape:
        logits = net(x)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y[..., 0], logits))
    assert logits.shape == (2, 33, 33, 3)
    grads = tape.gradient(loss, net.weight_variables + net.arch_variables)
    names = list(net.vars) + ["alpha", "beta"]
    missing = [n for n, g in zip(names, grads) if g is None or not np.any(g.numpy() != 0)]
    assert not missing, missing
    gb = grads[-1].numpy()
    mask = trellis.valid_mask(3)
    # every existing transition gets a gradient, nothing else does
    assert np.all(gb[mask] != 0) and np.all(gb[~mask] == 0)


def test_beta_is_used_normalised_in_forward():
    """Shifting all outgoing logits of a source node equally changes nothing (softmax per node)."""
    net = _tiny()
    x = tf.random.stateless_uniform([2, 33, 33, 3], [5, 6], 0, 255)
    y0 = net(x).numpy()
    net.beta.assign_add(tf.constant(np.ones((3, 4, 3), np.float32) * 0.7))
    np.testing.assert_allclose(net(x).numpy(), y0, rtol=1e-4, atol=1e-5)
    b = net.beta.numpy()
    b[2, 1, 0] += 1.0  # an actual change of one transition's probability
    net.beta.assign(b)
    assert np.abs(net(x).numpy() - y0).max() > 1e-4


def test_paper_size_supernet_builds():
    """L=12, B=5, F=8 (paper): 45 nodes; records the parameter count (no timing assertion)."""
    net = supernet.Supernet(supernet.SupernetConfig(num_classes=19))
    assert len(net.nodes) == 45
    assert net.alpha.shape == (20, 8) and net.beta.shape == (12, 4, 3)
    count = net.parameter_count()
    print(f"paper-size supernet weights: {count:,}")
    assert count == 47_040_252
    assert net.parameter_count("arch") == 20 * 8 + 12 * 4 * 3
    assert not set(map(id, net.weight_variables)) & set(map(id, net.arch_variables))


@pytest.mark.parametrize("options", [dict(recompute=True), dict(recompute_levels=(0,)),
                                     dict(inline=True), dict(recompute_cheap_ops=True)])
def test_memory_and_counting_options_give_the_same_loss_and_gradients(options):
    """Recomputing all nodes or only level 0 in the backward pass, recomputing the cheap ops
    (depthwise outputs, pool mixes, direction sums), and tracing the nodes inline (the FLOP-counting
    path), compute what the default path computes."""
    x = tf.random.stateless_uniform([2, 33, 33, 3], [1, 2], 0, 255)
    y = tf.random.stateless_uniform([2, 33, 33], [3, 4], 0, 3, tf.int32)
    results = []
    for opts in ({}, options):
        inline = opts.get("inline", False)
        cfg = {k: v for k, v in opts.items() if k != "inline"}
        net = supernet.Supernet(supernet.SupernetConfig(num_classes=3, num_layers=2, num_blocks=2,
                                                        filter_multiplier=2, **cfg), seed=1)

        @tf.function(autograph=False)
        def f():
            with tf.GradientTape() as tape:
                logits = net(x, inline_nodes=inline)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            return loss, tape.gradient(loss, net.weight_variables + net.arch_variables)

        loss, grads = f()
        results.append((float(loss), [g.numpy() for g in grads]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _saved_for_backward(net, x):
    """{op type: bytes} of the tensors the node functions keep for the backward pass (the extra
    outputs of their rewritten forward functions, followed through buffer aliases)."""
    @tf.function(autograph=False)
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(net(x)))
        return tape.gradient(loss, net.weight_variables + net.arch_variables)

    graph = step.get_concrete_function(x).graph
    saved = {}
    for name, fn in graph._functions.items():  # noqa: SLF001 - the traced function library
        if not name.startswith("__forward_") or getattr(fn, "graph", None) is None:
            continue
        for t in fn.graph.outputs[1:]:          # output 0 is the node's state
            while t.op.type in ("IdentityN", "Identity", "Reshape"):
                t = t.op.inputs[t.value_index if t.op.type == "IdentityN" else 0]
            saved[t.op.type] = saved.get(t.op.type, 0) + t.dtype.size * (t.shape.num_elements() or 0)
    return saved


@pytest.mark.parametrize("large", [False, True])
def test_recompute_cheap_ops_keeps_no_depthwise_output_or_stacked_pools(large, monkeypatch):
    """What recompute_cheap_ops is for: the node functions no longer keep the separable ops'
    depthwise outputs, the copies of the input they repeat, or the stacked pools / directions
    (alpha's and beta's gradients rebuild them), on both map-size forms."""
    monkeypatch.setattr(supernet, "LARGE_MAP_SIZE", 1 if large else 10 ** 6)
    x = tf.random.stateless_uniform([2, 33, 33, 3], [1, 2], 0, 255)
    saved = {}
    for on in (False, True):
        net = supernet.Supernet(supernet.SupernetConfig(num_classes=3, num_layers=2, num_blocks=2,
                                                        filter_multiplier=2, recompute_cheap_ops=on), seed=1)
        saved[on] = _saved_for_backward(net, x)
    assert saved[False].get("DepthwiseConv2dNative", 0) > 0 and saved[False].get("Pack", 0) > 0
    assert "DepthwiseConv2dNative" not in saved[True] and "Pack" not in saved[True]
    if not large:  # small maps copy the separable input first unless the cheap ops are recomputed
        assert saved[False].get("Tile", 0) > saved[True].get("Tile", 0)
    assert sum(saved[True].values()) < sum(saved[False].values())  # tiny here; 0.66x at crop 321, paper size


def test_recompute_cheap_ops_defaults_to_16_bit_compute_only():
    assert not supernet.SupernetConfig(num_classes=3).recomputes_cheap_ops
    assert supernet.SupernetConfig(num_classes=3, compute_dtype="bfloat16").recomputes_cheap_ops
    assert supernet.SupernetConfig(num_classes=3, compute_dtype="float16").recomputes_cheap_ops
    assert not supernet.SupernetConfig(num_classes=3, compute_dtype="bfloat16",
                                       recompute_cheap_ops=False).recomputes_cheap_ops
