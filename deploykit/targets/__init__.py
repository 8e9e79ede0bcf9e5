"""Hardware targets as data: the YAML schema (`schema.py`) and the files that hold them (`files.py`).
`deploykit.target_loader` loads them checked against the installed plugins."""

from deploykit.targets.files import (
    BUILTIN_TARGETS_DIR, TARGETS_ENV, find_target_file, read_target_file, target_dirs, target_paths,
)
from deploykit.targets.schema import INTEGER_PRECISIONS, TARGET_NAME, Budgets, Precision, Target

__all__ = ["BUILTIN_TARGETS_DIR", "INTEGER_PRECISIONS", "TARGETS_ENV", "TARGET_NAME", "Budgets", "Precision", "Target",
           "find_target_file", "read_target_file", "target_dirs", "target_paths"]
