"""Two artifacts timed in alternation, one separate run of each per round, for a runner without paired timing (adb:
benchmark_model loads one model per run). Each run pays its own process start and warm-up, so a round is slower and noisier than
a round of `profile_pair`; the ratio is still taken per round, so load that lasts a round hits both alike."""

from __future__ import annotations

import time

import numpy as np

from deploykit.profiling.base import ProfileRunner, ProfileSettings
from deploykit.profiling.build_folder import FolderArtifact
from deploykit.profiling.stats import paired_speedup


def alternating_timing(runner: ProfileRunner, backend: str, artifact: FolderArtifact, baseline: FolderArtifact,
                       threads: int, settings: ProfileSettings) -> dict:
    """The speed-up (baseline / artifact) as `profile_pair` gives it, from rounds of one `runner.profile` call of each
    at its own full-length sample, in ABBA order, each call `settings.paired.runs` timed runs. Rounds go on past
    `min_rounds` while the per-round ratio's coefficient of variation is above `max_cv`, up to `max_rounds` or
    `budget_s` seconds."""
    paired = settings.paired
    single = ProfileSettings(runs=paired.runs, warmup=settings.warmup, timeout_s=settings.timeout_s, op_profile=False)
    sides = (artifact, baseline)
    rounds, waits, started, profile = [], [], time.monotonic(), {}
    while len(rounds) < paired.max_rounds:
        medians, waited = [0.0, 0.0], [None, None]
        for index in (0, 1) if len(rounds) % 2 == 0 else (1, 0):
            side = sides[index]
            profile = runner.profile(backend, side.path, side.runtime_config, side.sample, threads, single)
            medians[index], waited[index] = profile["latency_ms"]["p50"], profile.get("run_queue_wait_share")
        rounds.append(medians)
        waits.append(waited)
        ratios = np.asarray([baseline_ms / artifact_ms for artifact_ms, baseline_ms in rounds])
        if len(rounds) >= paired.min_rounds and (ratios.std() / ratios.mean() <= paired.max_cv
                                                 or time.monotonic() - started > paired.budget_s):
            break
    return {**paired_speedup(rounds, wait_shares=waits, min_rounds=paired.min_rounds,
                             max_wait_share=paired.max_wait_share),
            "runtime": profile["runtime"], "device": profile["device"]}
