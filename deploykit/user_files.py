"""Reading files other people wrote (model folders, build folders) with one-line errors instead of tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

from deploykit.errors import DeployKitError


def read_text(path: Path) -> str:
    """A UTF-8 text file that came with a model, with a one-line error for any other encoding."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DeployKitError(f"{path} is not UTF-8 text (byte {error.start}); save it as UTF-8.") from None
    except OSError as error:
        raise DeployKitError(f"cannot read {path} ({error.strerror}).") from None


def read_json(path: Path, kind: type):
    """A JSON file that came with a model, holding a `kind` (dict or list); one-line errors otherwise."""
    try:
        value = json.loads(read_text(path))
    except (json.JSONDecodeError, RecursionError) as error:
        where = f" (line {error.lineno}: {error.msg})" if isinstance(error, json.JSONDecodeError) else ""
        raise DeployKitError(f"{path} is not valid JSON{where}; fix or replace the file.") from None
    if not isinstance(value, kind):
        raise DeployKitError(f"{path} must hold a JSON {'object' if kind is dict else 'array'}, "
                             f"got {type(value).__name__}; fix or replace the file.")
    return value

