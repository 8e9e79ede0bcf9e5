"""The latency model: fitting on known points, predicting shapes the passes declare, skipping in the plan,
and the profiles it is fitted on."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from deploykit.errors import DeployKitError
from deploykit.latency_model import MIN_STATED_ERROR, Architecture, LatencyModel, fit, misses_budget, model_from_profile
from deploykit.passes.base import get_pass
from deploykit.passes.recipe import recipe
from deploykit.planner import Candidate, predict_latencies
from deploykit.profiling.profiles import save_profile

MINILM = Architecture(layers=6, hidden=384, heads=12, head_dim=32, intermediate=1536)
COSTS = np.array([0.3, 0.9, 0.4, 0.002])  # ms fixed, per GMAC dense, per GMAC attention, per M token-widths


def _rows(architecture=MINILM, lengths=(16, 32, 64, 128, 256), costs=COSTS):
    return [(architecture, length, float(costs @ architecture.work(length))) for length in lengths]


def test_a_fit_on_points_of_a_known_cost_predicts_other_lengths_and_shapes_exactly():
    fitted = fit("int8", _rows() + _rows(MINILM.changed(layers=2), (32, 128))
                 + _rows(MINILM.changed(intermediate=768, heads=6), (32, 128)))  # widths identify dense vs elementwise
    for shape, length in ((MINILM, 96), (MINILM.changed(layers=3), 64), (MINILM.changed(intermediate=1024), 200)):
        assert fitted.predict(shape, length) == pytest.approx(float(COSTS @ shape.work(length)), rel=1e-6)
    assert fitted.error == MIN_STATED_ERROR  # exact points: the stated error is the floor, never below it


def test_the_stated_error_is_the_worst_leave_one_out_miss():
    rows = _rows()
    noisy = [(a, n, p50 * (1.3 if n == 64 else 1.0)) for a, n, p50 in rows]  # one point 30% off the rest
    assert fit("fp32", noisy).error > 0.2
    off_at_the_end = [(a, n, p50 * (1.3 if n == 256 else 1.0)) for a, n, p50 in rows]
    fitted = fit("fp32", off_at_the_end)  # the longest point can only be extrapolated to: its miss counts there
    assert fitted.extrapolation_error > 0.2 and fitted.error_at(300) == fitted.extrapolation_error
    assert fitted.error_at(100) == fitted.error < fitted.extrapolation_error


def test_a_point_measured_with_a_wide_spread_pulls_the_fit_less():
    """One point 40% off the rest: weighed like the others it moves the fit; saved with the wide interval (or the
    contention) it was measured with, the fit follows the precise points."""
    rows = _rows()
    off = [(a, n, p50 * (1.4 if n == 64 else 1.0)) for a, n, p50 in rows]
    truth = float(COSTS @ MINILM.work(128))
    alike = fit("fp32", off).predict(MINILM, 128)
    weighed = fit("fp32", off, [0.5 if n == 64 else 0.01 for _, n, _ in off]).predict(MINILM, 128)
    assert abs(weighed / truth - 1) < 0.02 < abs(alike / truth - 1)


def test_a_profile_row_carries_the_spread_of_its_p50():
    from deploykit.latency_model import point_spread
    from deploykit.profiling.profiles import measurement

    row = measurement("int8", "dynamic-int8", "", 128, MINILM.as_dict(),
                      {"latency_ms": {"p50": 10.0, "p50_interval": [9.0, 11.0]}, "run_queue_wait_share": 0.02}, 100)
    assert row["spread"] == 0.1
    assert point_spread({"p50": 10.0, "p50_interval": [9.9, 10.1]}, 0.3) == 0.3  # contention outweighs the runs
    assert point_spread({"p50": 10.0}) is None  # benchmark_model's summary: no interval
    profile = {"device": "d", "threads": 2, "measurements": [{**row, "spread": "nan"}] * 3}
    with pytest.raises(ValueError):
        model_from_profile(profile, "p.json")


def test_too_few_points_give_no_fit_and_no_prediction():
    assert fit("fp32", _rows(lengths=(16, 32))) is None
    model = LatencyModel("host", 2, {"fp32": fit("fp32", _rows())}, "test")
    assert model.predict("int8", MINILM, 64, 2) is None  # a precision never measured
    assert model.predict("fp32", MINILM, 64, 4) is None  # other threads than the profile's
    assert model.predict("fp32", None, 64, 2) is None  # no architecture (an ONNX input)
    assert model.predict("fp16", MINILM, 64, 2, {"fp16": "fp32"}) == model.predict("fp32", MINILM, 64, 2)


def test_passes_declare_the_shape_they_leave():
    assert get_pass("distill", layers=3).architecture_after(MINILM).layers == 3
    assert get_pass("distill").architecture_after(MINILM).layers == 3  # default: half, rounded up
    pruned = get_pass("prune", heads=0.5, neurons=0.25).architecture_after(MINILM)
    assert (pruned.heads, pruned.intermediate, pruned.layers) == (6, 1152, 6)
    assert get_pass("factorize", budget=0.5).architecture_after(MINILM).ffn_rank == int(0.5 * 384 * 1536 / 1920)
    assert get_pass("factorize", energy=0.9).architecture_after(MINILM) is None  # rank known only after the SVD
    assert get_pass("trim-vocab").architecture_after(MINILM) == MINILM
    assert get_pass("qat").architecture_after(MINILM) == MINILM


CANDIDATES = [Candidate("dynamic-int8"), Candidate("dynamic-int8", recipe(("distill",), {"distill": {"layers": 2}})),
              Candidate("fp32")]


def _predict(model, budget):
    return predict_latencies(CANDIDATES, model, MINILM, 128, 2, budget)


def test_the_plan_skips_only_candidates_predicted_to_miss_by_more_than_the_error():
    model = LatencyModel("host", 2, {p: fit(p, _rows()) for p in ("dynamic-int8", "fp32")}, "profiles/x.json")
    full = float(COSTS @ MINILM.work(128))
    student = float(COSTS @ MINILM.changed(layers=2).work(128))
    prediction = _predict(model, budget=student * 1.05)  # the student fits; the 6-layer ones miss by far more
    assert [c.label for c in prediction.kept] == ["distill + dynamic-int8"]
    step = prediction.step
    assert step["step"] == "predict_latency" and len(step["skipped"]) == 2 and "over the" in step["skipped"][0]
    assert prediction.predictions["dynamic-int8"][0] == pytest.approx(full, rel=1e-4)

    near = _predict(model, budget=full * 0.95)  # within the model's error of the budget: tried, not skipped
    assert len(near.kept) == 3

    hopeless = _predict(model, budget=student * 0.2)  # every candidate predicted to miss: the fastest is still built
    assert [c.label for c in hopeless.kept] == ["distill + dynamic-int8"]


def test_no_budget_means_predictions_only():
    prediction = _predict(LatencyModel("host", 2, {"fp32": fit("fp32", _rows())}, "p.json"), budget=None)
    assert len(prediction.kept) == 3 and set(prediction.predictions) == {"fp32"}
    assert not misses_budget((100.0, 0.1), None) and misses_budget((100.0, 0.1), 80.0)
    assert not misses_budget((100.0, 0.1), 95.0)


def _measurement(label: str, length: int, p50: float, architecture=MINILM) -> dict:
    return {"label": label, "precision": "fp32", "recipe": "", "sequence_length": length,
            "architecture": architecture.as_dict(), "latency_ms": {"p50": p50}, "peak_rss_mb": 100.0, "bytes": 1,
            "op_types": None}


def test_profiles_merge_measurements_and_feed_the_model(tmp_path):
    measured_on = {"device": "host-a", "runner": "local", "threads": 2, "facts": {"cpu": "x"}}
    runtime = {"name": "ai-edge-litert", "version": "2.3.0"}
    rows = [_measurement("fp32 baseline", a_length, p50) for _, a_length, p50 in _rows()]
    path = save_profile(tmp_path, "arm-cpu", measured_on, runtime, rows[:3])
    save_profile(tmp_path, "arm-cpu", measured_on, runtime, [_measurement("fp32 baseline", 16, 99.0)] + rows[3:])
    profile = json.loads(path.read_text())
    assert path == tmp_path / "arm-cpu" / "host-a.json" and len(profile["measurements"]) == 5
    assert [m["latency_ms"]["p50"] for m in profile["measurements"] if m["sequence_length"] == 16] == [99.0]
    model = model_from_profile(profile, str(path))
    assert set(model.fits) == {"fp32"} and model.threads == 2
    with pytest.raises(DeployKitError, match="one setting"):
        save_profile(tmp_path, "arm-cpu", {**measured_on, "threads": 4}, runtime, rows)


def test_a_build_skips_what_this_hosts_profile_predicts_too_slow(tmp_path, tiny_classifier, labelled_data):
    """End to end: a profile of this host in --profiles makes the plan skip dynamic-int8 before exporting it."""
    from click.testing import CliRunner

    from deploykit.cli import main
    from deploykit.profiling.local import LocalRunner

    tiny = Architecture(layers=1, hidden=32, heads=2, head_dim=16, intermediate=64)
    device = LocalRunner(LocalRunner.settings_class(name="local")).device_name
    slow = [dict(_measurement("dynamic-int8", n, 100.0 * n / 8, tiny), precision="dynamic-int8") for n in (8, 16, 32)]
    fast = [_measurement("fp16", n, 0.01 * n / 8, tiny) | {"precision": "fp16"} for n in (8, 16, 32)]
    threads = min(4, os.cpu_count())  # arm-cpu's 4 threads, never more than this host's cores
    save_profile(tmp_path / "profiles", "arm-cpu", {"device": device, "runner": "local", "threads": threads},
                 {"name": "ai-edge-litert", "version": "2.3.0"}, slow + fast)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(tiny_classifier), "--target", "arm-cpu", "--data",
                                       str(labelled_data), "--out", str(out), "--max-latency-ms", "5", "--profiles",
                                       str(tmp_path / "profiles"), "--runs", "3", "--warmup", "0",
                                       "--evaluation-samples", "10", "--calibration-samples", "10"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "arm-cpu" / "report.json").read_text())
    step = next(s for s in report["plan"] if s["step"] == "predict_latency")
    assert any(line.startswith("dynamic-int8: predicted") for line in step["skipped"])
    export = next(s for s in report["plan"] if s["step"] == "export")
    assert export["precision"] == "fp16" and "dynamic-int8" not in export.get("if_gates_fail_try", [])
    tried = [c["candidate"] for c in report["candidates"]]
    assert "dynamic-int8" not in tried and tried[0] == "fp16"
    assert report["candidates"][0]["predicted_latency_ms_p50"] is not None
    assert "skipped" in result.stderr or "skipped" in result.output
