"""Test-session setup: two logical CPU devices so MirroredStrategy paths run with 2 replicas on CI."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from nas_deeplab.training.distribute import configure_logical_cpus  # noqa: E402

configure_logical_cpus(2)
