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
from deploykit.subprocesses import run_step
from deploykit.user_files import read_json, read_text


@dataclass(frozen=True)
class ProfileSettings:
    """How to time an artifact. 100 runs give a stable p99 estimate; 10 warm-up runs absorb lazy init."""

    runs: int = 100
    warmup: int = 10
    threads: int | None = None  # None: the target's thread count
    # A hung runtime must not hang the build: 100 runs of BERT-large on one slow core take about 2 minutes.
    timeout_s: float = 600.0


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
    profile = profile_artifact(backend.name, path, runtime_config, sample, threads or os.cpu_count() or 1, settings)
    return {"artifact": str(path), "backend": backend.name, "sequence_length": length, **profile}
