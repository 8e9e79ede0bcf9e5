"""Precision "mixed": the per-group sensitivity analysis, the greedy choice, and the graphs it writes."""

import json

import numpy as np
import pytest

from deploykit.backends.base import ExportOptions, get_backend
from deploykit.pipeline import build
from deploykit.evaluate import run_examples
from deploykit.graph.mixed_precision import PrecisionGroup, choose_groups, rank_groups
from deploykit.models import load_model
from deploykit.profiling.local import ProfileSettings

FAST = ProfileSettings(runs=5, warmup=1)


def _groups(*names):
    return [PrecisionGroup(name, (f"{name}_op",), 10) for name in names]


def _additive_fidelity(costs):
    """Fidelity = 1 minus the cost of every group left quantized: each group's harm is known exactly."""
    return lambda kept: 1.0 - sum(cost for name, cost in costs.items() if name not in kept)


def test_ranking_puts_the_group_whose_quantization_hurts_most_first():
    costs = {"a": 0.001, "b": 0.02, "c": 0.005}
    all_quantized, ranking = rank_groups(_groups("a", "b", "c"), _additive_fidelity(costs))
    assert all_quantized == pytest.approx(1 - 0.026)
    assert [row.group.name for row in ranking] == ["b", "c", "a"]
    assert ranking[0].kept_high == pytest.approx(1 - 0.006) and ranking[0].alone_quantized == pytest.approx(1 - 0.02)


def test_choice_stops_at_the_goal():
    costs = {"a": 0.001, "b": 0.02, "c": 0.005}
    fidelity_of = _additive_fidelity(costs)
    all_quantized, ranking = rank_groups(_groups("a", "b", "c"), fidelity_of)
    choice = choose_groups(all_quantized, ranking, fidelity_of, target=0.993, max_share=1.0, metric="cosine_mean")
    assert [group.name for group in choice.kept] == ["b"] and choice.reached
    assert choice.shares(_groups("a", "b", "c"))["ops_kept_high_share"] == pytest.approx(1 / 3, abs=1e-3)


def test_choice_keeps_no_more_than_the_share_allowed():
    costs = {name: 0.01 for name in "abcd"}
    fidelity_of = _additive_fidelity(costs)
    all_quantized, ranking = rank_groups(_groups(*"abcd"), fidelity_of)
    choice = choose_groups(all_quantized, ranking, fidelity_of, target=0.999, max_share=0.5, metric="cosine_mean")
    assert len(choice.kept) == 2 and not choice.reached


@pytest.fixture(scope="module")
def qdq_graph(tiny_classifier, tmp_path_factory):
    """The tiny classifier's Q/DQ graph with its precision groups, its inputs and the Keras outputs."""
    return _qdq_graph_of(tiny_classifier, tmp_path_factory.mktemp("mixed"))


def _qdq_graph_of(model, root):
    bundle = load_model(model)
    bundle.write_saved_model(root / "saved", 16)
    texts = ["team goal win", "bread soup", "coach league season player", "garlic dinner salad taste bake"]
    inputs = bundle.encode(texts * 5, 16)
    calibration = [{k: v[i:i + 1] for k, v in inputs.items()} for i in range(20)]
    backend = get_backend("tensorrt")
    graph = backend.mixed_graph(root / "saved", ExportOptions(calibration=calibration), root / "scratch")
    return backend, graph, inputs, bundle.predict(inputs), root


def _consumers_of_dequantized(model) -> set[str]:
    producers = {output: node for node in model.graph.node for output in node.output}
    return {node.name for node in model.graph.node if node.op_type in ("MatMul", "Gemm")
            and any(producers.get(name) is not None and producers[name].op_type == "DequantizeLinear"
                    for name in node.input)}


