"""Shared fixtures for training tests (helpers live in training_fixtures.py)."""

import os

import pytest

from training_fixtures import tiny_architecture, tiny_train_config
from nas_deeplab.training.model_config import ModelConfig


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    from nas_deeplab.data import synthetic
    d = str(tmp_path_factory.mktemp("data") / "synthetic")
    synthetic.build(d, num_train=8, num_val=3)
    return d


@pytest.fixture(scope="session")
def tiny_arch_path(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("arch") / "tiny.json")
    tiny_architecture().save(p)
    return p


@pytest.fixture(scope="session")
def tiny_model_config(tiny_arch_path):
    return ModelConfig(architecture=tiny_arch_path, atrous_rates=(2,), decoder_output_stride=None)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_model_config, synthetic_dir):
    """6 deterministic steps on the TFRecord pipeline; keeps ckpt-3 and ckpt-6."""
    from nas_deeplab.training.trainer import train
    logdir = tmp_path_factory.mktemp("runs") / "straight"
    result = train(tiny_train_config(logdir, tiny_model_config, synthetic_dir, max_to_keep=5))
    assert os.path.basename(result.checkpoint) == "ckpt-6"
    return result
