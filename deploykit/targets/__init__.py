"""Hardware targets: the YAML schema (`schema.py`) and the registry that finds and checks target files
(`registry.py`)."""

from deploykit.targets.registry import (
    BUILTIN_TARGETS_DIR, TARGETS_ENV, list_targets, load_target, load_target_file, resolve_targets, target_dirs,
)
from deploykit.targets.schema import INTEGER_PRECISIONS, TARGET_NAME, Budgets, Precision, Target

__all__ = ["BUILTIN_TARGETS_DIR", "INTEGER_PRECISIONS", "TARGETS_ENV", "TARGET_NAME", "Budgets", "Precision", "Target",
           "list_targets", "load_target", "load_target_file", "resolve_targets", "target_dirs"]
