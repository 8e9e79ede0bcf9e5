"""Output paths checked before any work: no output may overwrite an input, and every output must be writable.

A run that fails late, after minutes of training, because `--summary-json` names a
folder, or that replaces the user's data with a summary, costs more than a refusal up
front. Paths are compared after following links, so a link to an input is the input.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from deploykit.errors import DeployKitError


@dataclass(frozen=True)
class Output:
    """One path a command writes: a file, a folder written into, or a folder replaced whole (OUT/<target>)."""

    option: str  # as the user wrote it, for messages: "--summary-json"
    path: Path
    kind: str = "file"  # "file", "folder" (files are added inside) or "replaced" (the folder is replaced whole)


def check_outputs(outputs: list[Output], inputs: dict[str, Path | None]) -> None:
    """Refuse, in one line, an output that is (or would replace) an input, two outputs on one file, and an output
    that cannot be written: a folder where a file goes, a path under a file, a folder without write permission."""
    given = {option: _real(path) for option, path in inputs.items() if path is not None and os.path.lexists(path)}
    written: dict[Path, str] = {}
    for output in outputs:
        real = _real(output.path)
        for option, source in given.items():
            if _overwrites(output, real, source):
                raise DeployKitError(f"{output.option} {output.path} would overwrite {option} {inputs[option]}; "
                                     f"write {output.option} elsewhere.")
        if output.kind == "file":
            if real in written:
                raise DeployKitError(f"{output.option} and {written[real]} both name {output.path}; give each its "
                                     "own file.")
            written[real] = output.option
        _check_writable(output)
    for real, option in written.items():
        for output in outputs:
            if output.kind == "replaced" and _within(real, _real(output.path)):
                raise DeployKitError(f"{option} {real} lies in {output.path}, which the build replaces; write it "
                                     f"beside it, e.g. {output.path.parent / real.name}.")


def _overwrites(output: Output, real: Path, source: Path) -> bool:
    """Whether writing `output` destroys the input at `source`: the same file, an input inside a folder that is
    replaced whole, or an existing file of an input folder."""
    if output.kind == "replaced":
        return _within(source, real)
    if output.kind == "file":
        return real == source or (_within(real, source) and real.exists())
    return real == source and not source.is_dir()


def _check_writable(output: Output) -> None:
    path = output.path.expanduser()
    if path.exists():
        mode = path.stat().st_mode
        if output.kind == "file" and stat.S_ISDIR(mode):
            raise DeployKitError(f"{output.option} {output.path} is a folder; give a file name.")
        if output.kind == "file" and not stat.S_ISREG(mode):
            raise DeployKitError(f"{output.option} {output.path} is not a regular file; give a file name.")
        if output.kind == "folder" and not stat.S_ISDIR(mode):  # what is at a replaced one is output_folder's
            raise DeployKitError(f"{output.option} {output.path} is a file, not a folder; give a folder.")
    ancestor = path if output.kind == "folder" else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DeployKitError(f"{output.option} {output.path} lies under the file {ancestor}, where no folder can be "
                             "made; choose another path.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DeployKitError(f"{output.option} {output.path}: no permission to write in {ancestor}; choose another "
                             "path.")


def _real(path: Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
