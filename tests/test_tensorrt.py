"""nvidia-gpu: ONNX for TensorRT (fp16, Q/DQ int8) checked with onnxruntime, and the engine step."""

import importlib.util
import json
import os
import py_compile
import stat

import numpy as np
import pytest

from deploykit.pipeline import build
from deploykit.backends.base import ExportOptions, ExportedArtifact, get_backend
from deploykit.compilers.base import CompileRequest, get_compiler
from deploykit.compilers.tensorrt import parse_trtexec_latency
from deploykit.evaluate import run_examples
from deploykit.models import load_model
from deploykit.profiling.local import ProfileSettings

FAST = ProfileSettings(runs=5, warmup=1)
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def exported(tiny_classifier, tmp_path_factory):
    """The tiny classifier exported at fp32, fp16 and int8, with its inputs and Keras outputs."""
    bundle = load_model(tiny_classifier)
    root = tmp_path_factory.mktemp("onnx")
    bundle.write_saved_model(root / "saved", 16)
    texts = ["team goal win", "bread soup", "coach league season player", "garlic dinner salad taste bake"]
    inputs = bundle.encode(texts * 5, 16)
    calibration = [{k: v[i:i + 1] for k, v in inputs.items()} for i in range(20)]
    backend = get_backend("tensorrt")
    artifacts = {precision: backend.export(root / "saved", precision, ExportOptions(calibration=calibration),
                                           root / precision) for precision in ("fp32", "fp16", "int8")}
    return backend, artifacts, inputs, bundle.predict(inputs)


def _graph(artifact):
    import onnx

    return onnx.load(str(artifact.path))


def test_fp16_stores_half_weights_and_keeps_integer_inputs(exported):
    import onnx

    backend, artifacts, inputs, expected = exported
    graph = _graph(artifacts["fp16"]).graph
    large = [init for init in graph.initializer if np.prod(init.dims) >= 64]
    assert large and all(init.data_type == onnx.TensorProto.FLOAT16 for init in large if init.data_type != onnx.TensorProto.INT64)
    assert {i.type.tensor_type.elem_type for i in graph.input} == {onnx.TensorProto.INT32}
    outputs = run_examples(backend.load(artifacts["fp16"].path, 1, {}), inputs)
    np.testing.assert_allclose(outputs, expected, atol=2e-2)


def test_int8_is_explicit_symmetric_per_channel_qdq_on_every_dense_layer(exported):
    from onnx import numpy_helper

    backend, artifacts, inputs, expected = exported
    graph = _graph(artifacts["int8"]).graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert quantize and dequantize
    # TensorRT takes zero points of 0 only (symmetric int8).
    assert all(not np.any(initializers[n.input[2]]) for n in dequantize if len(n.input) > 2)
    weights = [n for n in dequantize if n.input[0] in initializers and initializers[n.input[0]].ndim == 2]
    assert weights and all(initializers[n.input[1]].size > 1 for n in weights)  # per-channel scales
    float32 = _graph(artifacts["fp32"]).graph
    dense = [n for n in float32.node if n.op_type in ("MatMul", "Gemm") and any(
        i.name in n.input and len(i.dims) == 2 and min(i.dims) >= 16 for i in float32.initializer)]
    assert len(weights) == len(dense)  # every dense layer's weight matrix, nothing else
    outputs = run_examples(backend.load(artifacts["int8"].path, 1, {}), inputs)
    agreement = np.mean(outputs.argmax(-1) == expected.argmax(-1))
    assert agreement >= 0.9


def test_onnx_artifacts_pass_the_checker_and_are_deterministic(exported, tmp_path):
    import onnx

    backend, artifacts, inputs, _ = exported
    for artifact in artifacts.values():
        onnx.checker.check_model(str(artifact.path))
    saved = artifacts["fp32"].path.parent.parent / "saved"
    calibration = [{k: v[i:i + 1] for k, v in inputs.items()} for i in range(20)]
    for precision in ("fp32", "int8"):
        again = backend.export(saved, precision, ExportOptions(calibration=calibration), tmp_path / precision)
        assert again.path.read_bytes() == artifacts[precision].path.read_bytes(), precision


def _request(tmp_path, sparse=False):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    artifact = ExportedArtifact(path=model, files=[model], format="onnx", precision="int8", method="test")
    return CompileRequest(artifact=artifact, folder=tmp_path, sequence_length=16,
                          input_names=("token_ids", "padding_mask"), sparse_weights=sparse)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: the engine path runs instead")
