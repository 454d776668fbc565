"""Mean-preserving 16-bit weight rounding (export/rounding.py): the neighbours against every 16-bit value,
the balancing against the shift it removes, and each folded conv of a small model run for real."""

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab import architecture
from nas_deeplab.export import bn_folding, rounding
from nas_deeplab.model import layers
from nas_deeplab.model.deeplab import ModelOptions, build_deeplab

from export_testlib import randomize


def _all_values(precision):
    """Every finite value of the 16-bit type, sorted (float64)."""
    bits = np.arange(2 ** 16, dtype=np.uint32)
    v = (bits << np.uint32(16)).view(np.float32) if precision == "bfloat16" else bits.astype(np.uint16).view(np.float16)
    v = v[np.isfinite(v)].astype(np.float64)
    return np.unique(v)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_neighbours_are_the_two_16_bit_values_around_each_value(precision):
    rng = np.random.default_rng(0)
    w = (rng.normal(size=4000) * 10.0 ** rng.uniform(-4, 2, 4000)).astype(np.float32)
    w[:3] = [0.0, 1.0, -0.5]   # exactly representable
    near, other = rounding.neighbours(w, precision)
    grid = _all_values(precision)
    hi_index = np.searchsorted(grid, w.astype(np.float64), side="left")
    lo, hi = grid[np.maximum(hi_index - 1, 0)], grid[hi_index]
    exact = grid[hi_index] == w
    assert np.array_equal(near[exact], w[exact]) and np.array_equal(other[exact], w[exact])
    inexact = ~exact
    pair = np.sort(np.stack([near, other]), axis=0)[:, inexact]
    np.testing.assert_array_equal(pair[0], lo[inexact])
    np.testing.assert_array_equal(pair[1], hi[inexact])
    # nearest is what TF's cast gives (round to nearest even)
    dtype = {"bfloat16": tf.bfloat16, "float16": tf.float16}[precision]
    np.testing.assert_array_equal(near, tf.cast(tf.cast(w, dtype), tf.float64).numpy())


def _shift(q, w, a, qb=None, b=None):
    s = ((np.asarray(q, np.float64) - w) * a).sum(0)
    return s if qb is None else s + (np.asarray(qb, np.float64) - b)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_balance_removes_the_mean_shift_keeping_every_weight_at_a_neighbour(precision):
    rng = np.random.default_rng(1)
    J, O = 300, 40
    w = rng.normal(0, 0.05, (J, O)).astype(np.float32)
    a = rng.uniform(0.0, 2.0, (J, 1))               # ReLU'd inputs: positive means
    b = rng.normal(0, 1.0, O).astype(np.float32)
    q, qb = rounding.balance(w, a, precision, b)
    near_w, other_w = rounding.neighbours(w, precision)
    near_b, other_b = rounding.neighbours(b, precision)
    assert ((q == near_w) | (q == other_w)).all() and ((qb == near_b) | (qb == other_b)).all()
    w64, b64 = w.astype(np.float64), b.astype(np.float64)
    before = np.abs(_shift(near_w, w64, a, near_b, b64))
    after = np.abs(_shift(q, w64, a, qb, b64))
    assert (after <= before).all()
    assert np.median(after / before) < 0.05, np.median(after / before)   # ~1 without the balancing
    # few weights leave their nearest value, and each of those by one step at most (checked above)
    assert (q != near_w).mean() < 0.2
    # without a bias, and with zero means (nothing to balance): nearest rounding
    q0, none = rounding.balance(w, np.zeros((J, 1)), precision)
    assert none is None and np.array_equal(q0, near_w)


def _small_model():
    arch = architecture.Architecture(("separable_5x5_2", "atrous_3x3", "separable_3x3_2", "max_pool_3x3"),
                                     (1, 0, 2, 0), (0, 1, 2, 1), 8, name="searched")
    # F=8: a pointwise kernel needs some inputs to balance over (at F=2 some have 4)
    model = build_deeplab(arch, ModelOptions(num_classes=3, aspp_convs_filters=16, decoder_filters=16))
    randomize(model, seed=2)   # BN statistics with offsets, so the folded biases are not zero
    rng = np.random.default_rng(2)
    images = [tf.constant(rng.uniform(0, 255, (1, 65, 65, 3)), tf.float32) for _ in range(2)]
    return model, images


