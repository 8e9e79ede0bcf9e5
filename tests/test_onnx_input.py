"""ONNX as input: post-training builds for OpenVINO and TensorRT targets, clear errors elsewhere."""

import json

import numpy as np
import pytest

from deploykit.pipeline import build
from deploykit.backends.base import ExportOptions, get_backend
from deploykit.errors import DeployKitError
from deploykit.models import load_model
from deploykit.graph.onnx_model import run_graph, write_static_graph
from deploykit.profiling.local import ProfileSettings

FAST = ProfileSettings(runs=5, warmup=1)
SETTINGS = dict(profile=FAST, calibration_samples=20, evaluation_samples=20, sequence_length=16)


def _hugging_face_style(model) -> None:
    """Rename the inputs as optimum exports BERT (int64 input_ids/attention_mask/token_type_ids, batch axis free)."""
    from onnx import TensorProto, helper

    graph = model.graph
    casts = []
    for old, new in (("token_ids", "input_ids"), ("padding_mask", "attention_mask")):
        casts.append(helper.make_node("Cast", [new], [old], to=TensorProto.INT32))
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", 16])
              for name in ("input_ids", "attention_mask", "token_type_ids")]
    graph.ClearField("input")
    graph.input.extend(inputs)
    nodes = casts + list(graph.node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"


@pytest.fixture(scope="module")
def onnx_classifier(tiny_classifier, tmp_path_factory):
    """The tiny classifier as a Hugging Face-style ONNX file, with vocab.txt and labels.txt beside it."""
    import onnx

    bundle = load_model(tiny_classifier)
    root = tmp_path_factory.mktemp("onnx-input")
    bundle.write_saved_model(root / "saved", 16)
    artifact = get_backend("tensorrt").export(root / "saved", "fp32", ExportOptions(calibration=[]), root / "fp32")
    model = onnx.load(str(artifact.path))
    _hugging_face_style(model)
    folder = root / "model"
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "vocab.txt").write_text("\n".join(bundle.tokenizer.get_vocabulary()) + "\n")
    (folder / "labels.txt").write_text((tiny_classifier.parent / "labels.txt").read_text())
    texts = ["team goal win", "bread soup cheese"]
    return folder / "model.onnx", bundle.encode(texts, 16), bundle.predict(bundle.encode(texts, 16))


def test_onnx_loads_with_its_tokenizer_labels_and_task(onnx_classifier):
    path, _, _ = onnx_classifier
    bundle = load_model(path)
    assert bundle.task == "classification" and bundle.class_names == ["food", "sports"]
    assert bundle.details["onnx_inputs"] == {"token_ids": "input_ids", "padding_mask": "attention_mask",
                                             "segment_ids": "token_type_ids"}


def test_static_graph_feeds_deploykit_inputs_and_keeps_outputs(onnx_classifier, tmp_path):
    path, inputs, expected = onnx_classifier
    static = write_static_graph(path, 16, tmp_path / "static.onnx")
    np.testing.assert_allclose(run_graph(static, inputs), expected, atol=1e-4)
    with pytest.raises(DeployKitError, match="fixed at 16 tokens; pass --sequence-length 16"):
        write_static_graph(static, 24, tmp_path / "other.onnx")


@pytest.mark.parametrize("target, fmt", [("intel-cpu", "openvino-ir"), ("nvidia-gpu", "onnx")])
def test_onnx_input_builds_post_training_targets(onnx_classifier, labelled_data, tmp_path, target, fmt):
    path, _, _ = onnx_classifier
    result = build(path, target, labelled_data, out=tmp_path, **SETTINGS)
    report = json.loads((result.folder / "report.json").read_text())
    assert report["model"]["format"] == "onnx" and report["artifact"]["format"] == fmt
    assert report["artifact"]["precision"] == "int8" and report["metrics"]["accuracy"] is not None
    assert "integer_graph" in report and report["integer_graph"] is None  # exported as given, no Keras trace
    assert not any(step["step"] == "qat" for step in report["plan"])


def test_onnx_input_builds_mixed_precision_against_the_onnx_graph(onnx_classifier, labelled_data, tmp_path):
    path, _, _ = onnx_classifier
    result = build(path, "nvidia-gpu", labelled_data, out=tmp_path, **{**SETTINGS, "precision": "mixed"})
    report = json.loads((result.folder / "report.json").read_text())
    assert report["artifact"]["precision"] == "mixed" and report["artifact"]["mixed_precision"]["ranking"]


def test_onnx_input_refuses_litert_targets_and_training_passes(onnx_classifier, labelled_data, tmp_path):
    path, _, _ = onnx_classifier
    with pytest.raises(DeployKitError, match="needs a Keras or TensorFlow model; ONNX input builds for targets on"):
        build(path, "arm-cpu", labelled_data, out=tmp_path / "a", **SETTINGS)
    with pytest.raises(DeployKitError, match="needs a Keras model, and .* is ONNX"):
        build(path, "intel-cpu", labelled_data, out=tmp_path / "b", recipe="distill", **SETTINGS)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_onnx_with_an_input_deploykit_cannot_feed_is_a_clear_error(onnx_classifier, tmp_path):
    import onnx

    path, _, _ = onnx_classifier
    model = onnx.load(str(path))
    model.graph.input[2].name = "pixel_values"
    broken = tmp_path / "model.onnx"
    onnx.save(model, str(broken))
    (tmp_path / "vocab.txt").write_text((path.parent / "vocab.txt").read_text())
    with pytest.raises(DeployKitError, match="input 'pixel_values' deploykit cannot feed"):
        load_model(broken)
