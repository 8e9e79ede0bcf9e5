"""Targets as the build uses them: read from their files, then checked against the installed plugins.

A target file names a runtime, a profiling runner, a compiler and recipes; each must exist in its
registry and accept the file's settings. That check needs the plugin layer (backends, compilers,
runners, passes), so it lives here, above them, and `deploykit.targets` stays data and schema.
"""

from __future__ import annotations

from pathlib import Path

from deploykit.backends.base import BACKENDS
from deploykit.compilers.base import get_compiler
from deploykit.errors import DeployKitError
from deploykit.passes.recipe import parse_recipe
from deploykit.profiling.base import get_runner
from deploykit.targets import Target, find_target_file, read_target_file, target_paths


def load_target_file(path: Path) -> Target:
    """One target file, read and checked: the plugins and recipes it names exist and take its settings."""
    target = read_target_file(path)
    checks = (("runtime", lambda: BACKENDS.get(target.runtime)), ("profiling", lambda: get_runner(target.profiling)),
              ("compiler", lambda: target.compiler is None or get_compiler(target.compiler)),
              ("recipes", lambda: [parse_recipe(text) for text in target.recipes]))
    for field_name, check in checks:  # plugins are named through their registries and check their own settings
        try:
            check()
        except DeployKitError as error:
            raise DeployKitError(f"target file {path} is invalid: {field_name}: {error}") from None
    return target


def load_target(name: str) -> Target:
    """The target called `name`; an unknown name errors with the closest known names."""
    return load_target_file(find_target_file(name))


def list_targets() -> list[Target]:
    """Every registered target, sorted by name."""
    return [load_target_file(path) for path in target_paths()]


def resolve_targets(names: str) -> list[Target]:
    """Targets from a comma-separated list; 'all' means every registered target."""
    return [load_target_file(path) for path in target_paths(names)]
