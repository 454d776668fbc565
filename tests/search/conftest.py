"""Shared by the search tests."""

import pytest


@pytest.fixture(autouse=True)
def _restore_op_determinism():
    """--deterministic switches TF op determinism on process-wide; leave other tests unaffected."""
    from tensorflow.python.framework import config as tf_config  # no public "disable" API
    was_enabled = tf_config.is_op_determinism_enabled()
    yield
    if not was_enabled:
        tf_config.disable_op_determinism()