def test_folded_convs_keep_their_mean_output_run_for_real():
    """Each folded conv of a searched model, on its real inputs, in float64: the per-channel mean output
    error of the rounded kernel and bias against the float32 ones, mean-preserving against nearest."""
    model, images = _small_model()
    inputs = {}
    with layers.observe_inputs(lambda layer, x: inputs.setdefault(layer.path, []).append(x.numpy())):
        for image in images:
            model(image, training=False)
    means = rounding.input_means(model, images)
    folded = bn_folding.folded_values(model)
    values = rounding.mean_preserving_values(model, means, "bfloat16", folded)
    r16 = lambda a: rounding.neighbours(a, "bfloat16")[0]  # noqa: E731
    err = {"nearest": [], "mean_preserving": []}
    wide = []
    layer_of = {}
    for l in model._flatten_layers():
        for name in ("kernel", "pointwise_kernel", "depthwise_kernel"):
            if isinstance(l, (layers.Conv2D, layers.SeparableConv2D, layers.DepthwiseConv2D)) and hasattr(l, name):
                layer_of.setdefault(id(getattr(l, name)), l)
    for p in bn_folding.conv_bn_pairs(model):
        layer = layer_of[id(p.kernel)]
        x = tf.constant(inputs[layer.path][0], tf.float64)

        def run(kernel, bias, depthwise=None):
            if isinstance(layer, layers.SeparableConv2D):
                y = layers.separable_conv2d_same(x, tf.constant(depthwise, tf.float64), tf.constant(kernel, tf.float64),
                                                 layer.stride, layer.rate)
            elif isinstance(layer, layers.DepthwiseConv2D):
                y = layers.depthwise_conv2d_same(x, tf.constant(kernel, tf.float64), layer.rate)
            else:
                y = layers.conv2d_same(x, tf.constant(kernel, tf.float64), layer.stride, layer.rate)
            return (y + bias).numpy()
        k32, b32 = folded.kernels[p.kernel.path].astype(np.float64), folded.biases[p.bn.path].astype(np.float64)
        dk = getattr(layer, "depthwise_kernel", None)
        dk32 = None if dk is None or dk is p.kernel else dk.numpy().astype(np.float64)
        ref = run(k32, b32, dk32)
        scale = np.abs(ref).mean()
        near = run(r16(k32), r16(b32), None if dk32 is None else r16(dk32))
        bal = run(values[p.kernel.path], values[p.bn.beta.path],
                  None if dk32 is None else values[dk.path])
        err["nearest"].append(np.abs((near - ref).mean((0, 1, 2))).mean() / scale)
        err["mean_preserving"].append(np.abs((bal - ref).mean((0, 1, 2))).mean() / scale)
        wide.append(isinstance(layer, layers.Conv2D) and k32.shape[0] * k32.shape[1] * k32.shape[2] >= 64)
    n, m, wide = np.array(err["nearest"]), np.array(err["mean_preserving"]), np.array(wide)
    assert len(n) == len(bn_folding.conv_bn_pairs(model)) > 20 and wide.sum() >= 5
    # Convs with many inputs per output have the flips to cancel the shift (and the bias' error) ...
    assert np.median(m[wide] / n[wide]) < 0.2, np.median(m[wide] / n[wide])
    # ... narrow ones (8-32 pointwise inputs) less so; over all layers it is still well below nearest.
    assert m.mean() < 0.8 * n.mean(), (m.mean(), n.mean())
    # every value is representable: the 16-bit copy holds exactly these numbers
    for path, v in values.items():
        assert np.array_equal(tf.cast(tf.cast(v, tf.bfloat16), tf.float32).numpy(), v), path


def test_a_layer_the_calibration_never_reached_is_refused():
    model, images = _small_model()
    means = rounding.input_means(model, images)
    victim = next(iter(means))
    del means[victim]
    with pytest.raises(ValueError, match="never reached"):
        rounding.mean_preserving_values(model, means, "bfloat16", bn_folding.folded_values(model))
