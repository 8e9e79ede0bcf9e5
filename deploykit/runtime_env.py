"""Process settings that must be in place before TensorFlow or Keras is imported."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with native stderr muted.

    TensorFlow's C++ runtime logs several lines (CUDA probes, oneDNN notices) before
    its log level applies; they bury the build's progress. Python exceptions still
    propagate, so a broken install is still reported.
    """
    import sys

    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
