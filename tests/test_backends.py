"""Backends: export at each precision and report what would not run on integer-only hardware."""

import numpy as np
import pytest

from deploykit.backends.base import ExportOptions, get_backend
from deploykit.errors import DeployKitError
from deploykit.evaluate import run_examples
from deploykit.models import load_model


@pytest.fixture(scope="module")
def saved_classifier(tiny_classifier, tmp_path_factory):
    bundle = load_model(tiny_classifier)
    folder = tmp_path_factory.mktemp("saved") / "model"
    bundle.write_saved_model(folder, 16)
    inputs = bundle.encode(["team goal win", "bread soup"], 16)
    return folder, inputs, bundle.predict(inputs)


def test_float_model_is_listed_as_falling_back(saved_classifier, tmp_path):
    folder, _, _ = saved_classifier
    backend = get_backend("litert")
    artifact = backend.export(folder, "fp32", ExportOptions(calibration=[]), tmp_path)
    assert backend.fallback_ops(artifact.path).get("FULLY_CONNECTED", 0) > 0


@pytest.mark.parametrize("runtime", ["litert", "openvino"])
def test_fp32_export_matches_keras(saved_classifier, tmp_path, runtime):
    folder, inputs, expected = saved_classifier
    backend = get_backend(runtime)
    artifact = backend.export(folder, "fp32", ExportOptions(calibration=[]), tmp_path)
    runner = backend.load(artifact.path, 1, artifact.runtime_config)
    np.testing.assert_allclose(run_examples(runner, inputs), expected, atol=1e-4)


def test_unknown_runtime_is_a_clear_error():
    with pytest.raises(DeployKitError, match="no exporter for the 'tensorrt' runtime"):
        get_backend("tensorrt")
