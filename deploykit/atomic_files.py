"""Writing a file so that a reader (a CI step, a concurrent job) sees the old content or the new, never half of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, text: str, replace: bool = True) -> Path:
    """Write `text` to a temporary file beside `path`, then move it into place in one step.

    With `replace=False` the move is a hard link, which fails with FileExistsError when
    `path` exists, so a file someone else created meanwhile is never overwritten.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path
