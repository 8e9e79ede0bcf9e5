"""`--summary-json`: one small JSON document per build run, for CI scripts that gate, label or comment on it
without reading each target's full report.json.

    {"exit_code": 3, "passed": false, "error": null, "targets": [
        {"target": "arm-cpu", "passed": false, "inconclusive": false, "exit_code": 3, "folder": "dist/arm-cpu",
         "artifact": {"path": "dist/arm-cpu/model.tflite", "precision": "dynamic-int8", "bytes": ..., "sha256": ...},
         "latency_ms_p50": 7.6, "fidelity": {...}, "accuracy_drop": null, "gates": [{name, value, limit, passed[, inconclusive, reason]}]}]}
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

from deploykit.atomic_files import write_atomically
from deploykit.results import BuildResult


def target_summary(result: BuildResult) -> dict:
    report = result.report
    artifact, metrics = report["artifact"], report["metrics"]
    return {
        "target": result.target,
        "passed": result.passed,
        "inconclusive": result.inconclusive,
        "exit_code": result.exit_code,
        "folder": str(result.folder),
        "artifact": {"path": str(result.folder / artifact["path"]), "format": artifact["format"],
                     "precision": artifact["precision"], "bytes": artifact["bytes"], "sha256": artifact["sha256"]},
        "latency_ms_p50": metrics["latency_ms"]["p50"],
        "baseline_latency_ms_p50": report["baseline"]["latency_ms"]["p50"],
        "speedup_vs_baseline": metrics["speedup_vs_baseline"],
        "speedup_interval": report["speed"]["speedup_interval"],
        "speedup_timing": report["speed"].get("timing"),  # "alternating rounds" or "separate runs"
        "speedup_ratio_cv": (report["speed"].get("paired") or {}).get("ratio_cv"),
        "slower_than_baseline": report["speed"]["slower_than_baseline"],
        "faster_candidates_displaced": report["speed"]["faster_candidates_displaced"],
        "fidelity": metrics["fidelity"],
        "accuracy_drop": metrics["accuracy_drop"],
        "gates": report["gates"]["checks"],
    }


def build_summary(results: list[BuildResult], exit_code: int, error: str | None = None) -> dict:
    """The run as a whole: its exit code, whether every target passed, the error that stopped it if any."""
    return {
        "deploykit_version": version("deploykit"),
        "exit_code": exit_code,
        "passed": exit_code == 0,
        "error": error,
        "targets": [target_summary(result) for result in results],
    }


def write_summary(path: Path, results: list[BuildResult], exit_code: int, error: str | None = None) -> Path:
    return write_atomically(path, json.dumps(build_summary(results, exit_code, error), indent=2) + "\n")
