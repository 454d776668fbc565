"""The cell: input handling, stride placement, drop-path placement, combine and concat."""

import numpy as np
import tensorflow as tf

from nas_deeplab.model import layers
from nas_deeplab.model.cell import Cell
from nas_deeplab.model.drop_path import StepRef

BN = 1.0 / np.sqrt(1.0 + layers.BACKBONE_BN_EPSILON)   # a fresh BN in inference mode


class _Opts:
    weight_decay = 0.0
    drop_path_keep_prob = 0.6
    total_training_steps = 100


def _x(shape, seed):
    return tf.random.stateless_normal(shape, seed=[seed, 3])


def test_stride_only_on_ops_reading_the_cell_inputs_and_drop_path_placement():
    ops = ("separable_3x3_2", "atrous_5x5", "skip_connect", "max_pool_3x3", "skip_connect",
           "avg_pool_3x3")
    idx = (0, 1, 2, 1, 3, 0)
    cell = Cell(ops, idx, filters=4, stride=2, net_channels=8, prev_channels=8, cell_num=3,
                total_num_cells=12, options=_Opts())
    strides = [(b.left.stride, b.right.stride) for b in cell.blocks]
    assert strides == [(2, 2), (1, 2), (1, 2)]
    # Drop path after every op except skip_connect (pools included), as the official cell.
    drops = [(b.left_drop is not None, b.right_drop is not None) for b in cell.blocks]
    assert drops == [(True, True), (False, True), (False, True)]
    y = cell(_x((2, 9, 9, 8), 1), _x((2, 9, 9, 8), 2), training=False)
    assert tuple(y.shape) == (2, 5, 5, 12)   # concat of 3 blocks x 4 filters, stride 2


def test_skip_cell_is_add_of_processed_inputs_and_concat_of_blocks():
    # Block 0: h0 + h1; block 1: h2 + h0. Output concat [h2, h3] (no ReLU).
    cell = Cell(("skip_connect", "skip_connect", "skip_connect", "skip_connect"), (0, 1, 2, 0),
                filters=3, stride=1, net_channels=5, prev_channels=6, cell_num=0, total_num_cells=1,
                options=_Opts())
    net, prev = _x((1, 9, 9, 5), 3), _x((1, 17, 17, 6), 4)   # prev at a different resolution
    y = cell(net, prev, training=False).numpy()
    assert cell.has_prev_1x1
    prev_r = layers.resize_bilinear(prev, (9, 9))
    h1 = tf.nn.conv2d(tf.nn.relu(prev_r), cell.prev_1x1.kernel, 1, "SAME") * BN
    h0 = tf.nn.conv2d(tf.nn.relu(net), cell.conv_1x1.kernel, 1, "SAME") * BN
    h2 = h0 + h1
    expected = tf.concat([h2, h2 + h0], axis=3).numpy()
    np.testing.assert_allclose(y, expected, atol=1e-5)
    assert y.min() < 0   # no ReLU on the cell output


def test_no_prev_1x1_when_channels_match_and_drop_path_in_training():
    step = StepRef(tf.Variable(100, dtype=tf.int64))
    cell = Cell(("avg_pool_3x3", "avg_pool_3x3"), (0, 1), filters=4, stride=1, net_channels=4,
                prev_channels=4, cell_num=11, total_num_cells=12, options=_Opts(), step_ref=step)
    assert not cell.has_prev_1x1
    net, prev = _x((64, 5, 5, 4), 5), _x((64, 5, 5, 4), 6)
    y_train = cell(net, prev, training=True).numpy()
    reference = Cell(("avg_pool_3x3", "avg_pool_3x3"), (0, 1), filters=4, stride=1, net_channels=4,
                     prev_channels=4, cell_num=11, total_num_cells=12, options=None)  # keep = 1
    reference(net, prev, training=False)
    reference.set_weights(cell.get_weights())
    y_ref = reference(net, prev, training=True).numpy()
    # Last cell at the end of training: keep = 0.6 for each op; per example both ops kept gives
    # y_ref / 0.6, both dropped gives 0, otherwise one branch only.
    both_kept = np.all(np.isclose(y_train, y_ref / 0.6, atol=1e-4), axis=(1, 2, 3))
    both_dropped = np.all(y_train == 0.0, axis=(1, 2, 3))
    assert 0 < both_kept.sum() < 64 and 0 < both_dropped.sum() < 64
    assert both_kept.sum() + both_dropped.sum() < 64
