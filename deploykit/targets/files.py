"""Target files: finds them (built-in, then the folders in DEPLOYKIT_TARGETS) and reads them against the schema,
with one-line errors. Whether the runtime, runner, compiler and recipes a file names exist is the plugin
layer's check (`deploykit.target_loader`); this package imports no plugin code.

The built-in targets live in the repository's `targets/` folder; a user adds more by
pointing `DEPLOYKIT_TARGETS` at one or more folders (separated by `os.pathsep`), whose
files override built-ins of the same name.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from pydantic import ValidationError

from deploykit.errors import DeployKitError
from deploykit.targets.schema import TARGET_NAME, Target
from deploykit.user_files import parse_yaml, read_text

# Installed from a wheel, the repository's targets/ folder is the package data deploykit/builtin_targets;
# in a source checkout (and an editable install) it is the folder itself.
_PACKAGE = Path(__file__).resolve().parent.parent
BUILTIN_TARGETS_DIR = _PACKAGE / "builtin_targets" if (_PACKAGE / "builtin_targets").is_dir() else _PACKAGE.parent / "targets"
TARGETS_ENV = "DEPLOYKIT_TARGETS"
TARGET_SUFFIXES = (".yaml", ".yml")


def target_dirs() -> list[Path]:
    """Folders searched for targets, later ones overriding earlier ones."""
    extra = [Path(p) for p in os.environ.get(TARGETS_ENV, "").split(os.pathsep) if p]
    for folder in extra:
        if not folder.is_dir():
            raise DeployKitError(
                f"{TARGETS_ENV} names {str(folder)!r}, which is not a folder; "
                "point it at a folder of target YAML files."
            )
    return [BUILTIN_TARGETS_DIR, *extra]


def read_target_file(path: Path) -> Target:
    """Parse one target YAML file and validate it against the schema, with a one-line error on any problem."""
    if not TARGET_NAME.fullmatch(path.stem):
        raise DeployKitError(
            f"target file {path} has the name {path.stem!r}; target names are lowercase letters, digits and "
            "hyphens, starting with a letter or digit (rename the file)."
        )
    raw = parse_yaml(read_text(path), f"target file {path}")
    if not isinstance(raw, dict):
        raise DeployKitError(f"target file {path} must hold a mapping of fields, got {type(raw).__name__}.")
    raw.setdefault("name", path.stem)
    if raw["name"] != path.stem:
        raise DeployKitError(
            f"target file {path} declares name {raw['name']!r}; it must match the file name {path.stem!r}."
        )
    try:
        target = Target.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in error.errors()
        )
        raise DeployKitError(f"target file {path} is invalid: {problems}.") from None
    return target


def _target_files() -> dict[str, Path]:
    """name -> file. Hidden files (editor locks, `..yaml`) are skipped; a user folder's file overrides a
    built-in target of the same name, but one name given twice by the user (`x.yml` beside `x.yaml`, or in
    two DEPLOYKIT_TARGETS folders) is an error naming both, since neither could be said to win."""
    files = {path.stem: path for path in _yaml_files(BUILTIN_TARGETS_DIR)}
    user: dict[str, Path] = {}
    for folder in target_dirs()[1:]:
        for path in _yaml_files(folder):
            if path.stem in user:
                raise DeployKitError(
                    f"target {path.stem!r} is defined twice, in {user[path.stem]} and {path}; remove or rename one."
                )
            user[path.stem] = path
    return {**files, **user}


def _yaml_files(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.iterdir() if p.suffix in TARGET_SUFFIXES and not p.name.startswith("."))
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise DeployKitError(
                f"target {path.stem!r} is defined twice, in {seen[path.stem]} and {path}; remove or rename one."
            )
        seen[path.stem] = path
    return paths


def find_target_file(name: str) -> Path:
    """The file of the target called `name`; an unknown name errors with the closest known names."""
    files = _target_files()
    if name not in files:
        close = difflib.get_close_matches(name, files, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DeployKitError(
            f"unknown target {name!r}.{hint} Known targets: {', '.join(sorted(files))} "
            f"(add one as a YAML file in a folder named by {TARGETS_ENV})."
        )
    return files[name]


def target_paths(names: str | None = None) -> list[Path]:
    """Files of a comma-separated list of target names, or of every registered target (None or 'all', by name)."""
    if names is None:
        return [path for _, path in sorted(_target_files().items())]
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise DeployKitError("no target given; pass --target NAME (see `deploykit targets`).")
    if wanted == ["all"]:
        return target_paths()
    return [find_target_file(name) for name in wanted]
