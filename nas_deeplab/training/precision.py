"""--mixed_precision: the names, what each needs, and the Keras dtype policy a model is built under.

One place for train.py, eval.py and search.py. Mixed policies keep float32 variables (so checkpoints
are the same in every precision) and compute in 16 bits; BN statistics, softmaxes and losses stay
float32 (`model/layers.py` BatchNorm, `model/inference.py`).
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from nas_deeplab.model import serialization

MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")
COMPUTE_DTYPE = {"none": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


def validate(name: str, flag: str = "mixed_precision") -> None:
    if name not in MIXED_PRECISION:
        raise ValueError(f"--{flag}: choose one of {list(MIXED_PRECISION)}, got {name!r}")


def check_trainable_here(name: str) -> None:
    """float16 training needs a GPU: TF 2.21's CPU kernels cannot differentiate float16 dilated convs
    (every atrous op and ASPP branch)."""
    if name == "mixed_float16" and not tf.config.list_logical_devices("GPU"):
        raise ValueError("--mixed_precision=mixed_float16 needs a GPU (TF's CPU kernels cannot "
                         "differentiate float16 dilated convs); on CPU use mixed_bfloat16 or none")


@contextlib.contextmanager
def policy(name: str):
    """Build Keras layers under `name` ("none" = float32); the previous global policy comes back after."""
    validate(name)
    with keras_policy("float32" if name == "none" else name):
        yield


@contextlib.contextmanager
def keras_policy(name: str):
    """Build Keras layers under any Keras dtype policy (also the pure "bfloat16" / "float16" a 16-bit
    export uses); the previous global policy comes back after."""
    with serialization.policy_scope(name):
        yield
