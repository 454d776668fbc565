"""Keras serialisation of the network: one registration package and plain-data constructor args.

Every layer of the final network is registered as `nas_deeplab>ClassName`, so
`keras.saving.load_model("m.keras")` finds it once `nas_deeplab` is imported (no custom_objects).
A layer's config holds only plain data: the `Architecture` as `Architecture.to_dict()`, the
`ModelOptions` as `ModelOptions.to_dict()`, initialisers and regularisers as Keras configs.
A composite layer rebuilds its sublayers from its own arguments (as its constructor always does), so
the variables of a reloaded layer are created in the same order under the same names and paths.

What a config does not carry: the drop-path step variable (`drop_path.StepRef`). It is training
state, not a weight (it is not in `model.variables`, nor in the .keras weights); a deserialised layer
or model gets a fresh step variable at 0. Inference never reads it (drop path and dropout are off
when training=False); to fine-tune a reloaded model with drop path, assign the step first
(`model.step_variable.assign(step)`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import types

import keras

from nas_deeplab.architecture import Architecture

PACKAGE = "nas_deeplab"


def register(cls):
    """keras.saving.register_keras_serializable(package='nas_deeplab') as a class decorator."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


# -- Architecture ------------------------------------------------------------------------------
def arch_to_config(arch: Architecture) -> dict:
    return arch.to_dict()


def arch_from_config(value) -> Architecture:
    """An Architecture from its dict (or the Architecture itself)."""
    return value if isinstance(value, Architecture) else Architecture.from_dict(dict(value),
                                                                               source="layer config")


# -- ModelOptions ------------------------------------------------------------------------------
def _option_fields() -> tuple[str, ...]:
    from nas_deeplab.model.deeplab import ModelOptions
    return tuple(f.name for f in dataclasses.fields(ModelOptions))


def options_to_config(options) -> dict | None:
    """ModelOptions -> dict (JSON-able); None stays None. Any other options object (the layers read
    options by attribute) keeps exactly the ModelOptions fields it has."""
    if options is None:
        return None
    if hasattr(options, "to_dict"):
        return options.to_dict()
    out = {}
    for name in _option_fields():
        if hasattr(options, name):
            value = getattr(options, name)
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def options_from_config(value):
    """The options object a layer was built with: a ModelOptions when the dict holds all its
    fields, else a plain namespace with just those attributes (the layers use getattr defaults)."""
    if value is None or not isinstance(value, dict):
        return value
    from nas_deeplab.model.deeplab import ModelOptions
    if set(value) == set(_option_fields()):
        return ModelOptions.from_dict(value)
    return types.SimpleNamespace(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in value.items()})


# -- initialisers, regularisers, dtype ---------------------------------------------------------
def serialize_initializer(initializer):
    return keras.initializers.serialize(initializer)


def serialize_regularizer(regularizer):
    return None if regularizer is None else keras.regularizers.serialize(regularizer)


@contextlib.contextmanager
def construction_policy(config: dict):
    """Build a composite's sublayers under the composite's own dtype policy, as the global policy
    did when the original was built (e.g. mixed_bfloat16): sublayers are not in the config, they
    are created by the constructor and take the global policy."""
    dtype = config.get("dtype")
    if dtype is None:
        yield
        return
    policy = keras.dtype_policies.get(dtype) if isinstance(dtype, (dict, str)) else dtype
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        yield
        return
    with policy_scope(policy):
        yield


@contextlib.contextmanager
def policy_scope(policy):
    """Build Keras layers under `policy` (a name such as "float32" or "bfloat16", or a DTypePolicy);
    the previous global policy comes back after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
