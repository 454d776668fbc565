"""The op table: official semantics, explicit padding on strided convs, consistent shapes."""

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab.training.distribute import make_strategy

from nas_deeplab import resize
from nas_deeplab.architecture import OP_VOCABULARY
from nas_deeplab.model import layers, operations


def _x(shape, seed=0):
    return tf.random.stateless_normal(shape, seed=[seed, 1])


def test_strided_separable_conv_uses_explicit_padding():
    conv = layers.separable_conv(6, 3, stride=2)
    x = _x((2, 8, 8, 4))          # even size: explicit (1,1) padding differs from SAME's (0,1)
    y = conv(x)
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    manual = tf.nn.separable_conv2d(padded, conv.depthwise_kernel, conv.pointwise_kernel,
                                    strides=[1, 2, 2, 1], padding="VALID")
    np.testing.assert_allclose(y.numpy(), manual.numpy(), atol=1e-5)
    same = tf.nn.separable_conv2d(x, conv.depthwise_kernel, conv.pointwise_kernel,
                                  strides=[1, 2, 2, 1], padding="SAME")
    assert same.shape == y.shape and not np.allclose(same.numpy(), y.numpy(), atol=1e-3)
    # The functional primitive the supernet uses is the same math.
    np.testing.assert_allclose(operations.separable_conv(x, conv.depthwise_kernel,
                                                         conv.pointwise_kernel, 2).numpy(),
                               y.numpy(), atol=1e-6)


def test_strided_5x5_separable_and_stem_conv_padding():
    conv = layers.separable_conv(3, 5, stride=2)
    x = _x((1, 10, 10, 3), seed=2)
    padded = tf.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]])
    y = conv(x)
    manual = tf.nn.separable_conv2d(padded, conv.depthwise_kernel, conv.pointwise_kernel,
                                    strides=[1, 2, 2, 1], padding="VALID")
    np.testing.assert_allclose(y.numpy(), manual.numpy(), atol=1e-5)
    stem = layers.conv(8, 3, stride=2)
    y = stem(x)
    manual = tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), stem.kernel, 2, "VALID")
    np.testing.assert_allclose(y.numpy(), manual.numpy(), atol=1e-5)
    assert stem.kernel.shape == (3, 3, 3, 8) and stem.bias is None


def test_atrous_op_math():
    x = _x((1, 8, 8, 4), seed=3)
    op = operations.make_op("atrous_3x3", 4, stride=1)
    op(x)   # build
    bn_scale = 1.0 / np.sqrt(1.0 + layers.BACKBONE_BN_EPSILON)   # fresh BN in inference mode
    manual = tf.nn.conv2d(tf.nn.relu(x), op.conv.kernel, 1, "SAME", dilations=2) * bn_scale
    np.testing.assert_allclose(op(x).numpy(), manual.numpy(), atol=1e-5)
    op2 = operations.make_op("atrous_5x5", 4, stride=2)
    y = op2(x)
    assert y.shape == (1, 4, 4, 4)   # scale_dimension(8, 0.5) = int(7 * 0.5 + 1) = 4
    small = resize.resize_bilinear(tf.nn.relu(x), (4, 4))
    manual = tf.nn.conv2d(small, op2.conv.kernel, 1, "SAME") * bn_scale
    np.testing.assert_allclose(y.numpy(), manual.numpy(), atol=1e-5)
    np.testing.assert_allclose(operations.atrous_conv(tf.nn.relu(x), op2.conv.kernel, 2).numpy()
                               * bn_scale, y.numpy(), atol=1e-5)


