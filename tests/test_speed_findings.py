"""A shipped artifact slower than its fp32 baseline, or than a candidate it displaced, is flagged with its interval."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from deploykit.report.speed import speed_findings, speed_warnings


def profile(center_ms: float, spread: float = 0.05, runs: int = 40, seed: int = 0) -> dict:
    samples = (center_ms * (1 + spread * np.random.default_rng(seed).standard_normal(runs))).round(4).tolist()
    return {"latency_ms": {"p50": float(np.median(samples))}, "latency_samples_ms": samples}


def candidate(label: str, center_ms: float, passed: bool, missed: tuple[str, ...] = (), seed: int = 1):
    checks = [{"name": name, "passed": False} for name in missed] or [{"name": "cosine_mean", "passed": True}]
    return SimpleNamespace(label=label, passed=passed, checks=checks,
                           measured=SimpleNamespace(profile=profile(center_ms, seed=seed)))


def test_an_artifact_slower_than_the_baseline_is_flagged_beyond_noise():
    int4 = candidate("int4-weights", 7.6, passed=True)
    speed = speed_findings(profile(4.6), int4, [int4])
    assert speed["slower_than_baseline"] and speed["slower_beyond_noise"]
    low, high = speed["speedup_interval"]
    assert low < 4.6 / 7.6 < high < 1


def test_a_faster_artifact_is_not_flagged():
    int8 = candidate("int8", 2.0, passed=True)
    speed = speed_findings(profile(4.6), int8, [int8])
    assert not speed["slower_than_baseline"] and speed["speedup_interval"][0] > 1
    assert speed["faster_candidates_displaced"] == []


def test_a_tie_within_noise_is_said_to_be_within_noise():
    same = candidate("fp16", 4.6, passed=True, seed=7)
    speed = speed_findings(profile(4.6, spread=0.2, seed=3), same, [same])
    low, high = speed["speedup_interval"]
    assert low < 1 < high
    assert not speed["slower_beyond_noise"]


def test_a_faster_candidate_that_missed_a_gate_is_listed_with_the_gate():
    int8 = candidate("int8", 4.0, passed=False, missed=("max_size_mb",), seed=2)
    int4 = candidate("int4-weights", 7.6, passed=True, seed=3)
    speed = speed_findings(profile(4.6), int4, [int8, int4])
    (row,) = speed["faster_candidates_displaced"]
    assert row["candidate"] == "int8" and row["missed"] == ["max_size_mb"] and row["beyond_noise"]
    assert 7.6 / 4.0 * 0.9 < row["faster_by"] < 7.6 / 4.0 * 1.1


def test_the_warnings_name_the_ratio_and_the_displaced_candidate():
    int8 = candidate("int8", 4.0, passed=False, missed=("max_size_mb",), seed=2)
    int4 = candidate("int4-weights", 7.6, passed=True, seed=3)
    speed = speed_findings(profile(4.6), int4, [int8, int4])
    report = {"metrics": {"speedup_vs_baseline": 4.6 / 7.6}, "speed": speed}
    first, second = speed_warnings(report)
    assert "slower than the fp32 baseline" in first and "0.61×" in first
    assert "int8" in second and "max_size_mb" in second


def test_a_runner_without_samples_compares_the_medians():
    chosen = SimpleNamespace(label="a", passed=True, checks=[],
                             measured=SimpleNamespace(profile={"latency_ms": {"p50": 5.0}}))
    speed = speed_findings({"latency_ms": {"p50": 4.0}}, chosen, [chosen])
    assert speed["slower_than_baseline"] and speed["speedup_interval"] is None
