"""An independent TF1-graph re-statement of the official hnasnet DeepLab forward pass (inference).

Written from the spec (`shared/spec/official-hnasnet.md` sections 1-3), not from our Keras code:
`tf.compat.v1` graph, variables created by `tf.compat.v1.get_variable` under the official scopes and
restored by a TF1 `Saver` from an official-format checkpoint (so every variable the official graph
creates must exist there with the right shape), static shapes as the official code requires, TF1
`resize_bilinear(align_corners=True)`, slim's explicit padding for strided convs, fused BN.
"""

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1

BACKBONE_EPS = 1e-3
HEAD_EPS = 1e-5


def _var(name, shape):
    return v1.get_variable(name, shape=shape, dtype=tf.float32, trainable=False,
                           initializer=v1.zeros_initializer())


def _bn(x, scope, eps):
    c = x.shape[-1]
    with v1.variable_scope(scope):
        gamma, beta = _var("gamma", [c]), _var("beta", [c])
        mean, var = _var("moving_mean", [c]), _var("moving_variance", [c])
    y, _, _ = v1.nn.fused_batch_norm(x, gamma, beta, mean, var, epsilon=eps, is_training=False)
    return y


def _resize(x, size):
    return v1.image.resize_bilinear(x, size, align_corners=True)


def _scale_dim(d, s):
    return int((float(d) - 1.0) * s + 1.0)


def _fixed_pad(x, k, rate=1):
    k_eff = k + (k - 1) * (rate - 1)
    beg = (k_eff - 1) // 2
    end = k_eff - 1 - beg
    return tf.pad(x, [[0, 0], [beg, end], [beg, end], [0, 0]])


def _conv(x, scope, k, filters, stride=1, rate=1):
    """slim.conv2d (no bias) via resnet_utils.conv2d_same."""
    with v1.variable_scope(scope):
        w = _var("weights", [k, k, int(x.shape[-1]), filters])
    if stride == 1:
        return tf.nn.conv2d(x, w, strides=1, padding="SAME", dilations=rate)
    return tf.nn.conv2d(_fixed_pad(x, k, rate), w, strides=stride, padding="VALID", dilations=rate)


def _sep(x, scope, k, filters, stride=1):
    """slim.separable_conv2d with num_outputs (one scope, depthwise + pointwise, nothing between)."""
    c = int(x.shape[-1])
    with v1.variable_scope(scope):
        dw, pw = _var("depthwise_weights", [k, k, c, 1]), _var("pointwise_weights", [1, 1, c, filters])
    if stride == 1:
        return tf.nn.separable_conv2d(x, dw, pw, [1, 1, 1, 1], "SAME")
    return tf.nn.separable_conv2d(_fixed_pad(x, k), dw, pw, [1, stride, stride, 1], "VALID")


def _op(x, name, fs, stride):
    if name.startswith("separable"):
        k = int(name.split("x")[0][-1])
        for n in (1, 2):
            x = tf.nn.relu(x)
            x = _sep(x, f"separable_{k}x{k}_{n}", k, fs, stride)
            x = _bn(x, f"bn_sep_{k}x{k}_{n}", BACKBONE_EPS)
            stride = 1
        return x
    if name.startswith("atrous"):
        k = int(name.split("x")[0][-1])
        x = tf.nn.relu(x)
        if stride == 2:
            h, w = int(x.shape[1]), int(x.shape[2])
            x = _resize(x, [_scale_dim(h, 0.5), _scale_dim(w, 0.5)])
            x = _conv(x, f"atrous_{k}x{k}", k, fs, 1, 1)
        else:
            x = _conv(x, f"atrous_{k}x{k}", k, fs, 1, 2)
        return _bn(x, f"bn_atr_{k}x{k}", BACKBONE_EPS)
    raise NotImplementedError(name)


