"""Reading a GGUF file's metadata values with their types checked: a missing or mistyped value is the file's fault,
and says so in one line."""

from __future__ import annotations

import gguf

from deploykit.errors import DeployKitError, quoted

_REQUIRED = object()


def value(reader: gguf.GGUFReader, key: str, kind: type, default: object = _REQUIRED):
    """The metadata value at `key`, of Python type `kind`: a missing or mistyped value is the file's fault."""
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise DeployKitError(f"GGUF file lacks the metadata {quoted(key)}, which deploykit needs to convert it")
        return default
    try:
        found = field.contents()
    except UnicodeDecodeError:
        raise DeployKitError(f"GGUF metadata {quoted(key)} is not valid UTF-8") from None
    if kind is float and type(found) is int:
        found = float(found)
    if type(found) is not kind:
        raise DeployKitError(f"GGUF metadata {quoted(key)} is a {type(found).__name__}, not a {kind.__name__}")
    return found


def strings(reader: gguf.GGUFReader, key: str) -> list[str]:
    values = value(reader, key, list)
    if not all(type(item) is str for item in values):
        raise DeployKitError(f"GGUF metadata {quoted(key)} is not a list of strings")
    return values


def count(reader: gguf.GGUFReader, key: str, limit: int = 1 << 20) -> int:
    found = value(reader, key, int)
    if not 1 <= found <= limit:
        raise DeployKitError(f"GGUF metadata {quoted(key)} is {found}, outside 1..{limit}")
    return found