def test_a_mixed_graph_runs_fp16_exactly_on_the_kept_groups(qdq_graph):
    import onnx

    backend, graph, inputs, reference, root = qdq_graph
    assert len(graph.groups) >= 4  # query/key/value, attention output, the two FFN layers
    kept = graph.groups[1]
    artifact = graph.write(frozenset({kept.name}), root / "one-kept")
    model = onnx.load(str(artifact.path))
    weights = {init.name: init.data_type for init in model.graph.initializer}
    quantized = _consumers_of_dequantized(model)
    every_op = {op for group in graph.groups for op in group.ops}
    assert quantized == every_op - set(kept.ops)
    producers = {output: node for node in model.graph.node for output in node.output}
    for node in model.graph.node:
        if node.name in kept.ops:
            for name in node.input:
                assert (producers[name].op_type == "Cast" if name in producers
                        else weights[name] == onnx.TensorProto.FLOAT16)
    outputs = run_examples(backend.load(artifact.path, 1, artifact.runtime_config), inputs)
    assert np.isfinite(outputs).all() and outputs.shape == reference.shape


def test_nothing_kept_is_the_int8_graph_and_everything_kept_has_no_qdq_left(qdq_graph):
    import onnx

    _, graph, _, _, root = qdq_graph
    none_kept = onnx.load(str(graph.write(frozenset(), root / "none").path))
    assert _consumers_of_dequantized(none_kept) == {op for group in graph.groups for op in group.ops}
    all_kept = onnx.load(str(graph.write(frozenset(g.name for g in graph.groups), root / "all").path))
    assert not _consumers_of_dequantized(all_kept)
    kept_ops = {node.name: node for node in all_kept.graph.node if node.op_type in ("MatMul", "Gemm")}
    quantized = {node.input[0] for node in all_kept.graph.node if node.op_type == "QuantizeLinear"}
    producers = {output: node for node in all_kept.graph.node for output in node.output}
    for name in quantized:  # what is still quantized is not a kept op's output, not even through its Cast back
        source = producers.get(name)
        assert source is None or (source.name not in kept_ops and not source.name.endswith("_output_cast")), name


def test_the_analysis_ranks_a_deliberately_damaged_group_first(tiny_backbone_file, tmp_path):
    """On the embedding model, whose output is the encoder's own: a briefly trained classifier's two logits can
    depend so little on its encoder that the head's int8 rounding outweighs any damage inside (seen in CI)."""
    from onnx import numpy_helper

    backend, graph, inputs, reference, root = _qdq_graph_of(tiny_backbone_file, tmp_path)
    damaged = graph.groups[2]
    producers = {output: node for node in graph.quantized.graph.node for output in node.output}
    consumer = next(node for node in graph.quantized.graph.node if node.name == damaged.ops[0])
    dequantize = producers[consumer.input[1]]  # the int8 weight's DequantizeLinear
    scales = {init.name: init for init in graph.quantized.graph.initializer}
    scale = scales[dequantize.input[1]]
    # The int8 weights dequantize to three times their value: only this group's quantized form is wrong.
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 3, scale.name))

    def fidelity_of(kept):
        artifact = graph.write(kept, root / "variant")
        outputs = run_examples(backend.load(artifact.path, 1, artifact.runtime_config), inputs)
        return -float(np.abs(outputs - reference).mean())

    _, ranking = rank_groups(graph.groups, fidelity_of)
    assert ranking[0].group == damaged


def test_nvidia_gpu_mixed_build_reports_the_analysis(tiny_classifier, labelled_data, tmp_path):
    result = build(tiny_classifier, "nvidia-gpu", labelled_data, out=tmp_path, profile=FAST, calibration_samples=20,
                   evaluation_samples=20, min_cosine=-1.0, max_accuracy_drop=100.0, precision="mixed")
    report = json.loads((result.folder / "report.json").read_text())
    mixed = report["artifact"]["mixed_precision"]
    assert report["artifact"]["precision"] == "mixed" and mixed["metric"] == "agreement"
    assert len(mixed["ranking"]) == mixed["groups"] >= 4
    assert mixed["groups_kept_high"] == len(mixed["kept_high"])


def _saved_with_samples(model, folder):
    """The model traced at length 16 into `folder`, 12 encoded texts, and the same as batch-1 calibration samples."""
    bundle = load_model(model)
    bundle.write_saved_model(folder, 16)
    inputs = bundle.encode(["team goal win", "bread soup", "coach league season player"] * 4, 16)
    return inputs, [{k: v[i:i + 1] for k, v in inputs.items()} for i in range(12)]


