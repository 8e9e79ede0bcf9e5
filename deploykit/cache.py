"""A content-addressed store for the expensive stages of a build: exported artifacts (with the fine-tuned model's
tokenizer and what each pass did), their measurements, the search's verdicts, the sensitivity rankings of mixed
precision, and the original model's outputs on the evaluation data.

An entry's key is the sha256 of everything its result depends on: the model's weights
and vocabulary, the data, the pass parameters, the precision, the target's export
settings, and the versions of deploykit (its source files) and of every toolchain. So a
changed input misses, and the same inputs give back the same bytes. Entries are written
to a temporary folder and renamed into place, so processes sharing a cache (several
search workers on one NFS folder) never read half an entry. The store keeps under a size
cap by removing the least recently used entries.

Every entry is authenticated before use: its entry.json carries an HMAC-SHA256, under a
secret key that never travels with the cache, of its stage, key, metadata (cached
latencies, fidelities, verdicts, rankings, shapes), stored time, and every file's name,
size and sha256. The key is $DEPLOYKIT_CACHE_KEY when set, else a random per-user key in
$XDG_CONFIG_HOME/deploykit/cache.key (made on first use, mode 0600). An entry whose MAC
does not match (an edited number, a forged entry with recomputed sha256s, one written
under another key or by an older deploykit), or whose files are missing, links, of
another size or other bytes, is removed and its stage runs again. The MAC protects
against a tampered or forged entry, from a shared cache or an edit; it does not protect
against anyone holding the key, who can forge any entry, nor against a writer to the
cache who swaps a file in the moment between its check and the build copying it.

Is a cache shared between machines safe? Entries made under another key are rejected
and rebuilt, so a cache restored from another CI run, or an NFS folder that others
write to, serves a machine only the entries made under its own key. CI runners that
start with an empty home make a new key file each run: their restored cache is rebuilt
unless DEPLOYKIT_CACHE_KEY comes from a CI secret. Machines that share the key trust
each other's entries exactly as much as they trust each other.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from rich.markup import escape

from deploykit.errors import DeployKitError
from deploykit.report.manifest import sha256_of

ENTRY = "entry.json"
FORMAT = 2  # bound by the MAC: an entry of another format fails it and is rebuilt (format 1 had no MAC)
KEY_VARIABLE = "DEPLOYKIT_CACHE_KEY"
KEY_BYTES = 32
# An entry.json holds a few KiB of metadata; a larger one is not ours, and is not read into memory.
MAX_ENTRY_BYTES = 64 << 20
# entry.json is opened without following a link, and without blocking when it is a FIFO (then refused by its type).
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
# 20 GB holds about fifty fp32 BERT-base artifacts, or thousands of MiniLM-sized int8 ones, with their measurements.
DEFAULT_MAX_GB = 20.0
# Every package whose version can change an artifact's bytes or a measurement.
TOOLCHAINS = ("tensorflow", "keras", "keras-hub", "ai-edge-litert", "ai-edge-quantizer", "openvino", "nncf", "onnx",
              "onnxruntime", "tf2onnx", "tensorrt", "numpy")


def default_cache_folder() -> Path:
    """$DEPLOYKIT_CACHE, else $XDG_CACHE_HOME/deploykit, else ~/.cache/deploykit."""
    if os.environ.get("DEPLOYKIT_CACHE"):
        return Path(os.environ["DEPLOYKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deploykit"


def key_file() -> Path:
    """$XDG_CONFIG_HOME/deploykit/cache.key, else ~/.config/deploykit/cache.key: beside the user's settings, never in
    the cache, so that copying or sharing a cache does not share the key."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "deploykit" / "cache.key"


def cache_key(cache_root: Path) -> bytes:
    """The secret that authenticates the entries under `cache_root`: $DEPLOYKIT_CACHE_KEY when set, else the per-user
    key file, made on first use. A key that cannot be had stops the build with the fix, rather than building slowly
    without a cache the user asked for."""
    if os.environ.get(KEY_VARIABLE):
        return os.fsencode(os.environ[KEY_VARIABLE])
    path = key_file()
    fix = f"set {KEY_VARIABLE} to a secret string, or build with --no-cache"
    if path.resolve().is_relative_to(Path(cache_root).resolve()):
        raise DeployKitError(f"The cache key {path} would lie inside the cache {cache_root} and travel with it: {fix}.")
    try:
        key = _read_key(path)
    except OSError as error:
        raise DeployKitError(f"Cannot read or create the cache key {path} ({error.strerror or error}): {fix}.") \
            from None
    if len(key) < KEY_BYTES:
        raise DeployKitError(f"The cache key {path} is shorter than {KEY_BYTES} bytes: delete it (a new one is made), "
                             f"or {fix}.")
    return key


