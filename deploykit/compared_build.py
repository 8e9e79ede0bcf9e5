"""One side of `deploykit compare`: an encoder build, given as its target folder or as what an earlier build
recorded (its report.json, or its entry in a `--summary-json` file).

Either may come from elsewhere (a CI artifact, a downloaded baseline): files are read bounded, a value is used only
in the type it must have, and a folder's artifact files are checked against what its report.json recorded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deploykit.errors import DeployKitError, quoted
from deploykit.user_files import inside, read_json

TASKS = ("embedding", "classification")
MAX_ARTIFACT_FILES = 16  # an artifact is one to three files (OpenVINO: .xml and .bin); more is no build's


@dataclass(frozen=True)
class ComparedBuild:
    """What a build recorded (in report.json's shape) and, for a target folder, its artifact files as they are now."""

    path: Path
    kind: str  # "folder", "report.json" or "summary.json"
    report: dict
    files: dict[str, tuple[int, str]] | None = None  # a folder's artifact files: path -> (bytes, sha256)

    @property
    def folder(self) -> Path | None:
        return self.path if self.kind == "folder" else None

    @property
    def bytes(self) -> int:
        """The artifact's size: its files' for a folder, else as recorded."""
        return sum(size for size, _ in self.files.values()) if self.files else self.report["artifact"]["bytes"]

    @property
    def digests(self) -> dict[str, str] | None:
        """The artifact files' sha256 by path (a folder's as they are, a report's as recorded; a summary has none)."""
        if self.files:
            return {name: digest for name, (_, digest) in self.files.items()}
        entries = self.report["artifact"].get("files")
        if self.kind != "report.json" or not isinstance(entries, list) or not 0 < len(entries) <= MAX_ARTIFACT_FILES:
            return None
        return {str(entry.get("path")): str(entry.get("sha256")) for entry in entries if isinstance(entry, dict)}

    @property
    def runtime_config(self) -> object:
        return self.report["artifact"].get("runtime_config", {})

    @property
    def task(self) -> str | None:
        return (self.report.get("model") or {}).get("task")

    def describe(self) -> dict:
        artifact = self.report["artifact"]
        return {"path": str(self.path), "kind": self.kind, "target": self.report.get("target"),
                "artifact": {**{key: artifact.get(key) for key in ("path", "precision", "sha256")},
                             "bytes": self.bytes}}


def read_build(path: Path, role: str, target: str | None = None) -> ComparedBuild:
    """BASE or NEW as given: a target folder, or (BASE only) a report.json or a summary.json, whose entry for
    `target` is taken. `role` names it in messages."""
    files = ", or a report.json or summary.json file" if role == "BASE" else ""
    if path.is_dir():
        if os.path.lexists(path / "generation.json"):
            raise _decoder(role, path)
        if not os.path.lexists(path / "report.json"):
            raise DeployKitError(f"{role} {path} holds no report.json; pass a target folder written by `deploykit "
                                 f"build` (OUT/<target>){files}.")
        build = _encoder(ComparedBuild(path, "folder", read_json(path / "report.json", dict, untrusted=True)), role)
        return ComparedBuild(path, "folder", build.report, _artifact_files(build))
    if role != "BASE" or not path.is_file():
        raise DeployKitError(f"{role} {path} is not a folder{' nor a file' if files else ''}; pass a target folder "
                             f"written by `deploykit build` (OUT/<target>){files}.")
    document = read_json(path, dict, untrusted=True)
    if isinstance(document.get("targets"), list):
        return _encoder(ComparedBuild(path, "summary.json", _summary_entry(document, path, target)), role)
    return _encoder(ComparedBuild(path, "report.json", document), role)


def check_same_task(base: ComparedBuild, new: ComparedBuild) -> None:
    """Refuse an embedding build against a classifier: their outputs and fidelity measures are not comparable."""
    if None not in (base.task, new.task) and base.task != new.task:
        raise DeployKitError(f"BASE is an {base.task} build and NEW a {new.task} build; compare two builds of the "
                             "same model task.")


def _decoder(role: str, path: Path) -> DeployKitError:
    return DeployKitError(f"compare handles encoder builds; {role} {path} is a decoder build (its report.json gives "
                          "perplexity and decode speed); pass the target folders of two encoder builds.")


def _encoder(build: ComparedBuild, role: str) -> ComparedBuild:
    """The build, once its report is an encoder build's as deploykit writes it."""
    report = build.report
    if report.get("task") == "generation":
        raise _decoder(role, build.path)
    artifact, model = report.get("artifact"), report.get("model") or {}
    size = artifact.get("bytes") if isinstance(artifact, dict) else None
    if not (isinstance(size, int) and size > 0 and isinstance(report.get("metrics"), dict)
            and isinstance(model, dict) and model.get("task", "embedding") in TASKS):
        kind = "report.json" if build.kind == "folder" else build.kind
        raise DeployKitError(f"{role} {build.path} is not an encoder build's {kind} as deploykit writes it (no "
                             "artifact bytes, metrics or model task); rebuild it with `deploykit build`.")
    return build


def _summary_entry(document: dict, path: Path, target: str | None) -> dict:
    """The summary.json entry of `target` (NEW's), in report.json's shape as far as a summary records it."""
    entries = [entry for entry in document["targets"] if isinstance(entry, dict)]
    entry = next((entry for entry in entries if entry.get("target") == target), None)
    if entry is None:
        found = ", ".join(quoted(entry.get("target"), 40) for entry in entries) or "none"
        raise DeployKitError(f"BASE {path} has no target {quoted(target, 40)}, NEW's (it has {found}); pass the "
                             "summary.json of a build of that target.")
    return {"target": target, "artifact": entry.get("artifact"), "model": {},
            "metrics": {"latency_ms": {"p50": entry.get("latency_ms_p50")}, "fidelity": entry.get("fidelity")}}


def _artifact_files(build: ComparedBuild) -> dict[str, tuple[int, str]]:
    """Each artifact file's size and sha256 as the file is now, by its path in the folder; a file that is not what
    report.json recorded (the folder changed since its build) is refused."""
    from deploykit.report.manifest import sha256_of

    entries = build.report["artifact"].get("files")
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_ARTIFACT_FILES:
        raise DeployKitError(f"{build.path}/report.json lists no artifact files; rebuild the folder with this "
                             "deploykit.")
    files = {}
    for entry in entries:
        name = entry.get("path") if isinstance(entry, dict) else None
        path = inside(build.path, name, f"{build.path}/report.json's artifact file")
        size, digest = path.stat().st_size, sha256_of(path)
        if size != entry.get("bytes") or digest != entry.get("sha256"):
            raise DeployKitError(f"{path} is not the file its report.json recorded (its size or sha256 differs); run "
                                 f"`deploykit verify {build.path}`, or rebuild the folder.")
        files[name] = (size, digest)
    return files