def test_openvino_mixed_graph_takes_the_fake_quantize_off_exactly_the_kept_matmuls(tiny_classifier, tmp_path):
    import openvino as ov

    inputs, calibration = _saved_with_samples(tiny_classifier, tmp_path / "saved")
    backend = get_backend("openvino")
    graph = backend.mixed_graph(tmp_path / "saved", ExportOptions(calibration=calibration), tmp_path / "scratch")
    assert len(graph.groups) >= 4
    kept = graph.groups[0]
    artifact = graph.write(frozenset({kept.name}), tmp_path / "mixed")

    def reads_fake_quantize(node) -> bool:
        return any(port.get_source_output().get_node().get_type_name() == "FakeQuantize" for port in node.inputs())

    model = ov.Core().read_model(str(artifact.path))
    matmuls = {node.get_friendly_name(): node for node in model.get_ordered_ops() if node.get_type_name() == "MatMul"}
    every_op = {op for group in graph.groups for op in group.ops}
    assert {name for name, node in matmuls.items() if reads_fake_quantize(node)} == every_op - set(kept.ops)
    outputs = run_examples(backend.load(artifact.path, 1, {}), inputs)
    assert np.isfinite(outputs).all()


def test_int4_weights_ir_is_smaller_runs_and_stores_four_bit_weights(tiny_classifier, tmp_path):
    import openvino as ov

    inputs, calibration = _saved_with_samples(tiny_classifier, tmp_path / "saved")
    backend = get_backend("openvino")
    sizes, outputs = {}, {}
    for precision in ("fp32", "int4-weights"):
        artifact = backend.export(tmp_path / "saved", precision, ExportOptions(calibration=calibration),
                                  tmp_path / precision)
        sizes[precision] = artifact.path.with_suffix(".bin").stat().st_size  # the weights (the tiny graph's XML
        # text outweighs them)
        outputs[precision] = run_examples(backend.load(artifact.path, 1, artifact.runtime_config), inputs)
    model = ov.Core().read_model(str(tmp_path / "int4-weights" / "model.xml"))
    types = {node.get_output_element_type(0).get_type_name() for node in model.get_ordered_ops()
             if node.get_type_name() == "Constant"}
    assert types & {"u4", "i4"}  # the 32-wide layers got groups of 32 (128 does not divide them)
    assert sizes["int4-weights"] < sizes["fp32"]
    assert np.isfinite(outputs["int4-weights"]).all()
    assert np.abs(outputs["int4-weights"] - outputs["fp32"]).max() < 0.5 * np.abs(outputs["fp32"]).max()


