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


def test_rounds_in_which_another_process_held_the_cores_are_left_out():
    """Rounds whose threads waited for a core beyond the limit do not count; too few clean rounds make the result
    inconclusive, computed from every round."""
    rounds = [[1.0, 2.8]] * 12 + [[2.0, 9.0]] * 4  # the contended rounds have another ratio (4.5)
    waits = [[0.0, 0.01]] * 12 + [[0.3, 0.4]] * 4
    kept = paired_speedup(rounds, waits, min_rounds=10, max_wait_share=0.05)
    assert kept["speedup"] == pytest.approx(2.8) and kept["rounds"] == 12 and kept["contended_rounds"] == 4
    assert not kept["inconclusive"] and kept["rounds_timed"] == 16
    busy = paired_speedup(rounds, waits, min_rounds=13, max_wait_share=0.05)
    assert busy["inconclusive"] and busy["rounds"] == 16
    unknown = paired_speedup(rounds, [[None, None]] * 16, min_rounds=10, max_wait_share=0.05)
    assert not unknown["inconclusive"] and unknown["contended_rounds"] == 0 and unknown["median_wait_share"] is None


def test_timed_runs_with_two_peaks_are_flagged():
    from deploykit.profiling.stats import latency_summary, two_peaks
    from deploykit.report.speed import speed_warnings

    generator = np.random.default_rng(0)
    switching = np.r_[generator.normal(3, 0.3, 60), generator.normal(27, 2, 40)]  # a machine at two speeds
    peaks = two_peaks(switching)
    assert peaks["peaks_ms"][0] == pytest.approx(3, abs=0.5) and peaks["peaks_ms"][1] == pytest.approx(27, abs=2)
    assert peaks["share_in_faster"] == 0.6
    for unimodal in (generator.normal(5, 0.5, 100), 3 * np.exp(generator.normal(0, 0.3, 100)),
                     np.r_[generator.normal(3, 0.1, 95), generator.normal(9, 1, 5)]):  # a tail of preempted runs
        assert two_peaks(unimodal) is None
    assert two_peaks(switching[::10]) is None  # 10 runs cannot tell
    report = {"metrics": {"latency_ms": latency_summary(switching), "speedup_vs_baseline": 2.0},
              "baseline": {"latency_ms": latency_summary(generator.normal(8, 0.2, 100))}, "speed": {}}
    [warning] = speed_warnings(report)
    assert warning.startswith("The shipped artifact's timed runs have two peaks, around 3")


def test_the_latency_gate_is_decided_on_the_p50_interval():
    from deploykit.planner import latency_check

    assert latency_check(5.0, {"p50": 4.0, "p50_interval": [3.9, 4.1]})["passed"]
    missed = latency_check(5.0, {"p50": 6.0, "p50_interval": [5.9, 6.1]})
    assert not missed["passed"] and not missed.get("inconclusive")
    straddles = latency_check(5.0, {"p50": 4.9, "p50_interval": [4.8, 5.2]})
    assert not straddles["passed"] and straddles["inconclusive"] and "straddles the 5 ms limit" in straddles["reason"]
    # Over the limit, but the threads waited for a core a fifth of the time: without that wait it might pass.
    busy = latency_check(5.0, {"p50": 6.0, "p50_interval": [5.9, 6.1], "run_queue_wait_share": 0.2})
    assert busy["inconclusive"] and "waited for a core 20%" in busy["reason"]
    far = latency_check(5.0, {"p50": 60.0, "p50_interval": [59.0, 61.0], "run_queue_wait_share": 0.2})
    assert not far["passed"] and not far.get("inconclusive")
    assert not latency_check(5.0, {"p50": 5.1})["passed"]  # no interval (benchmark_model): the p50 decides


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
    # Rounds in which another process (another test worker) held the cores are timed but left out.
    assert paired["rounds_timed"] == len(paired["rounds_ms"])
    assert paired["rounds"] == (paired["rounds_timed"] if paired["inconclusive"]
                                else paired["rounds_timed"] - paired["contended_rounds"])
    assert paired["rounds_timed"] <= PairedTiming().max_rounds
    assert paired["inconclusive"] or paired["rounds"] >= PairedTiming().min_rounds
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


def test_an_undecided_latency_gate_ends_the_build_with_exit_code_5(tiny_classifier, labelled_data, tmp_path,
                                                                  monkeypatch):
    """A p50 interval that straddles --max-latency-ms: the candidate is shipped, the report, JUnit (a skipped case
    with the reason) and the summary say inconclusive, and the build exits with 5, not 0 or 3."""
    from xml.etree import ElementTree

    monkeypatch.setattr("deploykit.profiling.stats.median_interval", lambda values, **_: [0.0, 1e9])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(tiny_classifier), "--target", "arm-cpu", "--data",
                                       str(labelled_data), "--out", str(out), "--max-latency-ms", "1000",
                                       "--junit-xml", str(tmp_path / "junit.xml"),
                                       "--summary-json", str(tmp_path / "summary.json"), *QUICK])
    assert result.exit_code == 5, result.output
    report = json.loads((out / "arm-cpu" / "report.json").read_text())
    assert report["gates"] == {**report["gates"], "passed": False, "inconclusive": True}
    assert [c["candidate"] for c in report["candidates"]] == [report["artifact"]["candidate"]]  # no slower one tried
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit_code"] == 5 and summary["targets"][0]["inconclusive"]
    suites = ElementTree.parse(tmp_path / "junit.xml").getroot()
    assert suites.get("skipped") == "1" and suites.get("failures") == "0"
    assert "latency_ms_p50: " in (out / "arm-cpu" / "report.md").read_text()
    assert "INCONCLUSIVE" in (out / "arm-cpu" / "report.md").read_text()


def _burn(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def test_a_pair_timed_while_every_core_is_busy_is_inconclusive(built):
    """A CPU-bound process on each core: the worker's thread waits for a core in every round, the kernel's run-queue
    counters say so, and the speed-up is marked inconclusive rather than stated."""
    import multiprocessing
    import os

    from deploykit.profiling.base import get_runner

    artifact = built / "model.tflite"
    sample = {"token_ids": np.full((1, 16), 2, np.int32), "padding_mask": np.ones((1, 16), np.int32)}
    # 300 runs a side: a round spans many scheduler time slices, so none fits between two of the burners' turns.
    settings = ProfileSettings(warmup=2, paired=PairedTiming(runs=300, min_rounds=6, max_rounds=6))
    stop = multiprocessing.get_context("spawn").Event()
    burners = [multiprocessing.get_context("spawn").Process(target=_burn, args=(stop,), daemon=True)
               for _ in range(2 * (os.cpu_count() or 1))]
    for burner in burners:
        burner.start()
    try:
        paired = get_runner("local").profile_pair("litert", artifact, {}, artifact, {}, sample, 1, settings)
    finally:
        stop.set()
        for burner in burners:
            burner.join(10)
    assert paired["inconclusive"] and paired["contended_rounds"] > 3 and paired["median_wait_share"] > 0.05
