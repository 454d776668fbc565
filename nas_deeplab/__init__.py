"""Auto-DeepLab (Liu et al., CVPR 2019) in TensorFlow 2 + Keras 3, aligned with official TF DeepLab.

`import nas_deeplab` is all a Keras user needs before `keras.saving.load_model("m.keras")`: it
registers every layer of the network (`nas_deeplab.model`). TensorFlow is imported here with its
start-up chatter filtered (`cli_startup`), so the filter also covers everything imported after it.
"""

__version__ = "0.1.0"

from nas_deeplab.training import memory as _memory  # noqa: E402  (standard library only)

_memory.limit_malloc_arenas_from_env()   # before TensorFlow starts its threads (see training/memory.py)

from nas_deeplab import cli_startup as _cli_startup  # noqa: E402

_cli_startup.import_tensorflow(announce=False)

from nas_deeplab import model as _model  # noqa: E402,F401  (Keras registration)
