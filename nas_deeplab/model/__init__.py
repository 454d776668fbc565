"""The Auto-DeepLab network as the official TF1 `hnasnet` DeepLab, in Keras 3.

Modules: `layers` (leaf layers and conv primitives with the official arg scopes), `operations`
(the candidate-op table shared with the search supernet), `drop_path` (ScheduledDropPath), `cell`,
`backbone` (HNASNet), `heads` (ASPP, decoder, logits), `deeplab` (ModelOptions, build_deeplab,
build_backbone), `official_names` (official TF1 checkpoint keys), `summary` (params, mult-adds).
"""
