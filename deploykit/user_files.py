"""Reading files other people wrote (model folders, build folders, recipe and devices files) with one-line errors
instead of tracebacks, hangs or unbounded memory.

Two levels of trust (docs/security.md): the user's own files (data, model, target,
recipe and devices files) are read as given, following links; files of a build folder,
a profile or a cache that may have come from elsewhere are read with
`read_untrusted_bytes`: regular files only, no symbolic link, a size cap checked before
reading. Both parse JSON and YAML with the same bounds: no YAML aliases, numbers of at
most `MAX_NUMBER_DIGITS` digits, nesting at most `MAX_DEPTH` deep.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path, PurePosixPath

import yaml

from deploykit.errors import DeployKitError, quoted

# A build folder's report.json and manifest.json are a few hundred kB; a large model's tokenizer.json tens of MB.
MAX_UNTRUSTED_BYTES = 64 << 20
# Integers longer than this are no count, size or seed deploykit uses; int() on thousands of digits is slow and
# Python refuses beyond 4300.
MAX_NUMBER_DIGITS = 40
# Deeper than any file deploykit writes or reads (a report nests about 8 levels).
MAX_DEPTH = 64


def read_text(path: Path) -> str:
    """A UTF-8 text file that came with a model, with a one-line error for any other encoding."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DeployKitError(f"{path} is not UTF-8 text (byte {error.start}); save it as UTF-8.") from None
    except OSError as error:
        raise DeployKitError(f"cannot read {path} ({error.strerror}).") from None


def read_untrusted_bytes(path: Path, limit: int = MAX_UNTRUSTED_BYTES) -> bytes:
    """A file of a folder deploykit did not just write: a regular file reached without a symbolic link in its last
    component, at most `limit` bytes. A FIFO, a device or a link is refused before a byte is read (never a hang)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        handle = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DeployKitError(f"{path} is a symbolic link; a build folder's files must be regular files "
                                 "(rebuild the folder or copy it without links).") from None
        raise DeployKitError(f"cannot read {path} ({error.strerror}).") from None
    with os.fdopen(handle, "rb") as stream:
        info = os.fstat(stream.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DeployKitError(f"{path} is not a regular file ({file_kind(info.st_mode)}); rebuild the folder.")
        if info.st_size > limit:
            raise DeployKitError(f"{path} is {info.st_size} bytes, more than the {limit} deploykit reads from such a "
                                 "file; rebuild the folder.")
        data = stream.read(limit + 1)
    if len(data) > limit:  # grew while being read
        raise DeployKitError(f"{path} is larger than the {limit} bytes deploykit reads from such a file.")
    return data


def file_kind(mode: int) -> str:
    """A file type in words, for messages."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))
    return next((word for test, word in kinds if test(mode)), "not a regular file")


def inside(folder: Path, name: object, what: str) -> Path:
    """`folder/name` for a relative name read from an untrusted file: no absolute path, no `..`, no component
    that is a symbolic link, and the file itself regular (so nothing outside `folder` is ever opened)."""
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name:
        raise DeployKitError(f"{what} {quoted(name)} is not a file name inside {folder}; rebuild the folder.")
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or relative.parts in ((), (".",)):
        raise DeployKitError(f"{what} {quoted(name)} leaves {folder}; a build folder names only its own files.")
    path = folder
    for part in relative.parts:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError as error:
            raise DeployKitError(f"{what} {quoted(name)}: cannot read {path} ({error.strerror}).") from None
        if stat.S_ISLNK(mode):
            raise DeployKitError(f"{what} {quoted(name)}: {path} is a symbolic link; a build folder's files must be "
                                 "regular files.")
    if not stat.S_ISREG(mode):
        raise DeployKitError(f"{what} {quoted(name)}: {path} is {file_kind(mode)}, not a regular file.")
    return path


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DeployKitError(f"{path} is not UTF-8 text (byte {error.start}); save it as UTF-8.") from None


def _bounded_integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ValueError(f"a number of {len(text)} digits (at most {MAX_NUMBER_DIGITS})")
    return int(text)


def parse_json(text: str, source: str):
    """JSON with bounded numbers and nesting; a one-line error naming `source` otherwise."""
    try:
        value = json.loads(text, parse_int=_bounded_integer)
    except json.JSONDecodeError as error:
        raise DeployKitError(f"{source} is not valid JSON (line {error.lineno}: {error.msg}); fix or replace the "
                             "file.") from None
    except RecursionError:
        raise DeployKitError(f"{source} nests JSON too deeply (at most {MAX_DEPTH} levels); fix or replace the "
                             "file.") from None
    except ValueError as error:
        raise DeployKitError(f"{source} holds {error}; fix or replace the file.") from None
    _check_depth(value, source)
    return value


def read_json(path: Path, kind: type, untrusted: bool = False, limit: int = MAX_UNTRUSTED_BYTES):
    """A JSON file holding a `kind` (dict or list); one-line errors otherwise. `untrusted`: a file of a folder that
    may have come from elsewhere (read_untrusted_bytes's rules)."""
    text = _decode(read_untrusted_bytes(path, limit), path) if untrusted else read_text(path)
    value = parse_json(text, str(path))
    if not isinstance(value, kind):
        raise DeployKitError(f"{path} must hold a JSON {'object' if kind is dict else 'array'}, "
                             f"got {type(value).__name__}; fix or replace the file.")
    return value


class _BoundedLoader(yaml.SafeLoader):
    """YAML without aliases (a few hundred bytes of them expand to gigabytes) and with bounded integers."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"YAML aliases (*{event.anchor}) are not accepted; write the value out "
                                 f"(line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)

    def construct_yaml_int(self, node):
        digits = node.value.replace("_", "").lstrip("+-")
        if len(digits) > MAX_NUMBER_DIGITS:
            raise yaml.YAMLError(f"a number of {len(digits)} digits on line {node.start_mark.line + 1} (at most "
                                 f"{MAX_NUMBER_DIGITS})")
        return super().construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def parse_yaml(text: str, source: str):
    """YAML with bounded aliases, numbers and nesting; a one-line error naming `source` otherwise."""
    try:
        value = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise DeployKitError(f"{source} is not readable YAML ({quoted(first, 120, plain=True)}); fix its "
                             "syntax.") from None
    except RecursionError:
        raise DeployKitError(f"{source} nests YAML too deeply (at most {MAX_DEPTH} levels); fix the file.") from None
    _check_depth(value, source)
    return value


def _check_depth(value, source: str) -> None:
    """Refuse documents nested deeper than MAX_DEPTH (later recursive code would fail on them)."""
    level = [value]
    for _ in range(MAX_DEPTH + 1):
        level = [item for node in level if isinstance(node, (dict, list))
                 for item in (node.values() if isinstance(node, dict) else node)]
        if not level:
            return
    raise DeployKitError(f"{source} nests deeper than {MAX_DEPTH} levels; fix or replace the file.")
