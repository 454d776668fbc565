"""nas-deeplab: Auto-DeepLab (hierarchical NAS for segmentation) in TensorFlow 2 + Keras 3."""
from setuptools import find_packages, setup

setup(
    name="nas-deeplab",
    version="0.1.0",
    description="Auto-DeepLab search, the official hnasnet network, training, evaluation and export "
                "in TensorFlow 2 / Keras 3, aligned with the official TF DeepLab code.",
    python_requires=">=3.11",
    packages=find_packages(include=["nas_deeplab", "nas_deeplab.*"]),
    py_modules=["search", "train", "export", "eval"],
    install_requires=[
        "tensorflow>=2.21",
        "keras>=3.12",
        # TF 2.21 no longer pulls tensorboard in; tf.summary needs it.
        "tensorboard>=2.21",
        "absl-py",
        "numpy",
        "Pillow",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist"],
        # Optional: keras-hub heads on our backbone (tests/model/test_keras_backbone.py). 0.32 is
        # the version checked; it installs next to TF 2.21 / Keras 3.15 without changing them.
        "interop": ["keras-hub>=0.32"],
    },
    entry_points={
        "console_scripts": [
            "nas-deeplab-search=search:run_main",
            "nas-deeplab-train=train:run_main",
            "nas-deeplab-export=export:run_main",
            "nas-deeplab-eval=eval:run_main",
        ]
    },
)