def _cell(net, prev, fs, stride, operations, indices):
    if net.shape[2] != prev.shape[2]:
        prev = _resize(prev, tf.shape(net)[1:3])
        prev.set_shape([None, net.shape[1], net.shape[2], None])
    if fs != prev.shape[3]:
        prev = _bn(_conv(tf.nn.relu(prev), "prev_1x1", 1, fs), "prev_bn", BACKBONE_EPS)
    net = _bn(_conv(tf.nn.relu(net), "1x1", 1, fs), "beginning_bn", BACKBONE_EPS)
    states = [net, prev]
    for b in range(len(operations) // 2):
        with v1.variable_scope(f"comb_iter_{b}"):
            outs = []
            for side, j in (("left", 2 * b), ("right", 2 * b + 1)):
                idx = indices[j]
                s = stride if idx < 2 else 1
                with v1.variable_scope(side):
                    outs.append(_op(states[idx], operations[j], fs, s))
            states.append(outs[0] + outs[1])
    return tf.concat(states[2:], axis=3)


def hnasnet(images, arch):
    """End points {'Stem', 'Cell_i', 'features'} for images in [-1, 1] with a static size."""
    ends = {}
    with v1.variable_scope("hnasnet"):
        x = tf.nn.relu(_bn(_conv(images, "conv0", 3, 64, 2), "conv0_bn", BACKBONE_EPS))
        c0 = _bn(_conv(x, "conv1", 3, 64), "conv1_bn", BACKBONE_EPS)
        net = _bn(_conv(tf.nn.relu(c0), "conv2", 3, 128, 2), "conv2_bn", BACKBONE_EPS)
        ends["Stem"] = net
        outputs = [c0, net]
        scaling = 1.0
        for i, level in enumerate(arch.backbone):
            stride = 1
            if i == 0:
                if level == 1:
                    stride, scaling = 2, scaling * 2
            elif level == arch.backbone[i - 1] + 1:
                stride, scaling = 2, scaling * 2
            elif level == arch.backbone[i - 1] - 1:
                h, w = int(net.shape[1]), int(net.shape[2])
                net = _resize(net, [_scale_dim(h, 2), _scale_dim(w, 2)])
                scaling /= 2
            with v1.variable_scope(f"cell_{i}"):
                net = _cell(net, outputs[-2], int(arch.filter_multiplier * scaling), stride,
                            arch.operations, arch.hiddenstate_indices)
            outputs.append(net)
            ends[f"Cell_{i}"] = net
        ends["features"] = tf.nn.relu(net)
    return ends


def _conv_bn_relu(x, scope, filters):
    return tf.nn.relu(_bn(_conv(x, scope, 1, filters), f"{scope}/BatchNorm", HEAD_EPS))


def _split_sep(x, scope, filters, rate):
    c = int(x.shape[-1])
    with v1.variable_scope(scope + "_depthwise"):
        dw = _var("depthwise_weights", [3, 3, c, 1])
    x = tf.nn.depthwise_conv2d(x, dw, [1, 1, 1, 1], "SAME", dilations=[rate, rate])
    x = tf.nn.relu(_bn(x, scope + "_depthwise/BatchNorm", HEAD_EPS))
    return _conv_bn_relu(x, scope + "_pointwise", filters)


def _regular_3x3(x, scope, filters, rate):
    """aspp_with_separable_conv / decoder_use_separable_conv = False: slim conv 3x3 (+ BN, ReLU)."""
    with v1.variable_scope(scope):
        w = _var("weights", [3, 3, int(x.shape[-1]), filters])
    x = tf.nn.conv2d(x, w, 1, "SAME", dilations=rate)
    return tf.nn.relu(_bn(x, scope + "/BatchNorm", HEAD_EPS))


def deeplab_logits(raw_images, arch, num_classes, atrous_rates=(12, 24, 36), decoder_end_point="Cell_2",
                   output_stride=8, decoder_stride=4, separable_heads=True):
    """Official model.predict_labels path (ASPP, image pooling, decoder), logits upsampled to
    the input size; `raw_images` are 0..255 floats of a static 32k+1 size. separable_heads=False: the
    regular-conv ASPP and decoder (used by bench/run.py for a same-machine baseline)."""
    head = _split_sep if separable_heads else _regular_3x3
    crop_h, crop_w = int(raw_images.shape[1]), int(raw_images.shape[2])
    ends = hnasnet((2.0 / 255.0) * raw_images - 1.0, arch)
    features = ends["features"]
    ph, pw = _scale_dim(crop_h, 1.0 / output_stride), _scale_dim(crop_w, 1.0 / output_stride)
    pool = v1.nn.avg_pool2d(features, [1, ph, pw, 1], [1, 1, 1, 1], "VALID")
    pool = _resize(_conv_bn_relu(pool, "image_pooling", 256), [ph, pw])
    branches = [pool, _conv_bn_relu(features, "aspp0", 256)]
    for i, rate in enumerate(atrous_rates, 1):
        branches.append(head(features, f"aspp{i}", 256, rate))
    net = _conv_bn_relu(tf.concat(branches, 3), "concat_projection", 256)
    with v1.variable_scope("decoder"):
        low = _conv_bn_relu(ends[decoder_end_point], "feature_projection0", 48)
        dh, dw = _scale_dim(crop_h, 1.0 / decoder_stride), _scale_dim(crop_w, 1.0 / decoder_stride)
        net = tf.concat([_resize(net, [dh, dw]), _resize(low, [dh, dw])], 3)
        # separable: split_separable_conv2d scopes decoder_conv0, decoder_conv1; regular: slim.repeat(2,
        # conv2d, scope='decoder_conv0') creates decoder_conv0/decoder_conv0_1 and .../decoder_conv0_2.
        scopes = (("decoder_conv0", "decoder_conv1") if separable_heads
                  else ("decoder_conv0/decoder_conv0_1", "decoder_conv0/decoder_conv0_2"))
        for scope in scopes:
            net = head(net, scope, 256, 1)
    with v1.variable_scope("logits/semantic"):
        w, b = _var("weights", [1, 1, 256, num_classes]), _var("biases", [num_classes])
    logits = tf.nn.conv2d(net, w, 1, "SAME") + b
    ends["logits"] = _resize(logits, [crop_h, crop_w])
    return ends


def run_reference(checkpoint_prefix, images, arch, num_classes, **kw):
    """numpy end points of the reference graph with weights restored by name from the checkpoint."""
    images = np.asarray(images, np.float32)
    with tf.Graph().as_default():
        x = v1.placeholder(tf.float32, images.shape)
        ends = deeplab_logits(x, arch, num_classes, **kw)
        saver = v1.train.Saver(var_list={v.op.name: v for v in v1.global_variables()})
        with v1.Session() as sess:
            saver.restore(sess, checkpoint_prefix)
            return sess.run(ends, {x: images}), sorted(v.op.name for v in v1.global_variables())
