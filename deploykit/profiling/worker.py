"""Profiling worker: loads one artifact with its runtime in a fresh process and times it.

A fresh process per artifact keeps measurements honest: peak resident memory is
the runtime's and the model's alone (no TensorFlow, no other artifact loaded),
and no earlier run warms caches for the next. Reads a JSON request, prints JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from deploykit.backends.base import get_backend


def _memory_mb(field: str) -> float:
    """A /proc/self/status memory field in MB (VmRSS: now, VmHWM: peak).

    VmHWM rather than getrusage's ru_maxrss: Linux keeps ru_maxrss across exec, so
    a worker started by a large parent would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}; peak memory needs Linux")


def measure(request: dict) -> dict:
    backend = get_backend(request["backend"])
    inputs = dict(np.load(request["inputs"]))
    before_load_mb = _memory_mb("VmRSS")
    runner = backend.load(Path(request["artifact"]), request["threads"], request["runtime_config"])
    for _ in range(request["warmup"]):
        runner(inputs)
    latencies = []
    for _ in range(request["runs"]):
        start = time.perf_counter_ns()
        runner(inputs)
        latencies.append((time.perf_counter_ns() - start) / 1e6)
    peak_mb = _memory_mb("VmHWM")
    return {
        "latencies_ms": latencies,
        "peak_rss_mb": round(peak_mb, 1),
        "rss_before_load_mb": round(before_load_mb, 1),
        "runtime": runner.facts,
    }


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(Path(sys.argv[1]).read_text()))))
