"""Speed-ups from alternating rounds: the statistics on synthetic rounds, and the worker on real artifacts through
the local runner and through a build's report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from deploykit.cli import main
from deploykit.profiling.base import PairedTiming, ProfileSettings
from deploykit.profiling.stats import paired_speedup

QUICK = ["--runs", "3", "--warmup", "1", "--evaluation-samples", "10", "--calibration-samples", "10"]


def test_load_that_hits_both_sides_of_a_round_leaves_the_ratio_alone():
    """A round slowed 1x to 3x by other work, the same for both artifacts: the ratio of each round stays 2.8."""
    load = np.random.default_rng(0).uniform(1, 3, 20)
    rounds = [[1.0 * factor, 2.8 * factor] for factor in load]
    paired = paired_speedup(rounds)
    assert paired["speedup"] == pytest.approx(2.8) and paired["interval"] == [pytest.approx(2.8)] * 2
    assert paired["ratio_cv"] < 1e-9 < paired["artifact_cv"] and not paired["drift"] and paired["rounds"] == 20


def test_noisy_rounds_give_an_interval_around_the_ratio_and_a_drift_is_flagged():
    noise = np.random.default_rng(1).normal(1, 0.05, 30)
    steady = paired_speedup([[1.0, 2.8 * factor] for factor in noise])
    low, high = steady["interval"]
    assert low < 2.8 < high and high - low < 0.3 and not steady["drift"]
    drifting = paired_speedup([[1.0, 2.0]] * 10 + [[1.0, 3.0]] * 10)
    assert drifting["drift"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_classifier, labelled_data):
    out = tmp_path_factory.mktemp("paired")
    result = CliRunner().invoke(main, ["build", str(tiny_classifier), "--target", "arm-cpu", "--data",
                                       str(labelled_data), "--out", str(out), *QUICK])
    assert result.exit_code == 0, result.output
    return out / "arm-cpu"


def test_a_build_reports_the_speed_up_from_alternating_rounds(built):
    report = json.loads((built / "report.json").read_text())
    speed = report["speed"]
    assert speed["timing"] == "alternating rounds"
    paired = speed["paired"]
    assert PairedTiming().min_rounds <= paired["rounds"] == len(paired["rounds_ms"]) <= PairedTiming().max_rounds
    assert report["metrics"]["speedup_vs_baseline"] == paired["speedup"] and speed["speedup_interval"] == paired["interval"]
    assert paired["interval"][0] <= paired["speedup"] <= paired["interval"][1]
    assert "alternating rounds against the fp32 baseline" in (built / "report.md").read_text()


def test_an_artifact_against_itself_comes_out_even(built):
    """The worker loads both and alternates them; the same bytes on both sides must come out about even (whether
    1 lies inside a 95% interval is itself a 1-in-20 chance, not asserted)."""
    from deploykit.profiling.base import get_runner

    artifact = built / "model.tflite"
    sample = {"token_ids": np.full((1, 16), 2, np.int32), "padding_mask": np.ones((1, 16), np.int32)}
    settings = ProfileSettings(warmup=2, paired=PairedTiming(runs=20, min_rounds=12, max_rounds=12))
    paired = get_runner("local").profile_pair("litert", artifact, {}, artifact, {}, sample, 1, settings)
    low, high = paired["interval"]
    assert paired["rounds"] == 12 and low <= paired["speedup"] <= high and 0.8 < paired["speedup"] < 1.25
    assert paired["runtime"]["name"] == "ai-edge-litert"
