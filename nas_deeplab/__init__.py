"""Auto-DeepLab (Liu et al., CVPR 2019) in TensorFlow 2 + Keras 3, aligned with official TF DeepLab."""

__version__ = "0.1.0"
