"""`deploykit verify`: prove that a build folder is still what the build shipped, and that its artifact still runs.

Every file is checked against manifest.json (size and sha256), files the manifest does
not list are reported, and when every file matches, the artifact is loaded with its
runtime and run once on a full-length input made from the folder's own tokenizer
files. A folder that was copied, uploaded and downloaded by CI, or pushed to a device
store, can be checked this way before it is deployed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from deploykit.errors import DeployKitError
from deploykit.report.manifest import MANIFEST, sha256_of


@dataclass
class FolderCheck:
    """What `verify` found in one target folder."""

    folder: Path
    matched: int = 0  # files whose size and sha256 are the manifest's
    changed: list[str] = field(default_factory=list)  # one line per file whose bytes differ
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    problem: str | None = None  # an unreadable manifest, or an artifact that does not run
    ran: str | None = None  # the artifact's run on the sample, in words

    @property
    def passed(self) -> bool:
        return not (self.changed or self.missing or self.extra or self.problem)

    def lines(self) -> list[str]:
        """The findings, one per line: what differs first, then the run."""
        lines = [f"changed: {line}" for line in self.changed]
        lines += [f"missing: {path}" for path in self.missing]
        lines += [f"extra (not in the manifest): {path}" for path in self.extra]
        if self.problem:
            lines.append(self.problem)
        if self.ran:
            lines.append(self.ran)
        return lines


def build_folders(dist: Path) -> list[Path]:
    """The target folders of DIST: DIST itself when it holds a manifest, else its subfolders that do."""
    if not dist.is_dir():
        raise DeployKitError(f"{dist} is not a folder; pass the --out folder of a build or one of its target folders.")
    if (dist / MANIFEST).is_file():
        return [dist]
    folders = sorted(path.parent for path in dist.glob(f"*/{MANIFEST}") if not path.parent.name.startswith("."))
    if not folders:  # hidden folders are staging or leftovers, never targets
        raise DeployKitError(f"{dist} holds no {MANIFEST} nor <target>/{MANIFEST}; pass the --out folder of a "
                             "build or one of its target folders.")
    return folders


def verify_folder(folder: Path) -> FolderCheck:
    """Check every file against the manifest; run the artifact when they all match."""
    check = FolderCheck(folder)
    try:
        expected = _manifest(folder)
    except (ValueError, KeyError, TypeError) as error:
        check.problem = f"{MANIFEST} is not as deploykit writes it ({error}); the folder cannot be verified."
        return check
    present = {path.relative_to(folder).as_posix() for path in folder.rglob("*")
               if (path.is_file() or path.is_symlink()) and path.name != MANIFEST}
    for name, (size, sha256) in expected.items():
        path = folder / name
        if name not in present:
            check.missing.append(name)
        elif path.is_symlink():
            check.changed.append(f"{name}: a symbolic link where the build wrote a file")
        elif (path.stat().st_size, sha256_of(path)) == (size, sha256):
            check.matched += 1
        else:
            check.changed.append(f"{name}: {path.stat().st_size} bytes, sha256 {sha256_of(path)[:16]}…; the manifest "
                                 f"says {size} bytes, sha256 {sha256[:16]}…")
    check.extra = sorted(present - set(expected))
    if check.changed or check.missing:
        check.problem = "the artifact was not run: its folder differs from the manifest."
    else:
        _run_artifact(check)
    return check


def _manifest(folder: Path) -> dict[str, tuple[int, str]]:
    """path -> (bytes, sha256) of every file the build listed; paths must stay inside the folder."""
    from deploykit.user_files import read_json

    try:
        document = read_json(folder / MANIFEST, dict)
    except DeployKitError as error:
        raise ValueError(str(error)) from None
    files = {}
    for entry in document["files"]:
        name = PurePosixPath(entry["path"])
        if name.is_absolute() or ".." in name.parts or not name.parts:
            raise ValueError(f"path {entry['path']!r} leaves the folder")
        files[name.as_posix()] = (int(entry["bytes"]), str(entry["sha256"]))
    return files


def _run_artifact(check: FolderCheck) -> None:
    """Load the artifact with its backend's runtime and run it once; a failure of any kind is a finding."""
    from deploykit.backends.base import backend_for_file
    from deploykit.profiling.build_folder import artifact_in, folder_artifact

    try:
        backend = backend_for_file(artifact_in(check.folder))
        artifact = folder_artifact(check.folder)
        output = np.asarray(backend.load(artifact.path, 1, artifact.runtime_config)(artifact.sample))
    except DeployKitError as error:
        check.problem = f"the artifact was not run: {error}"
        return
    except Exception as error:  # a runtime's own errors come in every type; the finding names it
        check.problem = f"the artifact does not run: {type(error).__name__}: {error}".splitlines()[0]
        return
    name = artifact.path.relative_to(check.folder).as_posix()
    shape = "×".join(str(size) for size in artifact.sample["token_ids"].shape)
    if not np.all(np.isfinite(output)):
        check.problem = f"{name} ran on a {shape} sample but its output holds NaN or infinite values."
        return
    check.ran = f"{name} ran with {backend.name} on a {shape} sample: output shape {tuple(output.shape)}, finite."
