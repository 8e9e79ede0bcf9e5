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
        "p50_interval": median_interval(values),
        "two_peaks": two_peaks(values),
    }


# Fewer timed runs than this cannot show two peaks apart from chance.
MIN_RUNS_FOR_PEAKS = 30


def two_peaks(values, min_share: float = 0.1, max_valley: float = 0.7, grid: int = 256) -> dict | None:
    """Two peaks in the timed runs (a machine or runtime switching between two speeds: another job coming and going,
    frequency scaling, a delegate falling back), else None. The density is a Gaussian kernel estimate with
    Silverman's bandwidth (which smooths rather than invents peaks); two of its maxima count when the valley between
    them is at most `max_valley` of the lower one (0.7: a dip a histogram would show) and each side holds at least
    `min_share` of the runs (10%: a slow tail of a few preempted runs is not a second peak). On unimodal samples of
    100 runs (normal, log-normal, exponential, gamma, uniform) it fires in at most 2% of draws."""
    values = np.asarray(values, np.float64)
    if len(values) < MIN_RUNS_FOR_PEAKS:
        return None
    q75, q25 = np.percentile(values, [75, 25])
    sigma = min(values.std(), (q75 - q25) / 1.34) or values.std()
    bandwidth = 0.9 * sigma * len(values) ** -0.2
    if bandwidth <= 0:
        return None
    xs = np.linspace(values.min() - 2 * bandwidth, values.max() + 2 * bandwidth, grid)
    density = np.exp(-0.5 * ((xs[:, None] - values[None, :]) / bandwidth) ** 2).sum(axis=1)
    tops = [i for i in range(1, grid - 1) if density[i - 1] <= density[i] > density[i + 1]]
    best = None
    for position, first in enumerate(tops):
        for second in tops[position + 1:]:
            valley = first + int(np.argmin(density[first:second + 1]))
            below = float((values < xs[valley]).mean())
            depth = density[valley] / min(density[first], density[second])
            if min(below, 1 - below) >= min_share and depth <= max_valley and (best is None or depth < best[0]):
                best = (depth, xs[first], xs[second], below)
    if best is None:
        return None
    return {"peaks_ms": [round(float(best[1]), 4), round(float(best[2]), 4)], "share_in_faster": round(best[3], 4)}


def median_interval(values, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> list[float]:
    """A percentile-bootstrap interval at `level` for the median of `values`: how far a p50 can move from
    resampling alone, so that a latency gate is decided on what the runs can tell apart. Seeded."""
    medians = _bootstrap_medians(np.asarray(values, np.float64), np.random.default_rng(seed), resamples)
    return [round(value, 4) for value in _interval(medians, level)]


def _bootstrap_medians(values: np.ndarray, generator: np.random.Generator, resamples: int) -> np.ndarray:
    """The medians of `resamples` resamples of `values` with replacement."""
    return np.median(values[generator.integers(0, len(values), (resamples, len(values)))], axis=1)


def _interval(estimates: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` share of bootstrap estimates: a percentile-bootstrap interval."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


def ratio_interval(numerator_ms: list[float], denominator_ms: list[float], level: float = 0.95,
                   resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """median(numerator) / median(denominator) with a percentile-bootstrap interval at `level`: how far the ratio
    of two timed series can move from resampling alone (a speed-up is baseline / artifact). Seeded, so a report
    states the same interval for the same timings."""
    first, second = np.asarray(numerator_ms, np.float64), np.asarray(denominator_ms, np.float64)
    generator = np.random.default_rng(seed)
    medians = [_bootstrap_medians(values, generator, resamples) for values in (first, second)]
    low, high = _interval(medians[0] / medians[1], level)
    return float(np.median(first) / np.median(second)), low, high


# Per-round ratios whose two halves' medians differ by more than this share drifted (thermal throttling, a
# frequency governor, another job starting): the report says so beside the interval.
DRIFT = 0.10


def paired_speedup(rounds_ms: list[list[float]], wait_shares: list[list[float | None]] | None = None,
                   min_rounds: int = 1, max_wait_share: float = 1.0, level: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> dict:
    """The speed-up (baseline / artifact) from alternating rounds [[artifact ms, baseline ms], ...]: the median of
    the per-round ratios, a percentile-bootstrap interval over rounds at `level`, the coefficients of variation, and
    whether the ratio drifted between the first and second half of the rounds. Seeded: the same rounds give the
    same interval.

    `wait_shares` ([[artifact, baseline], ...], each the share of the side's time its threads waited for a core, or
    None where unknown): only rounds in which neither side waited more than `max_wait_share` count. With fewer
    than `min_rounds` of them every round is used and the result is `inconclusive`: another process held the
    cores, and what was measured is the ratio on a machine with fewer free cores."""
    rounds = np.asarray(rounds_ms, np.float64)
    waits = wait_shares or [[None, None]] * len(rounds)
    clean = np.array([all(share is None or share <= max_wait_share for share in pair) for pair in waits], bool)
    inconclusive = int(clean.sum()) < min_rounds
    used = rounds if inconclusive else rounds[clean]
    ratios = used[:, 1] / used[:, 0]
    low, high = _interval(_bootstrap_medians(ratios, np.random.default_rng(seed), resamples), level)
    half = len(ratios) // 2
    first, second = (np.median(ratios[:half]), np.median(ratios[half:])) if half else (ratios[0], ratios[0])
    cv = lambda values: round(float(values.std() / values.mean()), 4)  # noqa: E731
    known = [share for pair in waits for share in pair if share is not None]
    return {"speedup": round(float(np.median(ratios)), 4), "interval": [round(low, 4), round(high, 4)],
            "level": level, "rounds": int(len(ratios)), "ratio_cv": cv(ratios), "artifact_cv": cv(used[:, 0]),
            "baseline_cv": cv(used[:, 1]), "drift": bool(abs(second - first) / np.median(ratios) > DRIFT),
            "contended_rounds": int((~clean).sum()), "rounds_timed": int(len(rounds)),
            "median_wait_share": round(float(np.median(known)), 4) if known else None,
            "inconclusive": bool(inconclusive),
            "rounds_ms": [[round(float(a), 4), round(float(b), 4)] for a, b in rounds]}
