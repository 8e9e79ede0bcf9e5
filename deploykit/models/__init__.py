"""Models: the ModelBundle every stage works on, and the loaders that make one from a user's model."""

from deploykit.models.bundle import ALIASES, INPUT_NAMES, TASKS, ModelBundle, Task
from deploykit.models.loaders import alias_path, load_model

__all__ = ["ALIASES", "INPUT_NAMES", "TASKS", "ModelBundle", "Task", "alias_path", "load_model"]