def _gathered_table_type(path) -> str:
    """The element type of the constant the embedding Gather reads (through its decompression chain)."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    gather = next(node for node in model.get_ordered_ops() if node.get_type_name() == "Gather"
                  and node.get_output_partial_shape(0).rank.get_length() == 3)
    node = gather.input_value(0).get_node()
    while node.get_type_name() != "Constant":
        node = node.input_value(0).get_node()
    return node.get_output_element_type(0).get_type_name()


def test_int4_embeddings_and_algorithms(tiny_classifier, tmp_path):
    """--int4-embeddings puts the embedding table at 4 bits (int8 otherwise); rtn and gptq both run and each gives
    its own weights."""
    from deploykit.backends.base import Int4Settings

    inputs, calibration = _saved_with_samples(tiny_classifier, tmp_path / "saved")
    backend = get_backend("openvino")
    outputs, tables = {}, {}
    for name, settings in {"rtn": Int4Settings(algorithm="rtn"), "gptq": Int4Settings(algorithm="gptq"),
                           "rtn-embeddings": Int4Settings(algorithm="rtn", embeddings=True)}.items():
        artifact = backend.export(tmp_path / "saved", "int4-weights", ExportOptions(calibration, int4=settings),
                                  tmp_path / name)
        outputs[name] = run_examples(backend.load(artifact.path, 1, artifact.runtime_config), inputs)
        tables[name] = _gathered_table_type(artifact.path)
    assert tables["rtn"] in ("u8", "i8") and tables["rtn-embeddings"] in ("u4", "i4")
    assert all(np.isfinite(values).all() for values in outputs.values())
    assert not np.array_equal(outputs["rtn"], outputs["gptq"])


def test_litert_mixed_graph_has_int16_exactly_on_the_kept_regions(tiny_backbone_file, tmp_path):
    """Full-integer LiteRT: the kept region's ops (and the requantizations into them) output int16, every other op
    int8 or a non-float type, no op outputs float; nothing kept has no int16 at all."""
    from ai_edge_litert.interpreter import Interpreter

    bundle = load_model(tiny_backbone_file)
    bundle.write_saved_model(tmp_path / "saved", 16, masked_logit=-100.0)  # the integer-only trace
    inputs = bundle.encode(["team goal win", "bread soup", "coach league season player"] * 4, 16)
    calibration = [{k: v[i:i + 1] for k, v in inputs.items()} for i in range(12)]
    backend = get_backend("litert")
    graph = backend.mixed_graph(tmp_path / "saved", ExportOptions(calibration=calibration, integer_only=True),
                                tmp_path / "scratch")
    assert len(graph.groups) >= 4 and not graph.measure_complements
    kept = next(group for group in graph.groups if "layer_norm" in group.name)

    def output_types(path):
        interpreter = Interpreter(model_path=str(path))
        tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
        return [(op["op_name"], "".join(f"{tensors[i]['name']};" for i in op["outputs"]),
                 {np.dtype(tensors[i]["dtype"]).name for i in op["outputs"]}) for op in interpreter._get_ops_details()]

    artifact = graph.write(frozenset({kept.name}), tmp_path / "one")
    ops = output_types(artifact.path)
    assert not any("float32" in types for _, _, types in ops)
    int16 = {scope for name, scope, types in ops if "int16" in types and name != "QUANTIZE"}
    assert int16 == set(kept.ops) & {scope for _, scope, _ in ops}
    assert artifact.details["activations"]["int16"]["tensors"] >= len(int16)
    outputs = run_examples(backend.load(artifact.path, 1, {}), inputs)
    assert np.isfinite(outputs).all()
    none_kept = graph.write(frozenset(), tmp_path / "none")
    assert "int16" not in none_kept.details["activations"]


def test_mobile_npu_mixed_build_reports_regions_shares_and_predicted_cost(tiny_backbone_file, labelled_data, tmp_path):
    result = build(tiny_backbone_file, "mobile-npu", labelled_data, out=tmp_path, profile=FAST, calibration_samples=20,
                   evaluation_samples=20, min_cosine=0.9999, precision="mixed")
    report = json.loads((result.folder / "report.json").read_text())
    mixed = report["artifact"]["mixed_precision"]
    assert report["artifact"]["precision"] == "mixed" and mixed["metric"] == "cosine_mean"
    assert all(row["fidelity_alone_quantized"] is None for row in mixed["ranking"])  # kept-high side only
    assert 0 < mixed["groups_kept_high"] <= mixed["groups"] // 2  # the goal is out of reach: the share cap stops it
    activations = report["artifact"]["activations"]
    int16, int8 = activations["int16"]["bytes"] / 2, activations["int8"]["bytes"]
    share = int16 / (int16 + int8)  # of the int8/int16 activation elements
    cost = mixed["predicted_cost"]
    assert cost["vs_all_int8"] == pytest.approx(1 + share, abs=1e-3)  # int16 costs 2x int8 in the target's table
    assert cost["vs_all_int16"] == pytest.approx((1 + share) / 2, abs=1e-3)
    assert report["compatibility"]["fallback_ops"] in (None, {})


def _tflite_weight_types(path) -> dict[str, set[str]]:
    """The stored type of each FULLY_CONNECTED and EMBEDDING_LOOKUP op's weight tensor, by op name."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    type_names = {value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
    op_names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    weight_input = {"FULLY_CONNECTED": 1, "EMBEDDING_LOOKUP": 1}
    found: dict[str, set[str]] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = op_names[max(code.builtinCode, code.deprecatedBuiltinCode)]
            if name in weight_input:
                found.setdefault(name, set()).add(type_names[subgraph.tensors[op.inputs[weight_input[name]]].type])
    return found


