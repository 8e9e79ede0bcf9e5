"""TensorRT (nvidia-gpu): the ONNX graph TensorRT's parser consumes, validated with onnxruntime here.

TensorRT compiles its engine on the GPU that runs it, so the artifact is ONNX
(batch 1; static at the build's sequence length, or with a dynamic `sequence` axis
when the target sets `sequence_range`); `compilers/tensorrt.py`
builds the engine when TensorRT and a GPU are present, or leaves the command.

- fp32: tf2onnx of the SavedModel.
- fp16: the same graph with float tensors stored as fp16 (inputs/outputs kept),
  what TensorRT runs with `--fp16`.
- int8: explicit quantization, the form TensorRT fuses into int8 GEMMs: Q/DQ
  pairs (zero point 0, per-channel weights, per-tensor activations) in front of
  every MatMul/Gemm whose weight is a matrix at least `MIN_QUANTIZED_DIM` wide in
  both directions: the encoder's dense layers, not LayerNorm's one-column sums.
  Activation ranges come from percentile calibration (a few outliers would
  otherwise set every scale), on a graph whose residual stream is traced with
  its outlier channels divided out (`residual_scaling.py`), as for integer-only
  targets. When the graph already holds QuantizeLinear nodes (the `qat` pass's
  fake-quant ops, converted by tf2onnx), their learned ranges are kept.

On this host the runner is onnxruntime on the CPU: it proves the graph and its
fidelity; latency on the GPU is measured only by the engine build.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from deploykit.backends.base import (DEFAULT_CONVERTER_TIMEOUT_S, Backend, ExportedArtifact, ExportOptions, Inputs,
                                     MixedGraph, LoadedModel)
from deploykit.errors import DeployKitError
from deploykit.graph.mixed_precision import PrecisionGroup, group_name
from deploykit.graph.onnx_canonical import canonicalize
from deploykit.subprocesses import run_step

OPSET = 17  # TensorRT 8.6+ parses it; per-channel Q/DQ needs >= 13
MIN_QUANTIZED_DIM = 16  # narrower weights are statistics (LayerNorm sums), not GEMMs worth int8


class TensorRTBackend(Backend):
    name = "tensorrt"
    suffix = ".onnx"
    format = "onnx"
    precisions = {
        "fp32": f"tf2onnx (opset {OPSET}), float32 ONNX for TensorRT",
        "fp16": "tf2onnx, then float tensors stored as fp16 (onnxruntime float16 converter), fp32 inputs/outputs",
        "int8": "tf2onnx, then explicit-quantization Q/DQ ONNX (onnxruntime quantize_static, QDQ format, "
        "symmetric, per-channel weights, percentile-calibrated activations)",
        "mixed": "the int8 Q/DQ graph with its most sensitive MatMuls (measured one group at a time) left without "
        "Q/DQ and stored as fp16, so TensorRT runs them in fp16",
    }
    scaled_stream_precisions = frozenset({"int8", "mixed"})
    reads_onnx = True

    def export(self, saved_model: Path, precision: str, options: ExportOptions, folder: Path) -> ExportedArtifact:
        import onnx

        method = self.describe(precision)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.onnx"
        with tempfile.TemporaryDirectory(prefix="deploykit-onnx-") as scratch:
            float_path = Path(scratch) / "float.onnx"
            if saved_model.suffix == ".onnx":  # ONNX input: already the graph TensorRT parses
                shutil.copyfile(saved_model, float_path)
            else:
                tf2onnx_file(saved_model, float_path, options.converter_timeout_s)
            if precision == "fp16":
                from onnxruntime.transformers.float16 import convert_float_to_float16

                onnx.save(convert_float_to_float16(onnx.load(str(float_path)), keep_io_types=True), str(path))
            elif precision == "int8":
                converted = onnx.load(str(float_path))
                if _has_quantize_nodes(converted):
                    symmetric_int8(converted)
                    onnx.save(converted, str(path))
                    method = ("tf2onnx of the QAT graph: its fake-quant ops become Q/DQ with the learned ranges, "
                              "made symmetric int8 (zero point 0) as TensorRT requires")
                else:
                    _quantize(float_path, path, options, Path(scratch))
            else:
                float_path.replace(path)
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        return ExportedArtifact(path=path, files=[path], format=self.format, precision=precision, method=method,
                                runtime_config={"onnx_opset": OPSET})

    def load(self, path: Path, threads: int, runtime_config: dict) -> LoadedModel:
        import onnxruntime as ort

        settings = ort.SessionOptions()
        settings.intra_op_num_threads = threads
        settings.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run(inputs: Inputs) -> np.ndarray:
            return session.run(None, {name: inputs[name] for name in names})[0]

        return LoadedModel(run)

    def mixed_graph(self, saved_model: Path, options: ExportOptions, scratch: Path) -> "QdqMixedGraph":
        scratch.mkdir(parents=True, exist_ok=True)
        float_path, quantized = scratch / "float.onnx", scratch / "int8.onnx"
        if saved_model.suffix == ".onnx":
            shutil.copyfile(saved_model, float_path)
        else:
            tf2onnx_file(saved_model, float_path, options.converter_timeout_s)
        _quantize(float_path, quantized, options, scratch)
        return QdqMixedGraph(scratch / "prepared.onnx", quantized, self.describe("mixed"))


def tf2onnx_file(saved_model: Path, output: Path, timeout_s: float = DEFAULT_CONVERTER_TIMEOUT_S) -> None:
    """Convert in a child process (tf2onnx logs verbosely and keeps TensorFlow graph state), then canonicalise."""
    import onnx

    command = [sys.executable, "-I", "-m", "tf2onnx.convert", "--saved-model", str(saved_model),
               "--output", str(output), "--opset", str(OPSET)]
    run_step("tf2onnx converting the model to ONNX", command, timeout_s, cwd=output.parent)
    if not output.exists():
        raise DeployKitError("tf2onnx converting the model to ONNX finished without writing a file.")
    model = onnx.load(str(output))
    for value in model.graph.input:  # a dynamic sequence axis (traced with a None length) gets a readable name
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 2 and dims[1].HasField("dim_param"):
            dims[1].dim_param = "sequence"
    canonicalize(model)
    onnx.save(model, str(output))


def _has_quantize_nodes(model) -> bool:
    return any(node.op_type == "QuantizeLinear" for node in model.graph.node)


def symmetric_int8(model) -> None:
    """Rewrite Q/DQ scales as symmetric int8 with zero point 0, the only form TensorRT accepts.

    tf2onnx turns fake-quant ops into uint8 Q/DQ with the learned [min, max] as scale and zero
    point; the symmetric range covering the same values is max(|min|, |max|) over 127. Converters
    share identical constants between nodes, so every (scale, zero point) pair gets new initializers
    computed from the original values.
    """
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    original = {init.name: init for init in graph.initializer}
    created: dict[tuple[str, str], tuple[str, str]] = {}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        pair = (node.input[1], node.input[2])
        if pair[0] not in original or pair[1] not in original:
            continue
        if pair not in created:
            scale = numpy_helper.to_array(original[pair[0]]).astype(np.float64)
            zero = numpy_helper.to_array(original[pair[1]]).astype(np.float64)
            lowest, highest = (-128, 127) if original[pair[1]].data_type == TensorProto.INT8 else (0, 255)
            symmetric = np.maximum(np.abs((lowest - zero) * scale), np.abs((highest - zero) * scale)) / 127
            names = (f"symmetric_scale_{len(created)}", f"symmetric_zero_{len(created)}")
            graph.initializer.append(numpy_helper.from_array(symmetric.astype(np.float32), names[0]))
            graph.initializer.append(numpy_helper.from_array(np.zeros(zero.shape, np.int8), names[1]))
            created[pair] = names
        node.input[1], node.input[2] = created[pair]
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)


def quantizable_nodes(model) -> list[str]:
    """MatMul/Gemm nodes whose constant weight is a matrix of at least MIN_QUANTIZED_DIM in both dimensions."""
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return [
        node.name for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm")
        and any(len(weights.get(name, ())) == 2 and min(weights[name]) >= MIN_QUANTIZED_DIM for name in node.input)
    ]


def calibration_reader(samples: list[Inputs]):
    """The calibration samples as the reader onnxruntime's quantize_static pulls them from."""
    from onnxruntime.quantization import CalibrationDataReader

    class Samples(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(samples)

        def get_next(self) -> dict | None:
            return next(self.remaining, None)

    return Samples()


def _quantize(float_path: Path, path: Path, options: ExportOptions, scratch: Path) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = scratch / "prepared.onnx"
    quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)  # static shapes: no sympy needed
    nodes = quantizable_nodes(onnx.load(str(prepared)))
    if not nodes:
        raise DeployKitError("the ONNX graph has no MatMul/Gemm with a weight matrix to quantize; export fp16 instead.")

    with contextlib.redirect_stdout(io.StringIO()):  # its calibrator prints progress lines
        quantize_static(
            str(prepared), str(path), calibration_reader(options.calibration), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           "CalibPercentile": options.activation_percentile},
        )