def test_without_tensorrt_the_folder_gets_the_build_script_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    compiler = get_compiler({"name": "tensorrt", "workspace_mb": 2048, "optimization_level": 4})
    result = compiler.compile(_request(tmp_path, sparse=True))
    assert result.status == "not run" and result.reason.startswith("engine: not built (TensorRT is not installed")
    script, shell = tmp_path / "build_engine.py", tmp_path / "build_engine.sh"
    py_compile.compile(str(script), doraise=True)
    text = script.read_text()
    assert "WORKSPACE_MB = 2048" in text and "SPARSE = True" in text and "OPTIMIZATION_LEVEL = 4" in text
    assert shell.stat().st_mode & stat.S_IXUSR
    command = result.details["command"]
    assert command in shell.read_text()
    for flag in ("--onnx=model.onnx", "--stronglyTyped", "--memPoolSize=workspace:2048M",
                 "--builderOptimizationLevel=4", "--sparsity=enable", "--timingCacheFile=timing.cache"):
        assert flag in command


def test_sparsity_flag_only_when_a_pass_left_two_four_sparse_weights(tmp_path):
    compiler = get_compiler({"name": "tensorrt"})
    result = compiler.compile(_request(tmp_path, sparse=False))
    assert "--sparsity" not in result.details["command"] and "SPARSE = False" in (tmp_path / "build_engine.py").read_text()
    off = get_compiler({"name": "tensorrt", "sparsity": False}).compile(_request(tmp_path, sparse=True))
    assert "--sparsity" not in off.details["command"]


def test_trtexec_latency_is_parsed():
    line = ("[11/29/2026-10:00:00] [I] GPU Compute Time: min = 0.412 ms, max = 0.61 ms, mean = 0.43 ms, "
            "median = 0.425 ms, percentile(90%) = 0.44 ms, percentile(95%) = 0.45 ms, percentile(99%) = 0.5 ms")
    assert parse_trtexec_latency(line) == {"min": 0.412, "max": 0.61, "mean": 0.43, "median": 0.425,
                                           "p90": 0.44, "p95": 0.45, "p99": 0.5}
    assert parse_trtexec_latency("no timing here") is None


@pytest.mark.skipif(not HAS_TENSORRT or not os.path.exists("/dev/nvidia0"),
                    reason="TensorRT and an NVIDIA GPU are needed to build an engine")
def test_engine_builds_where_tensorrt_runs(exported, tmp_path):
    import shutil

    _, artifacts, _, _ = exported
    model = tmp_path / "model.onnx"
    shutil.copy(artifacts["int8"].path, model)
    artifact = ExportedArtifact(path=model, files=[model], format="onnx", precision="int8", method="test")
    result = get_compiler({"name": "tensorrt"}).compile(
        CompileRequest(artifact=artifact, folder=tmp_path, sequence_length=16, input_names=("token_ids", "padding_mask")))
    assert result.status == "compiled", result.reason
    assert (tmp_path / "model.engine").stat().st_size > 0


def test_nvidia_gpu_build_ships_qdq_onnx_and_says_the_engine_was_not_built(tiny_classifier, labelled_data, tmp_path):
    result = build(tiny_classifier, "nvidia-gpu", labelled_data, out=tmp_path, profile=FAST, calibration_samples=20,
                   evaluation_samples=20, min_cosine=-1.0, max_accuracy_drop=100.0)
    report = json.loads((result.folder / "report.json").read_text())
    assert report["artifact"]["format"] == "onnx" and report["artifact"]["precision"] == "int8"
    assert report["plan"][1]["residual_stream"].startswith("outlier channels")
    compiled = report["device_compile"]
    assert compiled["compiler"] == "tensorrt"
    if not HAS_TENSORRT:
        assert compiled["status"] == "not run" and "TensorRT is not installed" in compiled["reason"]
    manifest = json.loads((result.folder / "manifest.json").read_text())
    names = {entry["path"] for entry in manifest["files"]}
    assert {"model.onnx", "build_engine.py", "build_engine.sh"} <= names
    assert "## Device compiler" in (result.folder / "report.md").read_text()


