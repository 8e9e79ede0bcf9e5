"""Profile what `deploykit build` wrote: an artifact, or a whole target folder, on any runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.errors import DeployKitError, quoted
from deploykit.profiling.base import ProfileRunner, ProfileSettings, get_runner
from deploykit.user_files import inside, read_json, read_untrusted_bytes


def artifact_in(path: Path) -> Path:
    """The artifact a path names: the file itself, or the one a target folder's report.json ships (a plain file
    of that folder: report.json may come from elsewhere and must not point outside it)."""
    if path.is_dir():
        report_file = path / "report.json"
        if not (report_file.exists() or report_file.is_symlink()):
            raise DeployKitError(f"{path} has no report.json; pass a target folder written by `deploykit build` "
                                 "or its model.xml/model.tflite/model.onnx.")
        artifact = read_json(report_file, dict, untrusted=True).get("artifact")
        if not isinstance(artifact, dict) or "path" not in artifact:
            raise DeployKitError(f"{report_file} is not as deploykit writes it (no artifact path); rebuild the folder "
                                 "with `deploykit build`.")
        return inside(path, artifact["path"], f"{report_file}'s artifact path")
    if not path.is_file():
        raise DeployKitError(f"artifact {str(path)!r} does not exist; pass a model.xml or model.tflite from a build "
                             "folder, or the folder itself.")
    return path


def profile_path(path: str | Path, threads: int | None = None, settings: ProfileSettings = ProfileSettings(),
                 runner: ProfileRunner | None = None) -> dict:
    """Profile an artifact written by `deploykit build` (or the artifact of a target folder), from the files beside it.

    The input is a full-length sequence (every position unmasked), the worst case
    for the sequence length the artifact was built for; the runtime settings come
    from the report.json beside it. `runner`: where to time it (default: this machine).
    """
    from deploykit.backends.base import backend_for_file

    backend = backend_for_file(artifact_in(Path(path)))
    artifact = folder_artifact(Path(path))
    runner = runner or get_runner("local")
    report = artifact.report
    profile = runner.profile(backend.name, artifact.path, artifact.runtime_config, artifact.sample,
                             threads or default_threads(runner, report), settings)
    return {"artifact": str(artifact.path), "backend": backend.name, "sequence_length": artifact.sequence_length,
            "report": report, **profile}


@dataclass
class FolderArtifact:
    """An artifact of a build folder, with what running it needs from the files beside it."""

    path: Path
    sample: dict[str, np.ndarray]  # batch 1, full length, every position unmasked
    runtime_config: dict
    report: dict  # the report.json beside it; empty when there is none

    @property
    def sequence_length(self) -> int:
        return int(self.sample["token_ids"].shape[1])


def folder_artifact(path: Path) -> FolderArtifact:
    """The artifact a path names (a target folder or the file), with a sample input from its tokenizer.json."""
    path = artifact_in(path)
    folder = path.parent
    tokenizer_file = folder / "tokenizer.json"
    if not (tokenizer_file.exists() or tokenizer_file.is_symlink()):
        raise DeployKitError(f"{folder} has no tokenizer.json; pass an artifact from a `deploykit build` folder.")
    config = read_json(tokenizer_file, dict, untrusted=True)
    report = {}
    try:
        length = int(config["sequence_length"])
        vocabulary_file = inside(folder, config["vocabulary"], f"{tokenizer_file}'s vocabulary")
        vocabulary = read_untrusted_bytes(vocabulary_file).decode("utf-8-sig").splitlines()
        special = config["special_tokens"]
        ids = [vocabulary.index(special[name]) for name in ("unk", "cls", "sep")]
        report_file = folder / "report.json"
        if report_file.exists() or report_file.is_symlink():
            report = read_json(report_file, dict, untrusted=True)
        runtime_config = report.get("artifact", {}).get("runtime_config", {})
        if not isinstance(runtime_config, dict):
            raise TypeError("runtime_config is not an object")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
        raise DeployKitError(f"{folder}'s tokenizer.json or report.json is not as deploykit writes it "
                             f"({type(error).__name__}: {error}); rebuild the folder with `deploykit build`.") from None
    if not 2 <= length <= 1_000_000:
        raise DeployKitError(f"{tokenizer_file} gives sequence_length {length}; rebuild the folder with `deploykit build`.")
    token_ids = np.full((1, length), ids[0], dtype=np.int32)
    token_ids[0, 0], token_ids[0, -1] = ids[1], ids[2]
    sample = {"token_ids": token_ids, "padding_mask": np.ones((1, length), dtype=np.int32)}
    return FolderArtifact(path, sample, runtime_config, report)


def default_threads(runner: ProfileRunner, report: dict) -> int:
    """Threads when none are given: the runner's choice for the build's target (a device's setting, the
    target's threads within this host's cores), else all of this host's cores."""
    import os

    from deploykit.targets import Target

    if "target_profile" in report:
        try:
            return runner.threads(Target.model_validate(report["target_profile"]))
        except ValueError:
            pass
    return getattr(runner.settings, "threads", None) or os.cpu_count() or 1


def build_target_of(path: str | Path):
    """The target a build folder (or an artifact in one) was built for, from its report.json."""
    from deploykit.targets import Target

    artifact = artifact_in(Path(path))
    report_file = artifact.parent / "report.json"
    if not (report_file.exists() or report_file.is_symlink()):
        raise DeployKitError(f"{artifact.parent} has no report.json, which names the target a device is checked "
                             "against; profile a folder written by `deploykit build`.")
    try:
        return Target.model_validate(read_json(report_file, dict, untrusted=True)["target_profile"])
    except (KeyError, ValueError) as error:
        raise DeployKitError(f"{report_file} holds no valid target_profile ({type(error).__name__}); rebuild the "
                             "folder with this deploykit.") from None


def profiled_measurement(measured: dict) -> dict:
    """One `deploykit profile` run as a profile measurement, described by the build's report.json (which may come
    from elsewhere: a value of the wrong shape is a one-line error)."""
    from deploykit.profiling.profiles import measurement

    report = measured["report"]
    try:
        shipped = report.get("artifact", {})
        candidate = next((c for c in report.get("candidates", []) if c["candidate"] == shipped.get("candidate")), {})
        return measurement(str(candidate.get("candidate", shipped.get("precision", "artifact"))),
                           str(shipped.get("precision")), str(candidate.get("recipe", "")),
                           measured["sequence_length"], candidate.get("architecture"), measured, shipped.get("bytes"))
    except (AttributeError, KeyError, TypeError) as error:
        raise DeployKitError(f"{measured['artifact']}'s report.json is not as deploykit writes it "
                             f"({type(error).__name__}: {quoted(str(error))}); rebuild the folder.") from None
