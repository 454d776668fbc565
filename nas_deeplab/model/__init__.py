"""The Auto-DeepLab network as the official TF1 `hnasnet` DeepLab, in Keras 3.

Modules: `layers` (leaf layers and conv primitives with the official arg scopes), `operations`
(the candidate-op table shared with the search supernet), `drop_path` (ScheduledDropPath), `cell`,
`backbone` (HNASNet), `heads` (ASPP, decoder, logits), `deeplab` (ModelOptions, build_deeplab,
build_backbone), `summary` (params, mult-adds). The official TF1 checkpoint keys live in
`nas_deeplab.official.names`.
"""

# Importing the package registers every layer and both models (DeepLab, AutoDeepLabBackbone) for
# Keras serialisation: `keras.saving.load_model("m.keras")` then needs no custom_objects.
from nas_deeplab.model import deeplab, keras_backbone  # noqa: E402,F401
