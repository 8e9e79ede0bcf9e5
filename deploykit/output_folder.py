"""Where builds are written: deploykit replaces only what it wrote, and never leaves a half-replaced folder.

A target's output is assembled in a hidden staging folder beside the final one
(`OUT/.<target>.partial-<pid>-<random>`). The finished folder takes the old one's
place in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`), so at every moment
`OUT/<target>` is the complete old build or the complete new one. A folder is only
replaced when its `manifest.json` says deploykit wrote it, or when the user passes
`--force`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import tempfile
from pathlib import Path

from deploykit.errors import DeployKitError
from deploykit.report.manifest import MANIFEST
from deploykit.user_files import read_json

STAGING_MARK = ".partial-"
_RENAME_EXCHANGE = 2  # linux/fs.h


def is_deploykit_build(folder: Path) -> bool:
    """Whether `folder` holds a manifest.json as deploykit writes it (a JSON object with a `files` list)."""
    manifest = folder / MANIFEST
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:  # bounded, regular files only: a FIFO or a link named manifest.json is no build (and never hangs)
        data = read_json(manifest, dict, untrusted=True)
    except DeployKitError:
        return False
    return isinstance(data.get("files"), list)


def check_output(out: Path, names: list[str], force: bool) -> None:
    """Fail before any work when a build would replace something deploykit did not write."""
    if out.exists() and not out.is_dir():
        raise DeployKitError(f"--out {out} is a file, not a folder; pass a folder (each target gets OUT/<target>/).")
    for name in names:
        final = out / name
        if (final.exists() or final.is_symlink()) and not force and not is_deploykit_build(final):
            raise DeployKitError(
                f"{final} exists and is not a deploykit build (no deploykit manifest.json); choose another --out, "
                "or pass --force to replace it."
            )


def new_staging(out: Path, name: str) -> Path:
    """A fresh hidden folder beside OUT/<name>; staging folders left by dead processes are removed first."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f".{name}{STAGING_MARK}*"):
        pid = stale.name[len(f".{name}{STAGING_MARK}"):].split("-", 1)[0]
        if pid.isdecimal() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}{STAGING_MARK}{os.getpid()}-", dir=out))


def replace_folder(staging: Path, final: Path) -> None:
    """Put a finished staging folder at `final`; an older build (or, after --force, anything) there is removed."""
    if not (final.exists() or final.is_symlink()):
        staging.rename(final)
        return
    if final.is_dir() and not final.is_symlink() and _exchange(staging, final):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old build
        return
    # No atomic exchange (not Linux, or a file/symlink in the way): move the old one aside, put it back on failure.
    old = final.with_name(f".{final.name}{STAGING_MARK}{os.getpid()}-old")
    final.rename(old)
    try:
        staging.rename(final)
    except BaseException:
        old.rename(final)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the call is unavailable."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    renameat2 = getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_cwd = -100
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system or kernel cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), str(second))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

