"""Interop with official TF1 DeepLab (`research/deeplab`, `--model_variant=nas_hnasnet`), in one place
that training and export both use.

Modules: `names` (every model variable under its official checkpoint key; the scopes
`--initialize_last_layer=false` leaves out), `checkpoint` (locate, inspect and write TF1 name-based
checkpoints), `infer` (the model options an official checkpoint's names and shapes imply), `restore`
(initialise a model from ours or an official checkpoint, completely or not at all).
"""
