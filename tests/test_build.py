"""End-to-end builds of tiny models: artifacts, reports, manifests, gates and atomic output folders."""

import importlib
import json

import pytest

from deploykit.pipeline import BuildOptions, build, build_targets
from deploykit.errors import DeployKitError
from deploykit.profiling.local import ProfileSettings
from deploykit.report.manifest import sha256_of

FAST = ProfileSettings(runs=5, warmup=1)


@pytest.fixture(scope="module")
def classifier_builds(tiny_classifier, labelled_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    options = BuildOptions(out=out, profile=FAST, calibration_samples=40, evaluation_samples=40)
    return build_targets(tiny_classifier, "intel-cpu,arm-cpu", labelled_data, options=options)


def test_each_target_gets_its_artifact_and_reports(classifier_builds):
    names = {r.target: sorted(p.name for p in r.folder.iterdir()) for r in classifier_builds}
    assert names["intel-cpu"] == sorted(
        ["model.xml", "model.bin", "vocab.txt", "tokenizer.json", "report.json", "report.md", "report.html",
         "manifest.json"]
    )
    assert "model.tflite" in names["arm-cpu"]


def test_precision_follows_the_target(classifier_builds):
    precisions = {r.target: r.report["artifact"]["precision"] for r in classifier_builds}
    assert precisions == {"intel-cpu": "int8", "arm-cpu": "dynamic-int8"}


def test_report_has_the_promised_fields(classifier_builds):
    report = classifier_builds[0].report
    assert report["model"]["sequence_length"] % 8 == 0
    # intel-cpu: int4-qat is planned (after int4-weights), not run: int8 passes first
    assert [step["step"] for step in report["plan"]] == ["tokenize", "export", "int4-qat", "baseline", "validate",
                                                        "profile"]
    assert [c["candidate"] for c in report["candidates"]] == ["int8"]
    for key in ("p50", "p90", "p99"):
        assert report["metrics"]["latency_ms"][key] > 0 and report["baseline"]["latency_ms"][key] > 0
    # The runtime and a tiny model need far less than this test process (TensorFlow loaded, >1 GB):
    # the worker must report its own peak, not the one it inherits across exec.
    assert 0 < report["metrics"]["peak_rss_mb"] < 1000
    assert report["baseline"]["precision"] == "fp32"
    assert report["metrics"]["fidelity"]["cosine_mean"] is None  # not an embedding model
    assert 0 <= report["metrics"]["accuracy"] <= 1
    drop = (report["metrics"]["original_accuracy"] - report["metrics"]["accuracy"]) * 100
    assert report["metrics"]["accuracy_drop"] == pytest.approx(drop, abs=1e-3)
    assert report["gates"]["checks"][0]["name"] == "accuracy_drop"


def test_int8_artifacts_really_hold_int8(classifier_builds):
    from ai_edge_litert.interpreter import Interpreter

    intel, arm = classifier_builds
    assert "FakeQuantize" in (intel.folder / "model.xml").read_text()
    interpreter = Interpreter(model_path=str(arm.folder / "model.tflite"))
    assert any(t["dtype"].__name__ == "int8" for t in interpreter.get_tensor_details())


def test_baseline_really_runs_fp32_on_openvino(classifier_builds):
    report = classifier_builds[0].report
    assert report["baseline"]["runtime"]["inference_precision"] == "f32"


def test_manifest_hashes_every_file(classifier_builds):
    folder = classifier_builds[0].folder
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
    assert set(listed) == {p.name for p in folder.iterdir()} - {"manifest.json"}
    assert all(sha256_of(folder / name) == digest for name, digest in listed.items())


def test_result_exposes_artifact_and_metrics(classifier_builds):
    result = classifier_builds[1]
    assert result.artifact.path.exists() and result.metrics.latency_ms.p50 > 0


def test_same_inputs_give_byte_identical_artifacts(tiny_classifier, labelled_data, tmp_path, classifier_builds):
    options = BuildOptions(out=tmp_path, profile=FAST, calibration_samples=40, evaluation_samples=40, use_cache=False)
    again = build_targets(tiny_classifier, "intel-cpu,arm-cpu", labelled_data, options=options)
    for first, second in zip(classifier_builds, again, strict=True):
        assert first.report["artifact"]["files"] == second.report["artifact"]["files"]


def test_missed_gate_still_writes_a_complete_report(tiny_backbone_file, labelled_data, tmp_path):
    result = build(tiny_backbone_file, "arm-cpu", labelled_data, out=tmp_path, profile=FAST, precision="dynamic-int8",
                   min_cosine=1.0, calibration_samples=20, evaluation_samples=20)
    assert not result.passed
    assert json.loads((result.folder / "report.json").read_text())["gates"]["passed"] is False
    assert [c["name"] for c in result.report["gates"]["checks"]] == ["cosine_mean"]


def test_precision_the_backend_lacks_stops_before_any_work(tiny_classifier, labelled_data, tmp_path):
    with pytest.raises(DeployKitError, match="precision 'fp8' is not available on the tensorrt backend"):
        build(tiny_classifier, "nvidia-gpu", labelled_data, out=tmp_path / "out", precision="fp8")
    assert not (tmp_path / "out").exists()


def test_failed_export_leaves_no_partial_folder(tiny_classifier, labelled_data, tmp_path, monkeypatch):
    from deploykit.backends.litert import LiteRTBackend

    def explode(*args, **kwargs):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(LiteRTBackend, "export", explode)
    with pytest.raises(RuntimeError):
        build(tiny_classifier, "arm-cpu", labelled_data, out=tmp_path / "out", profile=FAST)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target, precision, runs_as", [("arm-cpu", "fp16", None), ("intel-cpu", "bf16", "bf16")])
def test_precision_override(tiny_classifier, labelled_data, tmp_path, target, precision, runs_as):
    result = build(tiny_classifier, target, labelled_data, out=tmp_path, precision=precision, profile=FAST,
                   calibration_samples=20, evaluation_samples=20)
    assert result.report["artifact"]["precision"] == precision
    assert result.report["plan"][1]["precision"] == precision
    if runs_as:
        assert result.report["artifact"]["runtime_config"]["INFERENCE_PRECISION_HINT"] == runs_as


def test_integer_only_target_lists_float_ops_and_fails_on_them(tiny_classifier, labelled_data, tmp_path):
    result = build(tiny_classifier, "mobile-npu", labelled_data, out=tmp_path, profile=FAST,
                   calibration_samples=20, evaluation_samples=20)
    fallback = result.report["compatibility"]["fallback_ops"]
    assert isinstance(fallback, dict)
    check = next(c for c in result.report["gates"]["checks"] if c["name"] == "fallback_ops")
    assert check["value"] == sum(fallback.values()) and check["passed"] == (not fallback)
    assert "check_ops" in [step["step"] for step in result.report["plan"]]


def test_user_model_without_data_uses_bundled_text_without_labels(tiny_classifier, tmp_path):
    result = build(tiny_classifier, "arm-cpu", out=tmp_path, profile=FAST, calibration_samples=20,
                   evaluation_samples=20)
    assert result.report["data"]["labels"] is False and result.report["metrics"]["accuracy"] is None


def test_timings_belong_to_each_target(classifier_builds):
    intel, arm = (r.report["timings_s"] for r in classifier_builds)
    # Work shared by every target (loading the model, the original's outputs) happens before any target's build.
    assert "reference" not in intel and "reference" not in arm
    assert "export" in intel and "export" in arm


def test_all_skips_targets_it_cannot_build(tiny_classifier, labelled_data, tmp_path, monkeypatch):
    build_module = importlib.import_module("deploykit.pipeline")
    from deploykit.target_loader import load_target

    unbuildable = load_target("nvidia-gpu").model_copy(update={"precisions": ["fp8"]})  # none the backend exports
    monkeypatch.setattr(build_module, "resolve_targets", lambda names: [unbuildable, load_target("arm-cpu")])
    results = build_targets(tiny_classifier, "all", labelled_data,
                            options=BuildOptions(out=tmp_path, profile=FAST, calibration_samples=20, evaluation_samples=20))
    assert [r.target for r in results] == ["arm-cpu"]


def test_a_missed_gate_falls_back_to_the_next_precision(tiny_backbone_file, labelled_data, tmp_path):
    settings = dict(profile=FAST, calibration_samples=20, evaluation_samples=20)
    int8 = build(tiny_backbone_file, "arm-cpu", labelled_data, out=tmp_path / "a", precision="dynamic-int8", **settings)
    cosine = int8.report["metrics"]["fidelity"]["cosine_mean"]
    assert cosine < 1.0
    between = (cosine + 1.0) / 2  # dynamic-int8 misses it; fp16 (or fp32) of the same model clears it
    result = build(tiny_backbone_file, "arm-cpu", labelled_data, out=tmp_path / "b", min_cosine=between, **settings)
    tried = [c["precision"] for c in result.report["candidates"]]
    assert tried[0] == "dynamic-int8" and not result.report["candidates"][0]["passed"]
    assert result.passed and result.report["artifact"]["precision"] == tried[-1] != "dynamic-int8"
    assert (result.folder / "model.tflite").exists()


def test_when_every_candidate_misses_the_first_missing_fewest_gates_ships(tiny_backbone_file, labelled_data, tmp_path,
                                                                         monkeypatch):
    build_module = importlib.import_module("deploykit.pipeline")
    from deploykit.target_loader import load_target

    quantization_only = load_target("arm-cpu").model_copy(update={"recipes": []})
    monkeypatch.setattr(build_module, "resolve_targets", lambda names: [quantization_only])
    result = build(tiny_backbone_file, "arm-cpu", labelled_data, out=tmp_path, profile=FAST, calibration_samples=20,
                   evaluation_samples=20, min_cosine=-1.0, max_latency_ms=1e-6)  # every candidate misses latency only
    assert not result.passed
    tried = [c["precision"] for c in result.report["candidates"]]
    assert tried == ["dynamic-int8", "fp16", "fp32", "int4-weights"]
    assert result.report["artifact"]["precision"] == "dynamic-int8"  # not the last one tried


def test_public_build_stays_the_function_after_the_submodule_is_imported():
    import deploykit

    module = importlib.import_module("deploykit.pipeline")
    assert deploykit.build is module.build and deploykit.build_targets is module.build_targets


def test_a_classifier_without_labels_is_gated_on_agreement(tiny_classifier, labelled_data, tmp_path):
    unlabelled = tmp_path / "texts.jsonl"
    unlabelled.write_text("".join(json.dumps({"text": json.loads(line)["text"]}) + "\n"
                                  for line in labelled_data.read_text().splitlines()))
    options = BuildOptions(out=tmp_path / "dist", profile=FAST, calibration_samples=20, evaluation_samples=20)
    report = build(tiny_classifier, "arm-cpu", unlabelled, options=options).report
    checks = {check["name"]: check for check in report["gates"]["checks"]}
    assert set(checks) == {"agreement"} and checks["agreement"]["limit"] == 0.99
    assert report["metrics"]["fidelity"]["logit_cosine_mean"] > 0.9


def test_a_build_never_passes_without_a_quality_check():
    from deploykit.planner import Gates

    checks = Gates(1.0, 0.99).checks(accuracy_drop=None, cosine_mean=None, fallback_ops=None,
                                         latency={"p50": 1.0})
    assert not all(check["passed"] for check in checks)


def test_every_option_is_checked_before_any_work(tmp_path):
    for bad in ({"seed": -1}, {"min_agreement": 2.0}, {"max_accuracy_drop": float("nan")}, {"masked_logit": 1.0},
                {"profile": ProfileSettings(timeout_s=0)}):
        with pytest.raises(DeployKitError):
            build("does-not-matter", "arm-cpu", out=tmp_path / "dist", **bad)
    assert not (tmp_path / "dist").exists()
