"""The model's L2 loss is the official slim set, times wd / 2 (slim.l2_regularizer).

Which variables the official graph regularises (spec official-hnasnet.md 1.5, 1.6, 3.4), as a rule on
the official names, written here independently of the model code:
* every conv `weights` (stem, cells, 1x1s, atrous, ASPP, image pooling, concat projection, decoder,
  logits) and every `pointwise_weights`;
* backbone `depthwise_weights` (separable_conv2d_same with regularize_depthwise=True);
* NOT the heads' depthwise weights (utils.split_separable_conv2d: no regulariser), NOT BN
  gamma/beta/moving statistics, NOT biases.
Every variable gets a random value first (zero-initialised biases and BN betas would hide a wrong
inclusion), then the loss and its gradient are compared with the rule, variable by variable.
"""

import numpy as np
import pytest
import tensorflow as tf

import spec_tables
from nas_deeplab import architecture
from nas_deeplab.model.deeplab import ModelOptions, build_deeplab
from nas_deeplab.official.names import official_variable_map

WEIGHT_DECAY = 1e-3


def officially_regularised(name):
    if name.endswith("/weights") or name.endswith("/pointwise_weights"):
        return True
    if name.endswith("/depthwise_weights"):
        return name.startswith("hnasnet/")
    return False  # BN (gamma, beta, moving_*), biases


def test_the_rule_matches_the_official_backbone_counts():
    """Spec 2.1: the backbone has 399 weight tensors (63 conv + 336 depthwise/pointwise), all
    regularised, and nothing else is."""
    names = [n for n, _ in spec_tables.official_vars("official_hnasnet_vars_f20.tsv")]
    assert sum(officially_regularised(n) for n in names) == 399
    full = [n for n, _ in spec_tables.official_vars("official_deeplab_hnasnet_full_vars_f20.tsv")]
    head_depthwise = [n for n in full if n.endswith("depthwise_weights") and not n.startswith("hnasnet/")]
    assert len(head_depthwise) == 5  # aspp1..3 + decoder_conv0/1: excluded


@pytest.mark.parametrize("separable", [True, False], ids=["separable_heads", "regular_heads"])
def test_regularisation_loss_is_the_official_set_times_wd_over_2(separable):
    arch = architecture.Architecture(architecture.PUBLISHED_OPERATIONS,
                                     architecture.PUBLISHED_HIDDENSTATE_INDICES, (0, 0, 1, 2, 1),
                                     filter_multiplier=2)
    model = build_deeplab(arch, ModelOptions(
        num_classes=3, aspp_convs_filters=8, decoder_filters=8, weight_decay=WEIGHT_DECAY,
        aspp_with_separable_conv=separable, decoder_use_separable_conv=separable))
    names = official_variable_map(model)
    assert len(names) == len(model.variables)  # every variable has its official name
    if separable:
        assert any(n.endswith("depthwise_weights") and not n.startswith("hnasnet/") for n in names)
    assert any(n.endswith("/biases") for n in names) and any(n.endswith("/gamma") for n in names)

    rng = np.random.RandomState(0)
    for var in model.variables:
        var.assign(rng.uniform(0.5, 1.5, var.shape).astype(np.float32))
    expected = WEIGHT_DECAY / 2 * sum(float(np.sum(np.square(v.numpy().astype(np.float64))))
                                      for n, v in names.items() if officially_regularised(n))
    by_id = {id(v): n for n, v in names.items()}
    trainable = model.trainable_variables
    with tf.GradientTape() as tape:
        total = tf.add_n(model.losses)
    assert float(total) == pytest.approx(expected, rel=1e-6)
    grads = tape.gradient(total, trainable)
    regularised = 0
    for var, grad in zip(trainable, grads):
        name = by_id[id(var)]
        if officially_regularised(name):
            regularised += 1
            assert grad is not None, name
            np.testing.assert_allclose(grad.numpy(), WEIGHT_DECAY * var.numpy(), rtol=1e-5, err_msg=name)
        else:
            assert grad is None or not np.any(grad.numpy()), name
    assert regularised == sum(map(officially_regularised, names))