def _read_key(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return _create_key(path)


def _create_key(path: Path) -> bytes:
    """32 random bytes, readable by the user only. Written beside the key's place and hard-linked into it, which fails
    when another process made the key first: then every process uses the winner's."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle, temporary = tempfile.mkstemp(prefix=".cache.key-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(secrets.token_bytes(KEY_BYTES))
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)
    return path.read_bytes()


def digest(*parts: Any) -> str:
    """sha256 of JSON-able parts (arrays by their bytes, shape and dtype; paths by their text)."""
    hasher = hashlib.sha256()
    for part in parts:
        _feed(hasher, part)
    return hasher.hexdigest()


def _feed(hasher, value: Any) -> None:
    if isinstance(value, np.ndarray):
        hasher.update(f"array{value.shape}{value.dtype}".encode())
        hasher.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (list, tuple)):
        hasher.update(f"[{len(value)}".encode())
        for item in value:
            _feed(hasher, item)
    elif isinstance(value, dict):
        hasher.update(f"{{{len(value)}".encode())
        for key in sorted(value, key=str):
            _feed(hasher, str(key))
            _feed(hasher, value[key])
    else:
        hasher.update(json.dumps(value if isinstance(value, (str, int, float, bool, type(None))) else str(value))
                      .encode())
        hasher.update(b"\0")


@lru_cache(maxsize=1)
def toolchain_versions() -> dict[str, str]:
    """deploykit's version and the digest of its own source, plus each installed toolchain's version."""
    package = Path(__file__).parent
    hasher = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".yaml", ".json", ".txt") and "__pycache__" not in path.parts:
            hasher.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    versions = {"deploykit": metadata.version("deploykit"), "deploykit-source": hasher.hexdigest()[:16]}
    for name in TOOLCHAINS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@dataclass
class CacheEntry:
    """A verified entry: its folder (files by their stored relative names) and its metadata."""

    folder: Path
    meta: dict

    def path(self, name: str) -> Path:
        return self.folder / name


class Rejected(Exception):
    """Why an entry cannot be trusted."""


class ContentCache:
    """Entries by stage and key under `root/<stage>/<key[:2]>/<key>/`, each with its files and `entry.json`."""

    def __init__(self, root: Path, max_bytes: float = DEFAULT_MAX_GB * 1e9, log=None):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.log = log
        self.hits = 0
        self.misses = 0
        self.rejected = 0  # entries dropped by their integrity check (also counted as misses)
        self._key = cache_key(self.root)

    def _folder(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / key

    def get(self, stage: str, key: str) -> CacheEntry | None:
        """The entry when it passes its integrity check; one that fails is removed (a miss: the stage runs again)."""
        folder = self._folder(stage, key)
        try:
            meta = self._verified(folder, stage, key)
        except FileNotFoundError:  # never stored, or evicted
            self.misses += 1
            return None
        except Rejected as why:
            self._reject(folder, stage, key, str(why))
            self.misses += 1
            return None
        os.utime(folder / ENTRY)  # most recently used
        self.hits += 1
        return CacheEntry(folder, meta)

    def _verified(self, folder: Path, stage: str, key: str) -> dict:
        """The entry's metadata once its MAC matches (before anything in it is used), then every file's name, size
        and sha256. FileNotFoundError: there is no entry."""
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            raise Rejected("it is not a folder")
        record = _read_record(folder / ENTRY)
        mac = record.pop("mac", None)
        if not isinstance(mac, str):
            raise Rejected("it has no MAC: an older deploykit wrote it")
        if not hmac.compare_digest(self._mac(stage, key, record).encode(), mac.encode("utf-8", "replace")):
            raise Rejected("its MAC does not match: it was edited, moved from another key, or made under another key")
        for name, facts in record["files"].items():
            path, size = _plain_file(folder, name)
            if size != facts["size"]:
                raise Rejected(f"{name} has {size} bytes instead of {facts['size']}")
            if sha256_of(path) != facts["sha256"]:
                raise Rejected(f"{name} no longer matches its sha256")
        return record["meta"]

    def _mac(self, stage: str, key: str, record: dict) -> str:
        """HMAC-SHA256 of the canonical JSON (sorted keys, no spaces) of the record (files, meta, stored time) with the
        format, stage and key it was stored under: folder names are no part of the record, yet bound by the MAC."""
        canonical = _canonical({"format": FORMAT, "stage": stage, "key": key, "record": record})
        return hmac.new(self._key, canonical.encode("ascii"), hashlib.sha256).hexdigest()

    def put(self, stage: str, key: str, files: dict[str, Path], meta: dict) -> CacheEntry:
        """Store copies of `files` (name in the entry -> source path) with `meta`; returns the stored entry."""
        final = self._folder(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            facts = {}
            for name, source in files.items():
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                facts[name] = {"size": target.stat().st_size, "sha256": sha256_of(target)}
            # The metadata as get() will read it back (tuples as lists, keys as text), so that both compute one MAC.
            record = {"files": facts, "meta": json.loads(json.dumps(meta)), "stored": time.time()}
            record["mac"] = self._mac(stage, key, record)
            (staging / ENTRY).write_text(_canonical(record), encoding="ascii")
            _remove(final)  # a damaged or concurrent copy: ours replaces it
            try:
                staging.rename(final)
            except OSError:  # another process stored the same key meanwhile: same inputs, same result
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.evict(keep=final)
        return CacheEntry(final, meta)

    def entries(self) -> Iterable[tuple[Path, float, int]]:
        """(folder, last use, bytes) of every entry."""
        for entry in self.root.glob(f"*/*/*/{ENTRY}"):
            folder = entry.parent
            try:
                size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
                yield folder, entry.stat().st_mtime, size
            except OSError:
                continue

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove least recently used entries until the store fits its cap; returns what was removed."""
        entries = sorted(self.entries(), key=lambda item: item[1])
        total = sum(size for _, _, size in entries)
        removed = []
        for folder, _, size in entries:
            if total <= self.max_bytes:
                break
            if folder == keep:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            removed.append(folder)
        return removed

    def _reject(self, folder: Path, stage: str, key: str, why: str) -> None:
        self.rejected += 1
        if self.log is not None:
            self.log.info(f"[yellow]Cache entry {stage}/{key[:12]} failed its integrity check ({escape(why)}); "
                          "rebuilding it.[/]")
        _remove(folder)


def _canonical(value: Any) -> str:
    """JSON with sorted keys and no spaces: one text per value, whatever order or layout it was read in."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _read_record(path: Path) -> dict:
    """entry.json, when it is a regular file (not a link, FIFO or device) of at most MAX_ENTRY_BYTES of JSON."""
    try:
        handle = os.open(path, _OPEN_FLAGS)
    except OSError as error:  # missing, or a link (ELOOP)
        raise Rejected(f"its {ENTRY} cannot be opened ({error.strerror})") from None
    with os.fdopen(handle, "rb") as file:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise Rejected(f"its {ENTRY} is not a regular file")
        data = file.read(MAX_ENTRY_BYTES + 1)
    if len(data) > MAX_ENTRY_BYTES:
        raise Rejected(f"its {ENTRY} is larger than {MAX_ENTRY_BYTES >> 20} MiB")
    try:
        record = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise Rejected(f"its {ENTRY} is not JSON ({error})") from None
    if not isinstance(record, dict):
        raise Rejected(f"its {ENTRY} is not a JSON object")
    return record


def _plain_file(folder: Path, name: str) -> tuple[Path, int]:
    """The entry's file `name` and its size, when the name is relative and stays inside the folder (no `..`), and
    every part of it is a real folder or, last, a regular file: no link can lead a read outside the entry."""
    parts = name.split("/")
    if any(part in ("", ".", "..") or "\\" in part or "\0" in part for part in parts):
        raise Rejected(f"{name!r} is not a plain name inside the entry")
    path = folder
    for index, part in enumerate(parts, start=1):
        path = path / part
        try:
            facts = os.lstat(path)
        except OSError as error:
            raise Rejected(f"{name} cannot be read ({error.strerror})") from None
        if not (stat.S_ISREG if index == len(parts) else stat.S_ISDIR)(facts.st_mode):
            raise Rejected(f"{name} is not a regular file inside the entry (a link, or another kind of file)")
    return path, facts.st_size


def _remove(path: Path) -> None:
    """Remove an entry's folder, or what stands in its place (a link is removed, never followed)."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:  # another process removed it first
        pass
