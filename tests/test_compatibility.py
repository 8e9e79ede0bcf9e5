"""The op checker: float ops, ops outside a target's op set, shape limits, and the build gate on them."""

import pytest

from deploykit.backends.base import ExportOptions, get_backend
from deploykit.pipeline import build
from deploykit.graph.compatibility import GraphOp, GraphTensor, check_compatibility
from deploykit.models import load_model
from deploykit.profiling.local import ProfileSettings
from deploykit.target_loader import load_target

FAST = ProfileSettings(runs=5, warmup=1)


def _op(name: str, *tensors: tuple[str, tuple[int, ...]]) -> GraphOp:
    return GraphOp(name, tuple(GraphTensor(dtype, shape) for dtype, shape in tensors))


def test_each_rule_reports_its_reason():
    edge_tpu = load_target("edge-tpu")
    ops = [
        _op("FULLY_CONNECTED", ("int8", (1, 16, 32)), ("int8", (1, 16, 8))),  # fine
        _op("FULLY_CONNECTED", ("float32", (1, 16, 32)), ("int8", (1, 16, 8))),  # float input
        _op("BATCH_MATMUL", ("int8", (2, 12, 16, 8)), ("int8", (2, 12, 16, 16))),  # op set, and 4 dims > 1
        _op("ADD", ("int8", (1, -1, 8)), ("int8", (1, -1, 8))),  # dynamic shape
    ]
    result = check_compatibility(ops, edge_tpu)
    assert result.fallback_ops == {"FULLY_CONNECTED": 1, "BATCH_MATMUL": 1, "ADD": 1}
    assert result.reasons["FULLY_CONNECTED"] == ["reads or writes a float tensor"]
    assert result.reasons["BATCH_MATMUL"] == [
        "not in the target's op set", "a tensor has 4 dimensions larger than 1 (the target allows 3)"
    ]
    assert result.reasons["ADD"] == ["a tensor has a dynamic shape"]


def test_targets_without_limits_check_nothing():
    assert not load_target("arm-cpu").checks_ops
    assert load_target("mobile-npu").checks_ops and load_target("edge-tpu").checks_ops


@pytest.fixture(scope="module")
def integer_tflite(tiny_classifier, tmp_path_factory):
    bundle = load_model(tiny_classifier)
    folder = tmp_path_factory.mktemp("integer")
    bundle.write_saved_model(folder / "saved", 16, masked_logit=-30.0)
    inputs = bundle.encode(["team goal win", "bread soup", "coach league season"], 16)
    calibration = [{name: values[i:i + 1] for name, values in inputs.items()} for i in range(3)]
    backend = get_backend("litert")
    float_model = backend.export(folder / "saved", "fp32", ExportOptions(calibration=[]), folder / "fp32")
    options = ExportOptions(calibration=calibration, integer_only=True, integer_io=True)
    return backend, float_model.path, backend.export(folder / "saved", "int8", options, folder / "int8").path


def test_float_model_is_reported_op_by_op(integer_tflite):
    backend, float_path, _ = integer_tflite
    result = check_compatibility(backend.graph_ops(float_path), load_target("mobile-npu"))
    assert result.fallback_ops["FULLY_CONNECTED"] > 0
    assert result.reasons["FULLY_CONNECTED"] == ["reads or writes a float tensor"]


def test_integer_graph_passes_mobile_npu_but_not_the_edge_tpu_op_set(integer_tflite):
    backend, _, int8_path = integer_tflite
    ops = backend.graph_ops(int8_path)
    assert check_compatibility(ops, load_target("mobile-npu")).fallback_ops == {}
    edge = check_compatibility(ops, load_target("edge-tpu"))
    assert "BATCH_MATMUL" in edge.fallback_ops  # attention's activation x activation matmul
    assert all("float" not in reason for reasons in edge.reasons.values() for reason in reasons)


def test_allow_fallback_reports_but_does_not_fail(tiny_classifier, labelled_data, tmp_path):
    strict = build(tiny_classifier, "edge-tpu", labelled_data, out=tmp_path / "strict", profile=FAST,
                   calibration_samples=20, evaluation_samples=20, max_accuracy_drop=100)
    lenient = build(tiny_classifier, "edge-tpu", labelled_data, out=tmp_path / "lenient", profile=FAST,
                    calibration_samples=20, evaluation_samples=20, max_accuracy_drop=100, allow_fallback=True)
    for result in (strict, lenient):
        assert result.report["compatibility"]["fallback_ops"]
        assert "BATCH_MATMUL" in result.report["compatibility"]["fallback_reasons"]
    assert not strict.passed
    assert lenient.passed
    check = next(c for c in lenient.report["gates"]["checks"] if c["name"] == "fallback_ops")
    assert check["waived"] and check["value"] > 0
