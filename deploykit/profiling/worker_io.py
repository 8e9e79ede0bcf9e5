"""What the device-side worker is asked and what it answers, for every runner that starts it (local, ssh)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from deploykit.errors import DeployKitError
from deploykit.profiling.base import Inputs, PairedTiming, ProfileSettings
from deploykit.profiling.stats import latency_summary, paired_speedup

WORKER_SCRIPT = Path(__file__).with_name("device_worker.py")
WORKER_ERROR_PREFIX = "deploykit-worker: "


def worker_request(backend: str, artifact: str, runtime_config: dict, sample: Inputs, threads: int,
                   settings: ProfileSettings, baseline: tuple[str, dict] | None = None) -> str:
    """The request file's text: inputs as plain lists so the worker needs no file format beyond JSON. `baseline`
    (its path and runtime config): time the two side by side in alternating rounds instead."""
    inputs = {name: {"dtype": str(values.dtype), "shape": list(values.shape), "values": values.ravel().tolist()}
              for name, values in sample.items()}
    request = {"backend": backend, "artifact": artifact, "runtime_config": runtime_config, "inputs": inputs,
               "threads": threads, "runs": settings.runs, "warmup": settings.warmup, "op_profile": settings.op_profile}
    if baseline is not None:
        request["pair"] = {"artifact": baseline[0], "runtime_config": baseline[1], **asdict(settings.paired)}
    return json.dumps(request)


def pair_result(stdout: str, paired: PairedTiming) -> dict:
    """The paired timing from the worker's JSON line: the speed-up over rounds with its interval and spread, from
    the rounds no other process disturbed (or every round, marked inconclusive, when too few were)."""
    try:
        measured = json.loads(stdout.strip().splitlines()[-1])
        waits = measured.get("rounds_wait_share")  # absent from a worker older than the wait check
        clean = {"wait_shares": waits, "min_rounds": paired.min_rounds, "max_wait_share": paired.max_wait_share}
        return {**paired_speedup(measured["rounds_ms"], **clean),
                "by_fastest_run": paired_speedup(measured["rounds_min_ms"], **clean),
                "runtime": measured["runtime"], "device": measured["device"]}
    except (IndexError, KeyError, TypeError, ValueError) as error:
        raise DeployKitError(f"the profiling worker's output is not what deploykit expects ({type(error).__name__}: "
                             f"{error}); the device's worker and this deploykit may differ in version.") from None


def worker_result(stdout: str, threads: int) -> dict:
    """The runner's profile from the worker's JSON line: latency summary, memory, runtime, device, per-op times."""
    try:
        measured = json.loads(stdout.strip().splitlines()[-1])
        profile = {
            "latency_ms": latency_summary(measured["latencies_ms"]),
            # Every timed run, for the report's latency distribution (a summary hides a bimodal or drifting runtime).
            "latency_samples_ms": [round(float(value), 4) for value in measured["latencies_ms"]],
            # Share of the timed runs' wall time the worker's threads waited for a core (another process's load).
            "run_queue_wait_share": measured.get("run_queue_wait_share"),
            "peak_rss_mb": measured["peak_rss_mb"],
            "rss_before_load_mb": measured["rss_before_load_mb"],
            "threads": threads,
            "runtime": measured["runtime"],
            "device": measured["device"],
        }
    except (IndexError, KeyError, TypeError, ValueError) as error:
        raise DeployKitError(f"the profiling worker's output is not what deploykit expects ({type(error).__name__}: "
                             f"{error}); the device's worker and this deploykit may differ in version.") from None
    if "op_profile" in measured:
        profile["op_profile"] = measured["op_profile"]
    return profile


def worker_error(stderr: str) -> str | None:
    """The worker's own one-line message (a missing runtime, a missing artifact), when it printed one."""
    lines = [line for line in stderr.splitlines() if line.startswith(WORKER_ERROR_PREFIX)]
    return lines[-1][len(WORKER_ERROR_PREFIX):] if lines else None
