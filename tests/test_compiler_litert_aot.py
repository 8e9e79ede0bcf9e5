"""The litert-aot device compiler and the two vendor mobile-NPU profiles that use it.

The vendor SDK wheels (ai-edge-litert-sdk-<vendor>) are not installed here, which is the
"not run" case every build machine without them sees; the "compiled" mapping is checked
against ai_edge_litert.aot's own result types, and the "failed" path against the real
AOT driver, whose Qualcomm plugin cannot load without the SDK.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from deploykit.backends.base import ExportedArtifact, get_backend
from deploykit.graph.compatibility import GraphOp, GraphTensor, check_compatibility
from deploykit.compilers.base import CompileRequest, get_compiler
from deploykit.compilers.litert_aot import LiteRTAotCompiler, soc_models
from deploykit.errors import DeployKitError
from deploykit.planner import plan_candidates
from deploykit.target_loader import load_target, load_target_file

HEXAGON, MEDIATEK = "mobile-npu-hexagon", "mobile-npu-mediatek"
# The op names of deploykit's int8 all-MiniLM-L6-v2 export (one of each), as LiteRT's interpreter names them.
MINILM_OPS = ["ADD", "BATCH_MATMUL", "CAST", "FULLY_CONNECTED", "GATHER", "GELU", "GREATER", "LESS", "MEAN", "MUL",
              "QUANTIZE", "RESHAPE", "RSQRT", "SELECT", "SELECT_V2", "SOFTMAX", "SUB", "SUM", "TRANSPOSE"]
SDK_PRESENT = importlib.util.find_spec("ai_edge_litert_sdk_qualcomm") is not None


def _request(folder: Path, model: Path) -> CompileRequest:
    artifact = ExportedArtifact(model, [model], "tflite", "int8", "test")
    return CompileRequest(artifact=artifact, folder=folder, sequence_length=16, input_names=("input_ids",))


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory) -> Path:
    """A full-integer int8 .tflite (one matmul + relu), made by the TFLite converter."""
    import tensorflow as tf

    weights = tf.constant(np.random.RandomState(0).randn(8, 4).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
    def layer(x):
        return tf.nn.relu(tf.matmul(x, weights))

    converter = tf.lite.TFLiteConverter.from_concrete_functions([layer.get_concrete_function()], layer)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([np.random.RandomState(i).randn(1, 8).astype("float32")]
                                                for i in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path = tmp_path_factory.mktemp("tiny") / "model.tflite"
    path.write_bytes(converter.convert())
    return path


def test_vendor_profiles_load_with_their_compiler_settings():
    hexagon, mediatek = load_target(HEXAGON), load_target(MEDIATEK)
    qualcomm, neuron = get_compiler(hexagon.compiler), get_compiler(mediatek.compiler)
    assert isinstance(qualcomm, LiteRTAotCompiler) and isinstance(neuron, LiteRTAotCompiler)
    assert (qualcomm.settings.vendor, qualcomm.settings.soc_model) == ("qualcomm", "SM8650")
    assert (neuron.settings.vendor, neuron.settings.soc_model) == ("mediatek", "MT6989")
    assert "SM8650" in soc_models("qualcomm") and "MT6989" in soc_models("mediatek")
    assert "Tensor_G4" in soc_models("google_tensor")
    assert get_compiler({"name": "litert-aot", "vendor": "google_tensor", "soc_model": "tensor_g4"}) \
        .settings.soc_model == "Tensor_G4"  # the enum's own spelling, whatever case the YAML used


def test_bad_vendor_or_soc_is_a_one_line_error(tmp_path):
    with pytest.raises(DeployKitError, match="vendor: Input should be 'qualcomm', 'mediatek' or 'google_tensor'"):
        get_compiler({"name": "litert-aot", "vendor": "apple"})
    with pytest.raises(DeployKitError, match=r"soc_model: .*'SM9999' is not a qualcomm SoC.*valid: .*SM8650"):
        get_compiler({"name": "litert-aot", "vendor": "qualcomm", "soc_model": "SM9999"})
    with pytest.raises(DeployKitError, match="MT6989"):  # a MediaTek SoC is not a Qualcomm one
        get_compiler({"name": "litert-aot", "vendor": "qualcomm", "soc_model": "MT6989"})
    text = (Path(__file__).parent.parent / "targets" / f"{HEXAGON}.yaml").read_text()
    bad = tmp_path / "bad-npu.yaml"
    bad.write_text(text.replace("soc_model: SM8650", "soc_model: SM0000"))
    with pytest.raises(DeployKitError, match=r"bad-npu.yaml is invalid: .*SM0000") as error:
        load_target_file(bad)
    assert "\n" not in str(error.value)


@pytest.mark.skipif(SDK_PRESENT, reason="the Qualcomm SDK is installed, so the compiler would run")
def test_without_the_sdk_compile_is_not_run_and_leaves_the_script(tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(b"not compiled here")
    compiler = get_compiler(load_target(HEXAGON).compiler)
    assert "pip install ai-edge-litert-sdk-qualcomm==" in compiler.missing()
    result = compiler.compile(_request(tmp_path, model))
    assert result.status == "not run"
    assert "Qualcomm" in result.reason and "pip install ai-edge-litert-sdk-qualcomm==" in result.reason
    assert result.files == [tmp_path / "compile_npu.py"]
    entry = result.as_dict(tmp_path)
    assert entry["files"] == ["compile_npu.py"] and entry["command"] == "python compile_npu.py"
    assert (entry["vendor"], entry["soc_model"]) == ("qualcomm", "SM8650")
    json.dumps(entry)  # it goes into report.json as is
    script = (tmp_path / "compile_npu.py").read_text()
    compile(script, "compile_npu.py", "exec")
    assert "'model.tflite'" in script and "target.SocModel('SM8650')" in script
    assert "from ai_edge_litert.aot.vendors.qualcomm import target" in script


def test_soc_model_left_out_compiles_for_every_soc(tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(b"x")
    result = get_compiler({"name": "litert-aot", "vendor": "mediatek"}).compile(_request(tmp_path, model))
    assert result.details["soc_model"] == "ALL"
    assert "target.SocModel('ALL')" in (tmp_path / "compile_npu.py").read_text()


def test_compiled_models_land_in_the_folder_with_partition_facts(tmp_path, monkeypatch):
    """aot_compile's result (the package's own types) becomes files and per-subgraph facts."""
    from ai_edge_litert.aot import aot_compile
    from ai_edge_litert.aot.core import aot_types
    from ai_edge_litert.aot.vendors.qualcomm.qualcomm_backend import QualcommBackend

    backend = QualcommBackend.create({"backend_id": "qualcomm", "soc_model": "SM8650"})
    compiled = aot_types.Model.create_from_bytes(b"npu bytecode")
    compiled.partition_stats = aot_types.PartitionStats([aot_types.SubgraphPartitionStats(0, 280, 290, 2)])
    calls = []

    def fake_aot_compile(path, output_dir=None, target=None, keep_going=True, **kwargs):
        calls.append((path, target))
        return aot_types.CompilationResult(models_with_backend=[(backend, compiled)])

    monkeypatch.setattr(aot_compile, "aot_compile", fake_aot_compile)
    compiler = get_compiler(load_target(HEXAGON).compiler)
    monkeypatch.setattr(compiler, "missing", lambda: None)
    model = tmp_path / "model.tflite"
    model.write_bytes(b"int8 graph")
    result = compiler.compile(_request(tmp_path, model))
    assert result.status == "compiled", result.reason
    assert calls[0][0] == str(model) and repr(calls[0][1]) == "Qualcomm_SM8650"
    assert (tmp_path / "model_Qualcomm_SM8650.tflite").read_bytes() == b"npu bytecode"
    assert result.reason == "ops on the NPU: Qualcomm_SM8650 280/290"
    assert result.details["compiled"] == [{"soc": "Qualcomm_SM8650", "file": "model_Qualcomm_SM8650.tflite",
                                           "subgraphs": [{"subgraph": 0, "ops_on_npu": 280, "ops_total": 290,
                                                          "npu_partitions": 2}]}]
    assert result.as_dict(tmp_path)["files"] == ["compile_npu.py", "model_Qualcomm_SM8650.tflite"]


@pytest.mark.skipif(SDK_PRESENT, reason="with the Qualcomm SDK installed the plugin loads and compiles")
def test_a_vendor_compiler_that_cannot_compile_gives_failed_with_its_cause(tmp_path, tiny_int8, monkeypatch):
    """The real AOT driver and Qualcomm plugin, which cannot load its QNN libraries without the SDK."""
    compiler = get_compiler(load_target(HEXAGON).compiler)
    monkeypatch.setattr(compiler, "missing", lambda: None)
    folder = tmp_path / "target"
    folder.mkdir()
    result = compiler.compile(_request(folder, tiny_int8))
    assert result.status == "failed"
    assert result.reason.startswith("the Qualcomm compiler failed for Qualcomm_SM8650: ")
    assert "\n" not in result.reason and "libQnn" in result.reason
    assert (folder / "compile_npu_Qualcomm_SM8650.log").is_file()  # moved out of /tmp into the target folder
    assert result.details["compiled"] == [] and result.details["refused"][0]["soc"] == "Qualcomm_SM8650"


def test_the_planner_and_op_checks_differ_between_the_two_npus():
    hexagon, mediatek = load_target(HEXAGON), load_target(MEDIATEK)
    backend = get_backend("litert")
    hexagon_plan = [c.precision for c in plan_candidates(hexagon, backend, None)]
    mediatek_plan = [c.precision for c in plan_candidates(mediatek, backend, None)]
    assert "a16w8" in hexagon_plan and "a16w8" not in mediatek_plan
    assert mediatek_plan == ["int8", "int8"]  # post-training int8, then QAT + int8
    with pytest.raises(DeployKitError, match="cannot run there"):
        plan_candidates(mediatek, backend, "a16w8")
    ops = [GraphOp(name, (GraphTensor("int8", (1, 16, 384)),)) for name in MINILM_OPS]
    assert check_compatibility(ops, hexagon).fallback_ops == {}
    assert set(check_compatibility(ops, mediatek).fallback_ops) == {"GATHER", "LESS", "SELECT", "SELECT_V2"}


HOSTILE = '"""; import os; os.system("touch pwned") #\'\n'


def test_generated_script_holds_hostile_paths_as_literals_only(tmp_path):
    folder, elsewhere = tmp_path / "target", tmp_path / HOSTILE.strip()
    folder.mkdir()
    elsewhere.mkdir()
    model = elsewhere / "model.tflite"  # outside the folder: the script names it by its absolute path
    model.write_bytes(b"x")
    get_compiler({"name": "litert-aot", "vendor": "qualcomm", "soc_model": "SM8650"}).compile(_request(folder, model))
    import ast

    tree = ast.parse((folder / "compile_npu.py").read_text())
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert not any("system" in call for call in calls)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names}
    assert imported == {"pathlib", "sys", "tempfile", "aot_compile", "target"}
    assert HOSTILE.strip() in ast.get_docstring(tree)


@pytest.mark.parametrize("soc", ['SM8650"); import os; os.system("id', "SM 8650", "", "x" * 65])
def test_soc_model_must_be_an_identifier_even_without_the_package(soc, tmp_path):
    with pytest.raises(DeployKitError, match="soc_model"):
        get_compiler({"name": "litert-aot", "vendor": "qualcomm", "soc_model": soc})
