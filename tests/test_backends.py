"""Backends: export at each precision and report what would not run on integer-only hardware."""

import numpy as np
import pytest

from deploykit.backends.base import ExportOptions, get_backend
from deploykit.graph.compatibility import check_compatibility
from deploykit.errors import DeployKitError
from deploykit.evaluate import run_examples
from deploykit.models import load_model
from deploykit.target_loader import load_target


@pytest.fixture(scope="module")
def saved_classifier(tiny_classifier, tmp_path_factory):
    bundle = load_model(tiny_classifier)
    folder = tmp_path_factory.mktemp("saved") / "model"
    bundle.write_saved_model(folder, 16)
    inputs = bundle.encode(["team goal win", "bread soup"], 16)
    return folder, inputs, bundle.predict(inputs)


@pytest.mark.parametrize("runtime", ["litert", "openvino", "tensorrt"])
def test_fp32_export_matches_keras(saved_classifier, tmp_path, runtime):
    folder, inputs, expected = saved_classifier
    backend = get_backend(runtime)
    artifact = backend.export(folder, "fp32", ExportOptions(calibration=[]), tmp_path)
    runner = backend.load(artifact.path, 1, artifact.runtime_config)
    np.testing.assert_allclose(run_examples(runner, inputs), expected, atol=1e-4)


def test_openvino_stores_a_constant_of_one_repeated_value_once(tiny_backbone_file, tmp_path):
    """Mean pooling's zeros_like, folded by OpenVINO into a full tensor of zeros, is written as one element, and the
    outputs stay the Keras model's."""
    import openvino as ov

    bundle = load_model(tiny_backbone_file)
    bundle.write_saved_model(tmp_path / "saved", 16)
    inputs = bundle.encode(["team goal win", "bread soup"], 16)
    backend = get_backend("openvino")
    artifact = backend.export(tmp_path / "saved", "fp32", ExportOptions(calibration=[]), tmp_path / "ir")
    zeros = [op.get_data().size for op in ov.Core().read_model(str(artifact.path)).get_ops()
             if op.get_type_name() == "Constant" and "zeros_like" in op.get_friendly_name()]
    assert zeros and set(zeros) == {1}
    runner = backend.load(artifact.path, 1, artifact.runtime_config)
    np.testing.assert_allclose(run_examples(runner, inputs), bundle.predict(inputs), atol=1e-5)


def test_unknown_runtime_is_a_clear_error():
    with pytest.raises(DeployKitError, match="no exporter for the 'coreml' runtime"):
        get_backend("coreml")


def test_bounded_attention_mask_keeps_float_outputs_and_drops_the_huge_constant(tiny_classifier, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    bundle = load_model(tiny_classifier)
    inputs = bundle.encode(["team goal", "bread soup cheese recipe"], 16)  # mostly padding
    backend = get_backend("litert")
    outputs, smallest = {}, {}
    for name, masked_logit in (("keras", None), ("bounded", -30.0)):
        bundle.write_saved_model(tmp_path / name, 16, masked_logit)
        artifact = backend.export(tmp_path / name, "fp32", ExportOptions(calibration=[]), tmp_path / f"{name}-tflite")
        outputs[name] = run_examples(backend.load(artifact.path, 1, {}), inputs)
        interpreter = Interpreter(model_path=str(artifact.path))
        constants = [t for t in interpreter.get_tensor_details() if t["dtype"] == np.float32 and t["shape"].size <= 1]
        smallest[name] = min(float(np.min(interpreter.get_tensor(t["index"]))) for t in constants
                             if _has_data(interpreter, t))
    np.testing.assert_allclose(outputs["bounded"], outputs["keras"], atol=1e-5)
    assert smallest["keras"] <= -1e8 and smallest["bounded"] >= -30.0


def _has_data(interpreter, tensor) -> bool:
    try:
        interpreter.get_tensor(tensor["index"])
        return True
    except ValueError:
        return False


def test_int16_activation_export_is_integer_and_close_to_float(saved_classifier, tmp_path):
    folder, inputs, expected = saved_classifier
    backend = get_backend("litert")
    calibration = [{name: values[i:i + 1] for name, values in inputs.items()} for i in range(len(expected))]
    artifact = backend.export(folder, "a16w8", ExportOptions(calibration=calibration, integer_only=True), tmp_path)
    from ai_edge_litert.interpreter import Interpreter

    dtypes = {t["dtype"] for t in Interpreter(model_path=str(artifact.path)).get_tensor_details()}
    assert np.int16 in dtypes and np.int8 in dtypes
    outputs = run_examples(backend.load(artifact.path, 1, {}), inputs)
    np.testing.assert_allclose(outputs, expected, atol=0.05)


@pytest.mark.parametrize("model_fixture", ["tiny_classifier", "tiny_backbone_file"])
def test_integer_graph_has_no_float_ops(request, model_fixture, tmp_path):
    bundle = load_model(request.getfixturevalue(model_fixture))
    bundle.write_saved_model(tmp_path / "saved", 16, masked_logit=-30.0)
    inputs = bundle.encode(["team goal win", "bread soup", "coach league season"], 16)
    calibration = [{name: values[i:i + 1] for name, values in inputs.items()} for i in range(3)]
    backend = get_backend("litert")
    options = ExportOptions(calibration=calibration, integer_only=True, integer_io=True)
    artifact = backend.export(tmp_path / "saved", "int8", options, tmp_path / "int8")
    assert check_compatibility(backend.graph_ops(artifact.path), load_target("mobile-npu")).fallback_ops == {}
