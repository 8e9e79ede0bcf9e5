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


def _encoded(inputs: Inputs) -> dict:
    """Inputs as plain lists, so that the worker needs no file format beyond JSON."""
    return {name: {"dtype": str(values.dtype), "shape": list(values.shape), "values": values.ravel().tolist()}
            for name, values in inputs.items()}


def worker_request(backend: str, artifact: str, runtime_config: dict, sample: Inputs, threads: int,
                   settings: ProfileSettings, baseline: tuple[str, dict] | None = None,
                   baseline_sample: Inputs | None = None) -> str:
    """The request file's text for timing `sample` (batch 1). `baseline` (its path and runtime config): time the two
    side by side in alternating rounds instead, the baseline on `baseline_sample` when it is given."""
    request = {"backend": backend, "artifact": artifact, "runtime_config": runtime_config, "inputs": _encoded(sample),
               "threads": threads, "runs": settings.runs, "warmup": settings.warmup, "op_profile": settings.op_profile}
    if baseline is not None:
        request["pair"] = {"artifact": baseline[0], "runtime_config": baseline[1], **asdict(settings.paired)}
        if baseline_sample is not None:
            request["pair"]["inputs"] = _encoded(baseline_sample)
    return json.dumps(request)


def outputs_request(backend: str, artifact: str, runtime_config: dict, inputs: Inputs, threads: int) -> str:
    """The request file's text for running the artifact on every row of `inputs` (the evaluation samples)."""
    return json.dumps({"mode": "outputs", "backend": backend, "artifact": artifact, "runtime_config": runtime_config,
                       "inputs": _encoded(inputs), "threads": threads})


# The outputs file holds float32 rows; more than this many values per row is no encoder's output (a 250k-class head
# at most): the file is refused before it is parsed.
MAX_OUTPUT_VALUES_PER_ROW = 1_000_000


def outputs_limit(rows: int) -> int:
    """The most bytes an outputs.npy of `rows` rows may hold (its header included)."""
    return 4 * rows * MAX_OUTPUT_VALUES_PER_ROW + 4096


def outputs_result(stdout: str, outputs_file: Path, rows: int) -> dict:
    """The device's outputs ({"outputs": float32 array of `rows` rows, "runtime", "device"}) from the worker's JSON
    line and the outputs.npy it wrote. The file came from the device: it is read bounded, without pickles, and must
    hold `rows` finite float32 rows."""
    import io

    import numpy as np

    from deploykit.user_files import read_untrusted_bytes

    try:
        measured = json.loads(stdout.strip().splitlines()[-1])
        data = read_untrusted_bytes(outputs_file, limit=outputs_limit(rows))
        outputs = np.load(io.BytesIO(data), allow_pickle=False)
        if outputs.dtype != np.float32 or outputs.ndim < 2 or len(outputs) != rows:
            raise ValueError(f"expected {rows} float32 rows, got {outputs.dtype} {list(outputs.shape)}")
        return {"outputs": outputs, "runtime": measured["runtime"], "device": measured["device"]}
    except (IndexError, KeyError, TypeError, ValueError) as error:
        raise DeployKitError(f"the outputs the device's worker sent back are not what deploykit expects "
                             f"({type(error).__name__}: {error}); the device's worker and this deploykit may differ "
                             "in version.") from None


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
