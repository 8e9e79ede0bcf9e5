"""`--junit-xml` and `--summary-json`: machine-readable build results, written for a missed gate and an error too."""

from __future__ import annotations

import json

from click.testing import CliRunner
from junitparser import Error, Failure, JUnitXml

from deploykit.cli import main

FAST = ["--runs", "3", "--warmup", "0", "--evaluation-samples", "10", "--calibration-samples", "10"]


def test_a_missed_gate_is_a_junit_failure_with_the_value_and_the_limit(tmp_path, tiny_backbone_file, labelled_data):
    out, junit, summary = tmp_path / "dist", tmp_path / "reports" / "junit.xml", tmp_path / "reports" / "summary.json"
    result = CliRunner().invoke(main, [
        "build", str(tiny_backbone_file), "--data", str(labelled_data), "--target", "arm-cpu", "--out", str(out),
        "--precision", "dynamic-int8", "--min-cosine", "1.0", "--max-size-mb", "100", *FAST,
        "--junit-xml", str(junit), "--summary-json", str(summary)])
    assert result.exit_code == 3, result.output

    (suite,) = JUnitXml.fromfile(str(junit))
    cases = {case.name: case for case in suite}
    assert (suite.name, suite.tests, suite.failures, suite.errors) == ("arm-cpu", 2, 1, 0)
    assert set(cases) == {"cosine_mean", "size_mb"} and cases["size_mb"].is_passed
    (failure,) = cases["cosine_mean"].result
    assert isinstance(failure, Failure)
    report = json.loads((out / "arm-cpu" / "report.json").read_text())
    cosine = next(check for check in report["gates"]["checks"] if check["name"] == "cosine_mean")
    assert failure.message == f"cosine_mean: measured {cosine['value']:.6g}, limit 1"

    written = json.loads(summary.read_text())
    (target,) = written["targets"]
    assert (written["exit_code"], written["passed"], target["exit_code"], target["passed"]) == (3, False, 3, False)
    manifest = json.loads((out / "arm-cpu" / "manifest.json").read_text())
    shipped = next(entry for entry in manifest["files"] if entry["path"] == "model.tflite")
    assert target["artifact"] == {"path": str(out / "arm-cpu" / "model.tflite"), "format": "tflite",
                                  "precision": "dynamic-int8", "bytes": shipped["bytes"], "sha256": shipped["sha256"]}
    assert target["latency_ms_p50"] == report["metrics"]["latency_ms"]["p50"]
    assert target["fidelity"] == report["metrics"]["fidelity"] and target["gates"] == report["gates"]["checks"]


def test_a_build_stopped_by_an_error_is_a_junit_error_per_target(tmp_path):
    junit, summary = tmp_path / "junit.xml", tmp_path / "summary.json"
    result = CliRunner().invoke(main, ["build", "--target", "arm-cpu,arm-cpux", "--out", str(tmp_path / "dist"),
                                       "--junit-xml", str(junit), "--summary-json", str(summary)])
    assert result.exit_code == 2

    suites = list(JUnitXml.fromfile(str(junit)))
    assert [suite.name for suite in suites] == ["arm-cpu", "arm-cpux"]
    for suite in suites:
        (case,) = suite
        (error,) = case.result
        assert isinstance(error, Error) and "unknown target 'arm-cpux'" in error.message
    written = json.loads(summary.read_text())
    assert (written["exit_code"], written["targets"]) == (2, [])
    assert "unknown target 'arm-cpux'" in written["error"]
    assert not (tmp_path / "dist").exists()