def test_two_four_pruning_reaches_the_onnx_weights_and_the_engine_flags(tiny_classifier, labelled_data, tmp_path):
    import onnx
    from onnx import numpy_helper

    result = build(tiny_classifier, "nvidia-gpu", labelled_data, out=tmp_path, profile=FAST, calibration_samples=20,
                   evaluation_samples=20, min_cosine=-1.0, max_accuracy_drop=100.0, precision="int8",
                   recipe="prune:pattern=2:4,steps=10")
    assert result.report["device_compile"]["sparse_weights"] is True
    assert "--sparsity=enable" in result.report["device_compile"]["command"]
    assert "SPARSE = True" in (result.folder / "build_engine.py").read_text()
    graph = onnx.load(str(result.folder / "model.onnx")).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    kernels = [weights[n.input[0]] for n in graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in weights and weights[n.input[0]].ndim == 2]

    def two_of_four(kernel) -> bool:  # TensorRT's pattern: at most 2 non-zeros in every 4 along the input axis
        rows = kernel.shape[0] - kernel.shape[0] % 4
        return bool((np.count_nonzero(kernel[:rows].reshape(rows // 4, 4, -1), axis=1) <= 2).all())

    # the tiny encoder's one layer: query, key, value, attention output, FFN in and out (the pooler head stays dense)
    assert sum(two_of_four(kernel) for kernel in kernels) == 6


def test_sequence_range_gives_a_dynamic_onnx_and_an_optimisation_profile(tiny_classifier, labelled_data, tmp_path,
                                                                          monkeypatch):
    build_module = importlib.import_module("deploykit.pipeline")
    from deploykit.target_loader import load_target

    ranged = load_target("nvidia-gpu").model_copy(update={"sequence_range": (8, 32)})
    monkeypatch.setattr(build_module, "resolve_targets", lambda names: [ranged])
    result = build(tiny_classifier, "nvidia-gpu", labelled_data, out=tmp_path, profile=FAST, calibration_samples=20,
                   evaluation_samples=20, min_cosine=-1.0, max_accuracy_drop=100.0, precision="fp32")
    report = result.report
    assert report["plan"][1]["sequence_axis"] == "dynamic, 8..32 tokens (optimum 16)"
    shapes = report["device_compile"]["shapes"]
    assert shapes == {"token_ids": [8, 16, 32], "padding_mask": [8, 16, 32]}
    command = report["device_compile"]["command"]
    assert "--minShapes=token_ids:1x8,padding_mask:1x8" in command and "--maxShapes=token_ids:1x32" in command
    assert "SHAPES = {'token_ids': [8, 16, 32]" in (result.folder / "build_engine.py").read_text()
    runner = get_backend("tensorrt").load(result.folder / "model.onnx", 1, {})
    bundle = load_model(tiny_classifier)
    for length in (8, 32):  # the same file runs at every length of the range, as the Keras model does
        inputs = bundle.encode(["team goal win", "bread soup cheese recipe bake taste garlic"], length)
        np.testing.assert_allclose(run_examples(runner, inputs), bundle.predict(inputs), atol=1e-4)


def test_sequence_range_is_checked_against_the_build(tiny_classifier, labelled_data, tmp_path, monkeypatch):
    build_module = importlib.import_module("deploykit.pipeline")
    from deploykit.errors import DeployKitError
    from deploykit.targets import Target
    from deploykit.target_loader import load_target

    ranged = load_target("nvidia-gpu").model_copy(update={"sequence_range": (24, 32)})
    monkeypatch.setattr(build_module, "resolve_targets", lambda names: [ranged])
    with pytest.raises(DeployKitError, match="accepts sequences of 24..32 tokens .* but the build uses 16"):
        build(tiny_classifier, "nvidia-gpu", labelled_data, out=tmp_path / "out", profile=FAST, precision="fp32")
    with pytest.raises(ValueError, match="only for runtime tensorrt"):
        Target.model_validate({**load_target("arm-cpu").model_dump(), "sequence_range": (8, 32)})


def test_qat_fake_quant_becomes_symmetric_int8_qdq(tiny_classifier, labelled_data, tmp_path):
    import onnx
    from onnx import numpy_helper

    result = build(tiny_classifier, "nvidia-gpu", labelled_data, out=tmp_path, profile=FAST, calibration_samples=20,
                   evaluation_samples=20, min_cosine=-1.0, max_accuracy_drop=100.0, precision="int8",
                   recipe="qat:steps=5")
    assert "made symmetric int8" in result.report["artifact"]["method"]  # the QAT ranges, not a new calibration
    graph = onnx.load(str(result.folder / "model.onnx")).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    zero_points = [weights[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # tf2onnx wrote uint8, zp 128
    assert result.report["metrics"]["fidelity"]["agreement"] >= 0.9
