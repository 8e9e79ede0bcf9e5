"""Local profiling: runs the artifact on this machine's CPU, each in its own worker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.backends.base import Inputs
from deploykit.errors import DeployKitError
from deploykit.profiling.stats import latency_summary


@dataclass(frozen=True)
class ProfileSettings:
    """How to time an artifact. 100 runs give a stable p99 estimate; 10 warm-up runs absorb lazy init."""

    runs: int = 100
    warmup: int = 10
    threads: int | None = None  # None: the target's thread count


def profile_artifact(
    backend: str, artifact: Path, runtime_config: dict, sample: Inputs, threads: int, settings: ProfileSettings
) -> dict:
    """Latency summary, peak RSS and runtime facts of one artifact on a batch-1 sample."""
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
        done = subprocess.run(
            [sys.executable, "-m", "deploykit.profiling.worker", str(request_path)],
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeployKitError(f"profiling {artifact.name} on {backend} failed: {tail}")
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
    config = json.loads(tokenizer_file.read_text())
    length = config["sequence_length"]
    vocabulary = (path.parent / config["vocabulary"]).read_text(encoding="utf-8").splitlines()
    special = config["special_tokens"]
    token_ids = np.full((1, length), vocabulary.index(special["unk"]), dtype=np.int32)
    token_ids[0, 0], token_ids[0, -1] = vocabulary.index(special["cls"]), vocabulary.index(special["sep"])
    sample = {"token_ids": token_ids, "padding_mask": np.ones((1, length), dtype=np.int32)}
    runtime_config = {}
    report_file = path.parent / "report.json"
    if report_file.is_file():
        runtime_config = json.loads(report_file.read_text())["artifact"].get("runtime_config", {})
    profile = profile_artifact(backend.name, path, runtime_config, sample, threads or os.cpu_count() or 1, settings)
    return {"artifact": str(path), "backend": backend.name, "sequence_length": length, **profile}
