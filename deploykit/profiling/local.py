"""Local profiling: runs the artifact on this machine's CPU, each in its own worker process."""

from __future__ import annotations

import json
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