def test_pool_and_skip_ops():
    x = _x((1, 5, 5, 3), seed=4)
    avg = operations.make_op("avg_pool_3x3", 3, stride=1)(x)
    # SAME average pooling excludes the padding: the corner is the mean of 4 values.
    assert float(avg[0, 0, 0, 0]) == pytest.approx(float(tf.reduce_mean(x[0, :2, :2, 0])), abs=1e-6)
    mx = operations.make_op("max_pool_3x3", 3, stride=2)(x)
    assert mx.shape == (1, 3, 3, 3)
    skip = operations.make_op("skip_connect", 3, stride=1)
    np.testing.assert_array_equal(skip(x).numpy(), x.numpy())
    assert not skip.weights
    skip2 = operations.make_op("skip_connect", 3, stride=2)
    y = skip2(x)
    bn_scale = 1.0 / np.sqrt(1.0 + layers.BACKBONE_BN_EPSILON)
    manual = tf.nn.conv2d(tf.nn.relu(x)[:, ::2, ::2], skip2.conv.kernel, 1, "VALID") * bn_scale
    np.testing.assert_allclose(y.numpy(), manual.numpy(), atol=1e-5)
    assert skip2.conv.name == "1x1" and skip2.bn.name == "bn_1"


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("name", [n for n in OP_VOCABULARY if n != "zero"])
def test_every_op_keeps_channels_and_halves_consistently(name, size):
    x = _x((2, size, size, 4), seed=5)
    for stride in (1, 2):
        y = operations.make_op(name, 4, stride=stride)(x, training=False)
        expected = size if stride == 1 else (size + 1) // 2
        assert tuple(y.shape) == (2, expected, expected, 4), (name, stride)


def test_separable_op_is_two_stacked_layers_with_stride_on_first():
    op = operations.make_op("separable_5x5_2", 4, stride=2)
    op(_x((1, 9, 9, 4)))
    assert [c.name for c in op.convs] == ["separable_5x5_1", "separable_5x5_2"]
    assert [b.name for b in op.bns] == ["bn_sep_5x5_1", "bn_sep_5x5_2"]
    assert [c.stride for c in op.convs] == [2, 1]
    assert op.convs[0].depthwise_kernel.shape == (5, 5, 4, 1)
    assert op.convs[0].pointwise_kernel.shape == (1, 1, 4, 4)
    assert all(b.momentum == pytest.approx(0.9997) and b.epsilon == pytest.approx(1e-3)
               for b in op.bns)
    # Both depthwise and pointwise weights carry the slim L2 regulariser when weight decay is set.
    reg = operations.make_op("separable_3x3_2", 4, weight_decay=4e-5)
    reg(_x((1, 5, 5, 4)))
    assert len(reg.losses) == 4


def test_zero_and_unknown_ops_are_rejected():
    with pytest.raises(ValueError, match="search-only"):
        operations.make_op("zero", 4)
    with pytest.raises(ValueError, match="unknown operation"):
        operations.make_op("conv_7x7", 4)


def test_slim_l2_and_variance_scaling_init():
    conv = layers.conv(16, 3, weight_decay=4e-5)
    conv(_x((1, 5, 5, 8)))
    w = conv.kernel.numpy()
    # slim l2_regularizer(wd) = wd * sum(w^2) / 2.
    assert float(conv.losses[0]) == pytest.approx(4e-5 * np.sum(w ** 2) / 2, rel=1e-5)
    # VarianceScaling(1/3, fan_in, uniform): U(-sqrt(1/fan_in), sqrt(1/fan_in)), fan_in = 3*3*8.
    limit = np.sqrt(1.0 / 72)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.8 * limit


def test_sync_batch_norm_op_under_mirrored_strategy():
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs 2 logical CPU devices (tests/conftest.py configures them)")

    class Opts:
        sync_batch_norm = True
        fine_tune_batch_norm = True

    strategy = make_strategy("mirrored")  # one per process: see distribute.make_strategy
    with strategy.scope():
        op = operations.make_op("atrous_3x3", 4, options=Opts())
        op.build((None, None, None, 4))
    assert op.bn.synchronized
    x0, x1 = _x((2, 5, 5, 4), seed=7), _x((2, 5, 5, 4), seed=8) + 3.0

    @tf.function
    def run():
        def replica():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            return op(tf.where(tf.equal(rid, 0), x0, x1), training=True)
        return strategy.run(replica)

    outs = [t.numpy() for t in strategy.experimental_local_results(run())]
    # With statistics over both replicas, neither replica's output is zero-mean on its own,
    # but the two together are.
    both = np.concatenate(outs)
    np.testing.assert_allclose(both.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    assert np.abs(outs[0].mean(axis=(0, 1, 2))).max() > 1e-2