class QdqMixedGraph(MixedGraph):
    """The Q/DQ graph, writable with any groups of MatMuls taken out of int8: their inputs read the float tensors
    again (the activation before its QuantizeLinear, the weight from the graph before quantization) and the MatMul
    runs in fp16 between two Casts, the types TensorRT's strongly typed build follows."""

    def __init__(self, float_path: Path, quantized_path: Path, method: str):
        import onnx

        self.float_model, self.quantized = onnx.load(str(float_path)), onnx.load(str(quantized_path))
        self.method = method
        self.groups = _qdq_groups(self.quantized)

    def write(self, kept: frozenset[str], folder: Path) -> ExportedArtifact:
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self.quantized)
        ops = {op for group in self.groups if group.name in kept for op in group.ops}
        _to_fp16_without_qdq(model, self.float_model, ops)
        onnx.checker.check_model(model)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.onnx"
        onnx.save(model, str(path))
        return ExportedArtifact(path=path, files=[path], format=TensorRTBackend.format, precision="mixed",
                                method=self.method, runtime_config={"onnx_opset": OPSET})


def _qdq_groups(model) -> list[PrecisionGroup]:
    """One group per quantized activation tensor: the MatMul/Gemm nodes reading its DequantizeLinear."""
    producers = {output: node for node in model.graph.node for output in node.output}
    shapes = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in [*model.graph.value_info, *model.graph.input]}
    groups: dict[str, list[str]] = {}
    attention_blocks, block_of = 0, {}
    for node in model.graph.node:
        attention_blocks += node.op_type == "Softmax"
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        source = producers.get(node.input[0])
        if source is None or source.op_type != "DequantizeLinear":
            continue
        quantize = producers.get(source.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear":
            continue
        groups.setdefault(quantize.input[0], []).append(node.name)
        block_of.setdefault(quantize.input[0], attention_blocks)
    return [PrecisionGroup(group_name(index, block_of[tensor], ops), tuple(sorted(ops)),
                           int(np.prod(shapes.get(tensor) or [0])))
            for index, (tensor, ops) in enumerate(groups.items())]


def _to_fp16_without_qdq(model, float_model, ops: set[str]) -> None:
    """Rewire `ops` to float inputs (activations before their Q, weights from `float_model`), run them in fp16."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    float_nodes = {node.name: node for node in float_model.graph.node}
    float_weights = {init.name: init for init in float_model.graph.initializer}
    added: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        if node.name not in ops:
            nodes.append(node)
            continue
        inputs = []
        for position, name in enumerate(node.input):
            source = producers.get(name)
            if source is not None and source.op_type == "DequantizeLinear":
                before = producers.get(source.input[0])
                if before is not None and before.op_type == "QuantizeLinear":
                    name = before.input[0]  # the float activation
                else:
                    name = float_nodes[node.name].input[position]  # the weight as it was before quantization
            if name in float_weights:
                if name not in added:
                    added[name] = f"{name}_fp16"
                    weight = numpy_helper.to_array(float_weights[name]).astype(np.float16)
                    graph.initializer.append(numpy_helper.from_array(weight, added[name]))
                inputs.append(added[name])
            else:
                cast = f"{node.name}_input{position}_fp16"
                nodes.append(helper.make_node("Cast", [name], [cast], name=f"{cast}_cast", to=TensorProto.FLOAT16))
                inputs.append(cast)
        output = node.output[0]
        half = helper.make_node(node.op_type, inputs, [f"{output}_fp16"], name=node.name)
        half.attribute.extend(node.attribute)
        nodes.append(half)
        nodes.append(helper.make_node("Cast", [f"{output}_fp16"], [output], name=f"{node.name}_output_cast",
                                      to=TensorProto.FLOAT))
    _skip_output_qdq(nodes, {output for node in graph.node if node.name in ops for output in node.output},
                     {output.name for output in graph.output})
    graph.ClearField("node")
    graph.node.extend(_reachable(nodes, [output.name for output in graph.output]))
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)


def _skip_output_qdq(nodes: list, outputs: set[str], graph_outputs: set[str]) -> None:
    """Readers of a Q/DQ pair on any of `outputs` read the float tensor itself (the pair is then unused)."""
    quantized = {node.output[0]: node.input[0] for node in nodes
                 if node.op_type == "QuantizeLinear" and node.input[0] in outputs}
    bypass = {node.output[0]: quantized[node.input[0]] for node in nodes
              if node.op_type == "DequantizeLinear" and node.input[0] in quantized
              and node.output[0] not in graph_outputs}
    for node in nodes:
        for position, name in enumerate(node.input):
            if name in bypass:
                node.input[position] = bypass[name]


def _reachable(nodes: list, outputs: list[str]) -> list:
    """The nodes the graph outputs depend on, in their order (Q/DQ pairs nothing reads any more are dropped)."""
    producers = {output: node for node in nodes for output in node.output}
    needed, pending = set(), list(outputs)
    while pending:
        node = producers.get(pending.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            pending.extend(node.input)
    return [node for node in nodes if id(node) in needed]