def test_table_lookups_rewritten_for_litert_compute_the_same(tiny_backbone_file, tmp_path):
    """GATHER on the embedding tables becomes EMBEDDING_LOOKUP (ids flattened), with bit-identical float outputs."""
    import tensorflow as tf

    from deploykit.graph.tflite_lookup import as_embedding_lookups

    inputs, _ = _saved_with_samples(tiny_backbone_file, tmp_path / "saved")
    float_model = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved")).convert()
    rewritten, count = as_embedding_lookups(float_model)
    assert count >= 1
    paths = {}
    for name, model in {"gather": float_model, "lookup": rewritten}.items():
        paths[name] = tmp_path / f"{name}.tflite"
        paths[name].write_bytes(model)
    assert "EMBEDDING_LOOKUP" in _tflite_weight_types(paths["lookup"])
    assert "EMBEDDING_LOOKUP" not in _tflite_weight_types(paths["gather"])
    backend = get_backend("litert")
    outputs = [run_examples(backend.load(path, 1, {}), inputs) for path in paths.values()]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert as_embedding_lookups(rewritten) == (rewritten, 0)  # nothing left to rewrite


def test_litert_int4_weights_are_smaller_run_and_store_int4(tiny_backbone_file, tmp_path):
    """LiteRT int4-weights: every FULLY_CONNECTED weight int4, the embedding tables int8 (int4 with embeddings);
    smaller than fp32, and it runs close to it."""
    from deploykit.backends.base import Int4Settings

    inputs, calibration = _saved_with_samples(tiny_backbone_file, tmp_path / "saved")
    backend = get_backend("litert")
    sizes, outputs, types = {}, {}, {}
    for name, precision, settings in [("fp32", "fp32", Int4Settings()),
                                      ("int4", "int4-weights", Int4Settings(group_size=32)),
                                      ("int4-embeddings-rtn", "int4-weights",
                                       Int4Settings(group_size=32, algorithm="rtn", embeddings=True))]:
        artifact = backend.export(tmp_path / "saved", precision, ExportOptions(calibration, int4=settings),
                                  tmp_path / name)
        sizes[name] = artifact.path.stat().st_size
        outputs[name] = run_examples(backend.load(artifact.path, 1, {}), inputs)
        types[name] = _tflite_weight_types(artifact.path)
    assert types["int4"] == {"FULLY_CONNECTED": {"INT4"}, "EMBEDDING_LOOKUP": {"INT8"}}
    assert types["int4-embeddings-rtn"] == {"FULLY_CONNECTED": {"INT4"}, "EMBEDDING_LOOKUP": {"INT4"}}
    assert sizes["int4-embeddings-rtn"] < sizes["int4"] < sizes["fp32"]
    for name in ("int4", "int4-embeddings-rtn"):
        assert np.isfinite(outputs[name]).all()
        assert np.abs(outputs[name] - outputs["fp32"]).max() < 0.5 * np.abs(outputs["fp32"]).max()


@pytest.mark.parametrize("settings, message", [
    ({"algorithm": "awq"}, "--int4-algorithm rtn or gptq"),
    ({"ratio": 0.8}, "--int4-ratio 0.8 cannot apply"),
    ({"group_size": 96}, "got --int4-group-size 96"),
    ({"embeddings": True, "embedding_group_size": 96}, "got --int4-embedding-group-size 96"),
])
def test_litert_int4_refuses_settings_it_cannot_honour(tiny_backbone_file, tmp_path, settings, message):
    from deploykit.backends.base import Int4Settings
    from deploykit.errors import DeployKitError

    _, calibration = _saved_with_samples(tiny_backbone_file, tmp_path / "saved")
    with pytest.raises(DeployKitError, match=message):
        get_backend("litert").export(tmp_path / "saved", "int4-weights",
                                     ExportOptions(calibration, int4=Int4Settings(**settings)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_build_refuses_litert_int4_settings_before_any_work(tiny_backbone_file, tmp_path):
    from deploykit.backends.base import Int4Settings
    from deploykit.errors import DeployKitError

    with pytest.raises(DeployKitError, match="--int4-algorithm rtn or gptq"):
        build(tiny_backbone_file, "arm-cpu", out=tmp_path / "out", precision="int4-weights",
              int4=Int4Settings(algorithm="awq"))
    assert not (tmp_path / "out").exists()
