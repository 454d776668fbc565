"""Helpers shared by the export tests: a tiny stand-in segmentation model and the TSV reader."""

import keras
import numpy as np
import spec_tables
import tensorflow as tf

from nas_deeplab import resize

read_tsv = spec_tables.official_vars  # [(name, shape tuple)], skips without ../shared/spec


class _ResizeLike(keras.layers.Layer):
    def call(self, x, ref):
        return resize.resize_bilinear(x, tf.shape(ref)[1:3])


def make_standin(num_classes=3, seed=0):
    """Raw 0..255 images -> logits at input size, like build_deeplab, with random non-trivial BN."""
    inp = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(2.0 / 255.0, -1.0)(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(num_classes, 1, name="logits")(x)
    model = keras.Model(inp, _ResizeLike()(x, inp))
    rng = np.random.RandomState(seed)
    for v in model.variables:
        value = rng.randn(*v.shape).astype(np.float32) * 0.5
        if "variance" in v.path:
            value = np.abs(value) + 0.5
        v.assign(value)
    return model


def standin_name_map(model):
    """An official-style {name: variable} map for the stand-in."""
    names = {"conv/kernel": "net/conv/weights", "bn/gamma": "net/bn/gamma", "bn/beta": "net/bn/beta",
             "bn/moving_mean": "net/bn/moving_mean", "bn/moving_variance": "net/bn/moving_variance",
             "logits/kernel": "logits/semantic/weights", "logits/bias": "logits/semantic/biases"}
    return {names[v.path]: v for v in model.variables}


def randomize(model, seed=0):
    """Non-trivial values everywhere (BN statistics and biases included), so a variable left at its
    initial value, or read from the wrong name, changes the outputs."""
    rng = np.random.RandomState(seed)
    for v in model.variables:
        leaf = v.path.rsplit("/", 1)[-1]
        if leaf in ("gamma", "moving_variance"):
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
        elif leaf in ("beta", "moving_mean", "biases", "bias"):
            v.assign(rng.uniform(-0.2, 0.2, v.shape).astype(np.float32))
        else:
            v.assign((v.numpy() * rng.uniform(0.5, 1.5, v.shape)).astype(np.float32))
    return model
