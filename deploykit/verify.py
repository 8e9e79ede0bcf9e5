"""`deploykit verify`: prove that a build folder is still what the build shipped, and that its artifact still runs.

Every file is checked against manifest.json (size and sha256), files the manifest does
not list are reported, and when every file matches, the artifact is loaded with its
runtime and run once on a full-length input made from the folder's own tokenizer
files. A folder that was copied, uploaded and downloaded by CI, or pushed to a device
store, can be checked this way before it is deployed.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from deploykit.errors import DeployKitError, quoted
from deploykit.report.manifest import MANIFEST
from deploykit.user_files import file_kind, read_json

MAX_FILES = 10_000  # a build folder holds about ten; more is not a build folder
SHA256 = re.compile(r"[0-9a-f]{64}")


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
    if os.path.lexists(dist / MANIFEST):
        return [dist]
    # Hidden folders are staging or leftovers, never targets; a linked folder is never followed out of DIST.
    folders = sorted(path.parent for path in dist.glob(f"*/{MANIFEST}")
                     if not path.parent.name.startswith(".") and not path.parent.is_symlink())
    if not folders:
        raise DeployKitError(f"{dist} holds no {MANIFEST} nor <target>/{MANIFEST}; pass the --out folder of a "
                             "build or one of its target folders.")
    return folders


def verify_folder(folder: Path) -> FolderCheck:
    """Check every file against the manifest; run the artifact when they all match.

    The folder is untrusted (docs/security.md): links are never followed, only regular
    files are opened, a file whose size differs from the manifest's is not hashed, and
    nothing outside the folder is read or run.
    """
    check = check_files(folder)
    if check.matched and not (check.changed or check.missing or check.problem):
        _run_artifact(check, set(_manifest(folder)))
    return check


def check_files(folder: Path) -> FolderCheck:
    """verify_folder without running anything: every file against the manifest."""
    check = FolderCheck(folder)
    try:
        expected = _manifest(folder)
    except DeployKitError as error:
        check.problem = f"{MANIFEST} is not as deploykit writes it ({error}); the folder cannot be verified."
        return check
    present = _entries(folder)
    for name, (size, sha256) in expected.items():
        info = present.get(name)
        if info is None:
            check.missing.append(name)
        elif not stat.S_ISREG(info.st_mode):
            check.changed.append(f"{name}: {file_kind(info.st_mode)} where the build wrote a file")
        elif info.st_size != size:
            check.changed.append(f"{name}: {info.st_size} bytes; the manifest says {size} bytes")
        elif (found := _sha256(folder / name, size)) == sha256:
            check.matched += 1
        else:
            check.changed.append(f"{name}: sha256 {found[:16]}…; the manifest says {sha256[:16]}…")
    check.extra = sorted(set(present) - set(expected))
    if check.changed or check.missing:
        check.problem = "the artifact was not run: its folder differs from the manifest."
    return check


def _entries(folder: Path) -> dict[str, os.stat_result]:
    """Everything under `folder` but folders and the manifest, by relative path, from lstat: a link (to a file or a
    folder) is an entry of its own and never followed."""
    found = {}
    for root, folders, files in os.walk(folder, followlinks=False):
        for name in [*files, *(name for name in folders if os.path.islink(os.path.join(root, name)))]:
            path = Path(root, name)
            relative = path.relative_to(folder).as_posix()
            if relative != MANIFEST:
                found[relative] = os.lstat(path)
            if len(found) > MAX_FILES:
                return found
    return found


def _sha256(path: Path, size: int) -> str:
    """sha256 of a regular file the manifest gives `size` bytes, opened without following a link."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    digest = hashlib.sha256()
    try:
        with os.fdopen(os.open(path, flags), "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                return "not a regular file"
            left = size + 1  # a file that grew past its listed size cannot match: stop reading there
            while left and (chunk := stream.read(min(1 << 20, left))):
                left -= len(chunk)
                digest.update(chunk)
    except OSError as error:
        return f"unreadable ({error.strerror})"
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, tuple[int, str]]:
    """path -> (bytes, sha256) of every file the build listed; paths must stay inside the folder."""
    document = read_json(folder / MANIFEST, dict, untrusted=True)
    entries = document.get("files")
    if not isinstance(entries, list) or len(entries) > MAX_FILES:
        raise DeployKitError(f"'files' must be a list of at most {MAX_FILES} entries")
    files = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise DeployKitError(f"a file entry is {type(entry).__name__}, not an object")
        name, size, sha256 = entry.get("path"), entry.get("bytes"), entry.get("sha256")
        relative = PurePosixPath(name) if isinstance(name, str) and name and "\0" not in name else None
        if relative is None or relative.is_absolute() or ".." in relative.parts:
            raise DeployKitError(f"path {quoted(name)} leaves the folder")
        if type(size) is not int or not 0 <= size < 1 << 50:
            raise DeployKitError(f"{quoted(name)} has the size {quoted(size)}, not a byte count")
        if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
            raise DeployKitError(f"{quoted(name)} has the sha256 {quoted(sha256)}, not 64 hex digits")
        files[relative.as_posix()] = (size, sha256)
    return files


def _run_artifact(check: FolderCheck, listed: set[str]) -> None:
    """Load the artifact with its backend's runtime and run it once; a failure of any kind is a finding. Only a
    file the manifest lists (and that matched it) is ever run."""
    run = _run_decoder if "generation.json" in listed else _run_encoder
    try:
        finite, message = run(check.folder, listed)
    except DeployKitError as error:
        check.problem = f"the artifact was not run: {error}"
        return
    except Exception as error:  # a runtime's own errors come in every type; the finding names it
        check.problem = f"the artifact does not run: {type(error).__name__}: {error}".splitlines()[0]
        return
    if finite:
        check.ran = message
    else:
        check.problem = message


def _run_encoder(folder: Path, listed: set[str]) -> tuple[bool, str]:
    """(whether the output is finite, what ran) for an encoder build: one batch-1 sample through the artifact."""
    from deploykit.backends.base import backend_for_file
    from deploykit.profiling.build_folder import artifact_in, folder_artifact

    path = artifact_in(folder)
    if path.relative_to(folder).as_posix() not in listed:
        raise DeployKitError(f"report.json names {path.name} as the artifact, which {MANIFEST} does not list")
    backend = backend_for_file(path)
    artifact = folder_artifact(folder)
    output = np.asarray(backend.load(artifact.path, 1, artifact.runtime_config)(artifact.sample))
    name = artifact.path.relative_to(folder).as_posix()
    shape = "×".join(str(size) for size in artifact.sample["token_ids"].shape)
    if not np.all(np.isfinite(output)):
        return False, f"{name} ran on a {shape} sample but its output holds NaN or infinite values."
    return True, f"{name} ran with {backend.name} on a {shape} sample: output shape {tuple(output.shape)}, finite."


def _run_decoder(folder: Path, listed: set[str]) -> tuple[bool, str]:
    """(whether the logits are finite, what ran) for a decoder build: a 4-token prefill and one decode step."""
    from deploykit.generation.artifact_folder import open_decoder_folder

    decoder, _, _ = open_decoder_folder(folder, threads=1)
    logits, cache = decoder.prefill([0, 1, 2, 3])
    last, _ = decoder.decode(4, cache, 4)
    if not (np.all(np.isfinite(logits)) and np.all(np.isfinite(last))):
        return False, "the decoder ran a 4-token prefill and one decode step but its logits hold NaN or infinite values."
    return True, f"the decoder ran a 4-token prefill and one decode step: logits {tuple(logits.shape)}, finite."
