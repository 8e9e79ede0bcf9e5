"""Quantization-aware training: fake-quant nodes in the traced graph, integer-only export, weights restored."""

import numpy as np
import pytest
import tensorflow as tf

from deploykit.backends.base import ExportOptions, get_backend
from deploykit.pipeline import build
from deploykit.graph.compatibility import check_compatibility
from deploykit.errors import DeployKitError
from deploykit.graph.integer_graph import integer_graph
from deploykit.models import load_model
from deploykit.passes.base import PassContext, get_pass
from deploykit.profiling.local import ProfileSettings
from deploykit.progress import StepLog
from deploykit.target_loader import load_target

FAST = ProfileSettings(runs=5, warmup=1)
TEXTS = ["team goal win season", "bread soup garlic", "coach league player", "cheese recipe bake dinner"] * 4


def _context(bundle, labels=None):
    inputs = bundle.encode(TEXTS, 16)
    calibration = [{name: values[i:i + 1] for name, values in inputs.items()} for i in range(8)]
    return PassContext(bundle=bundle, sequence_length=16, train_texts=TEXTS, train_inputs=inputs,
                       teacher_outputs=bundle.predict(inputs), teacher=bundle,
                       label_ids=labels, calibration=calibration, log=StepLog())


def _graph_ops(saved_model) -> set[str]:
    loaded = tf.saved_model.load(str(saved_model))
    graph = loaded.signatures["serving_default"].graph.as_graph_def()
    names = {node.op for node in graph.node}
    for function in graph.library.function:
        names |= {node.op for node in function.node_def}
    return names


@pytest.mark.parametrize("model_fixture, with_labels", [("tiny_classifier", True), ("tiny_backbone_file", False)])
def test_qat_traces_fake_quant_and_exports_integer_only(request, model_fixture, with_labels, tmp_path):
    bundle = load_model(request.getfixturevalue(model_fixture))
    context = _context(bundle, np.arange(len(TEXTS)) % 2 if with_labels else None)
    before = bundle.predict(context.train_inputs)
    qat = get_pass("qat", steps=8, batch_size=4, learning_rate=1e-3)
    with integer_graph(-30.0):
        result = qat.apply(context)
        with qat.export_context():
            bundle.write_saved_model(tmp_path / "saved", 16)
    assert result.effect["fake_quant_ranges"] > 0 and np.isfinite(result.effect["loss_last"])
    assert "FakeQuantWithMinMaxVars" in _graph_ops(tmp_path / "saved")
    backend = get_backend("litert")
    options = ExportOptions(calibration=context.calibration, integer_only=True, integer_io=True)
    artifact = backend.export(tmp_path / "saved", "int8", options, tmp_path / "int8")
    assert check_compatibility(backend.graph_ops(artifact.path), load_target("mobile-npu")).fallback_ops == {}
    assert not np.allclose(bundle.predict(context.train_inputs), before)  # trained in place; the build restores


def test_unknown_pass_parameter_is_a_clear_error():
    with pytest.raises(DeployKitError, match="pass 'qat' has no parameter epochs"):
        get_pass("qat", epochs=3)


def test_build_tries_qat_after_post_training_int8_and_restores_the_model(tiny_classifier, labelled_data, tmp_path,
                                                                       monkeypatch):
    # A gate nothing can pass makes the build try every candidate in order.
    from deploykit.planner import Gates

    checks = Gates.checks
    monkeypatch.setattr(Gates, "checks", lambda self, *args: checks(self, *args) + [
        {"name": "impossible", "value": 1, "limit": 0, "passed": False}])
    result = build(tiny_classifier, "mobile-npu", labelled_data, out=tmp_path, profile=FAST, calibration_samples=20,
                   evaluation_samples=20, pass_parameters={"qat": {"steps": 4, "batch_size": 8, "learning_rate": 1e-2}})
    labels = [c["candidate"] for c in result.report["candidates"]]
    assert labels == ["int8", "qat + int8", "mixed", "a16w8"]
    qat = result.report["candidates"][1]
    assert qat["passes"][0]["pass"] == "qat" and qat["passes"][0]["parameters"]["steps"] == 4
    assert "qat" in [step["step"] for step in result.report["plan"]]
    # what was traced after QAT (mixed, a16w8, the fp32 baseline) saw the original weights again
    assert result.report["candidates"][2]["passes"] == [] and result.report["candidates"][3]["passes"] == []
    assert result.report["baseline"]["fidelity"]["agreement"] == 1.0
