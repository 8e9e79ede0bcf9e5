"""Latency statistics from raw per-run timings."""

from __future__ import annotations

import numpy as np


def latency_summary(latencies_ms: list[float]) -> dict:
    """p50/p90/p99, mean and min in milliseconds, and batch-1 throughput per second."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50": round(float(p50), 4),
        "p90": round(float(p90), 4),
        "p99": round(float(p99), 4),
        "mean": round(float(values.mean()), 4),
        "min": round(float(values.min()), 4),
        "runs": int(len(values)),
        "throughput_per_s": round(1000.0 / float(values.mean()), 2),
    }
