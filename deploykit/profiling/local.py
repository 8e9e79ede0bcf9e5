"""The `local` profiling runner: times the artifact on this machine's CPU, each in its own worker process."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import platform
import re
from pathlib import Path

import numpy as np

from deploykit.backends.base import Inputs
from deploykit.errors import DeployKitError
from deploykit.profiling.base import ProfileRunner, ProfileSettings, get_runner
from deploykit.profiling.stats import latency_summary
from deploykit.subprocesses import run_step
from deploykit.user_files import read_json, read_text


class LocalRunner(ProfileRunner):
    """This machine. A target's `host_match` regex says when this host is an instance of its device class."""

    name = "local"

    def threads(self, target) -> int:
        """The target's thread count, never more than this host's cores (oversubscription only adds noise)."""
        cores = os.cpu_count() or 1
        return min(target.threads or cores, cores)

    def describe(self, target, threads: int) -> dict:
        host = host_description()
        on_device = bool(target.host_match) and re.search(target.host_match, host) is not None
        if on_device:
            note = f"Measured on this host ({host}, {threads} threads), which is an instance of the target's device class."
        else:
            note = (f"Measured on this host ({host}, {threads} threads), not on the target's device ({target.device}): "
                    "ratios between artifact and baseline carry over better than absolute latencies.")
        return {"runner": self.name, "host": host, "cores": os.cpu_count(), "threads": threads,
                "on_target_device": on_device, "note": note}

    def profile(self, backend: str, artifact: Path, runtime_config: dict, sample: Inputs, threads: int,
                settings: ProfileSettings) -> dict:
        return profile_artifact(backend, artifact, runtime_config, sample, threads, settings)


def host_description() -> str:
    """'<arch> <cpu model name>' of this machine, e.g. 'x86_64 AMD EPYC 9654'."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {model}".strip()


def profile_artifact(
    backend: str, artifact: Path, runtime_config: dict, sample: Inputs, threads: int, settings: ProfileSettings
) -> dict:
    """Latency summary, peak RSS and runtime facts of one artifact on a batch-1 sample, in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="deploykit-profile-") as folder:
        inputs_path = Path(folder) / "inputs.npz"
        np.savez(inputs_path, **sample)
        request = {
            "backend": backend,
            "artifact": str(artifact),
            "runtime_config": runtime_config,
            "inputs": str(inputs_path),
            "threads": threads,
            "runs": settings.runs,
            "warmup": settings.warmup,
        }
        request_path = Path(folder) / "request.json"
        request_path.write_text(json.dumps(request))
        # -I: the worker sees neither the caller's working directory nor PYTHON* variables on its path.
        done = run_step(
            f"profiling {artifact.name} on {backend}",
            [sys.executable, "-I", "-m", "deploykit.profiling.worker", str(request_path)],
            settings.timeout_s, cwd=folder,
        )
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "latency_ms": latency_summary(measured["latencies_ms"]),
        "peak_rss_mb": measured["peak_rss_mb"],
        "rss_before_load_mb": measured["rss_before_load_mb"],
        "threads": threads,
        "runtime": measured["runtime"],
    }


def profile_path(path: str | Path, threads: int | None = None, settings: ProfileSettings = ProfileSettings()) -> dict:
    """Profile an artifact written by `deploykit build`, from the files beside it.

    The input is a full-length sequence (every position unmasked), the worst case
    for the sequence length the artifact was built for; the runtime settings come
    from the report.json beside it.
    """
    from deploykit.backends.base import backend_for_file

    path = Path(path)
    if not path.is_file():
        raise DeployKitError(f"artifact {str(path)!r} does not exist; pass a model.xml or model.tflite from a build folder.")
    backend = backend_for_file(path)
    tokenizer_file = path.parent / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise DeployKitError(f"{path.parent} has no tokenizer.json; profile an artifact from a `deploykit build` folder.")
    config = read_json(tokenizer_file, dict)
    try:
        length = int(config["sequence_length"])
        vocabulary = read_text(path.parent / Path(config["vocabulary"]).name).splitlines()
        special = config["special_tokens"]
        ids = [vocabulary.index(special[name]) for name in ("unk", "cls", "sep")]
        runtime_config = {}
        report_file = path.parent / "report.json"
        if report_file.is_file():
            runtime_config = read_json(report_file, dict)["artifact"].get("runtime_config", {})
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise DeployKitError(f"{path.parent}'s tokenizer.json or report.json is not as deploykit writes it "
                             f"({type(error).__name__}: {error}); rebuild the folder with `deploykit build`.") from None
    if not 2 <= length <= 1_000_000:
        raise DeployKitError(f"{tokenizer_file} gives sequence_length {length}; rebuild the folder with `deploykit build`.")
    token_ids = np.full((1, length), ids[0], dtype=np.int32)
    token_ids[0, 0], token_ids[0, -1] = ids[1], ids[2]
    sample = {"token_ids": token_ids, "padding_mask": np.ones((1, length), dtype=np.int32)}
    runner = get_runner("local")
    profile = runner.profile(backend.name, path, runtime_config, sample, threads or os.cpu_count() or 1, settings)
    return {"artifact": str(path), "backend": backend.name, "sequence_length": length, **profile}
