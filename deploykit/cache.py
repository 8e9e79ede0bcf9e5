"""A content-addressed store for the expensive stages of a build: exported artifacts (with the fine-tuned model's
tokenizer and what each pass did), their measurements, and the original model's outputs on the evaluation data.

An entry's key is the sha256 of everything its result depends on: the model's weights
and vocabulary, the data, the pass parameters, the precision, the target's export
settings, and the versions of deploykit (its source files) and of every toolchain. So a
changed input misses, and the same inputs give back the same bytes. An entry lists each
file's sha256; a file that no longer matches (a bit flip, a half-copied folder) drops
the entry and the stage runs again. Entries are written to a temporary folder and
renamed into place, so processes sharing a cache (several search workers on one NFS
folder) never read half an entry. The store keeps under a size cap by removing the
least recently used entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from deploykit.report.manifest import sha256_of

ENTRY = "entry.json"
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


class ContentCache:
    """Entries by stage and key under `root/<stage>/<key[:2]>/<key>/`, each with its files and `entry.json`."""

    def __init__(self, root: Path, max_bytes: float = DEFAULT_MAX_GB * 1e9, log=None):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.log = log
        self.hits = 0
        self.misses = 0

    def _folder(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / key

    def get(self, stage: str, key: str) -> CacheEntry | None:
        """The entry when every file matches its recorded sha256; a damaged entry is removed (a miss)."""
        folder = self._folder(stage, key)
        try:
            record = json.loads((folder / ENTRY).read_text(encoding="utf-8"))
            damaged = [name for name, sha in record["files"].items() if sha256_of(folder / name) != sha]
        except FileNotFoundError:
            if folder.exists():  # files missing under a readable entry, or the entry itself gone
                self._drop(folder, stage, "a file is missing")
            self.misses += 1
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            self._drop(folder, stage, f"its entry.json is unreadable ({error})")
            self.misses += 1
            return None
        if damaged:
            self._drop(folder, stage, f"{', '.join(damaged)} no longer matches its sha256")
            self.misses += 1
            return None
        os.utime(folder / ENTRY)  # most recently used
        self.hits += 1
        return CacheEntry(folder, record["meta"])

    def put(self, stage: str, key: str, files: dict[str, Path], meta: dict) -> CacheEntry:
        """Store copies of `files` (name in the entry -> source path) with `meta`; returns the stored entry."""
        final = self._folder(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            hashes = {}
            for name, source in files.items():
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                hashes[name] = sha256_of(target)
            (staging / ENTRY).write_text(json.dumps({"files": hashes, "meta": meta, "stored": time.time()},
                                                    indent=1), encoding="utf-8")
            if final.exists():  # a damaged or concurrent copy: ours replaces it
                shutil.rmtree(final, ignore_errors=True)
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

    def _drop(self, folder: Path, stage: str, why: str) -> None:
        if self.log is not None:
            self.log.info(f"[yellow]Cache entry {stage}/{folder.name[:12]} is damaged ({why}); rebuilding it.[/]")
        shutil.rmtree(folder, ignore_errors=True)
