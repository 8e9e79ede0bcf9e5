"""OpenVINO: export with `openvino.convert_model` (+ NNCF for int8), run with the CPU plugin.

The CPU plugin silently runs bf16 on CPUs that support it unless the inference
precision hint says otherwise, so every artifact carries the hint it is meant to
run with: f32 for the fp32 baseline, bf16/f16 for those precisions, and the
device default for int8 (what the target device would do).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from deploykit.backends.base import Backend, ExportedArtifact, ExportOptions, Inputs, MixedGraph, LoadedModel
from deploykit.graph.mixed_precision import PrecisionGroup, group_name

PRECISION_HINT = "INFERENCE_PRECISION_HINT"


class OpenVINOBackend(Backend):
    name = "openvino"
    suffix = ".xml"
    format = "openvino-ir"
    precisions = {
        "fp32": "openvino.convert_model, float32 IR, inference precision f32",
        "fp16": "openvino.convert_model, float16-compressed IR, inference precision f16",
        "bf16": "openvino.convert_model, float16-compressed IR, inference precision bf16",
        "int8": "nncf.quantize(model_type=TRANSFORMER) on the calibration samples, int8 IR",
        "int4-weights": "nncf.compress_weights INT4_ASYM (one scale and zero point per group of input channels, "
        "GPTQ with scale estimation by default), embeddings and the layers NNCF keeps by default at int8; float "
        "activations",
        "mixed": "the nncf int8 IR with the FakeQuantize taken off the activations of its most sensitive MatMuls "
        "(measured one group at a time): those run on float activations with their int8 weights decompressed",
    }
    runtime_hints = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
    reads_onnx = True
    companion_suffixes = (".bin",)
    int4_training_pass = "int4-qat"  # simulates nncf.compress_weights INT4_ASYM rounded to nearest exactly

    def export(self, saved_model: Path, precision: str, options: ExportOptions, folder: Path) -> ExportedArtifact:
        import openvino as ov

        method = self.describe(precision)
        model = ov.convert_model(str(saved_model))
        # convert_model records the (temporary) input path; a stable value keeps artifacts byte-identical.
        model.set_rt_info("saved_model", ["conversion_parameters", "input_model"])
        if precision == "int8":
            model = _quantize(model, options.calibration)
        elif precision == "int4-weights":
            model = _int4_weights(model, options)
            int4 = options.int4
            method += f", group size {int4.group_size}, ratio {int4.ratio:g}, {int4.algorithm}, {int4.describe()}"
        _shrink_uniform_constants(model)
        _number_unnamed_nodes(model)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.xml"
        ov.save_model(model, str(path), compress_to_fp16=precision in ("fp16", "bf16"))
        runtime_config = {PRECISION_HINT: self.runtime_hints[precision]} if precision in self.runtime_hints else {}
        return ExportedArtifact(
            path=path,
            files=[path, path.with_suffix(".bin")],
            format=self.format,
            precision=precision,
            method=method,
            runtime_config=runtime_config,
        )

    def mixed_graph(self, saved_model: Path, options: ExportOptions, scratch: Path) -> "FakeQuantizeMixedGraph":
        import openvino as ov

        model = ov.convert_model(str(saved_model))
        model.set_rt_info("saved_model", ["conversion_parameters", "input_model"])
        quantized = _quantize(model, options.calibration)
        _shrink_uniform_constants(quantized)
        _number_unnamed_nodes(quantized)
        return FakeQuantizeMixedGraph(quantized, self.describe("mixed"))

    def load(self, path: Path, threads: int, runtime_config: dict) -> LoadedModel:
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", **runtime_config}
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        request = compiled.create_infer_request()
        output = compiled.outputs[0]

        def run(inputs: Inputs) -> np.ndarray:
            return np.array(request.infer(inputs)[output], copy=True)

        return LoadedModel(run)


def _quantize(model, calibration: list[Inputs]):
    import nncf

    return nncf.quantize(
        model,
        nncf.Dataset(calibration),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
    )


def _int4_weights(model, options: ExportOptions):
    """int4 weights with float activations (asymmetric: on MiniLM, cosine 0.962 against 0.955 symmetric, group 128,
    rounded to nearest). The algorithm (awq, gptq: with scale estimation, on the calibration samples) chooses the
    levels; a ratio below 1 keeps the weights NNCF finds most sensitive at int8. A layer whose width the group size
    does not divide gets the largest power-of-two group that does (at least 32), else int8. Embedding tables stay
    int8 unless `embeddings` asks for int4 (NNCF's all_layers); tables grouped otherwise than the layers are
    compressed first, on their own (rounded to nearest: GPTQ and AWQ only fit MatMuls), and the second call leaves
    them as they are."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    settings = options.int4
    fallback = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST)
    if settings.embeddings and settings.table_group_size != settings.group_size:
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM,
                                      group_size=settings.table_group_size, ratio=1.0, all_layers=True,
                                      ignored_scope=nncf.IgnoredScope(types=["MatMul", "Convolution"], validate=False),
                                      advanced_parameters=fallback)
    data = {}
    if settings.ratio < 1 or settings.algorithm != "rtn":
        data = {"dataset": nncf.Dataset(options.calibration), "subset_size": len(options.calibration)}
    if settings.algorithm != "rtn":
        data.update({settings.algorithm: True, "scale_estimation": True})
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=settings.group_size,
                                 ratio=settings.ratio, all_layers=settings.embeddings or None,
                                 advanced_parameters=fallback, **data)


# Elementwise ops that broadcast their inputs numpy-style: a one-element input gives the same output as a full one.
_BROADCASTING_OPS = {"Add", "Subtract", "Multiply", "Divide", "Maximum", "Minimum", "Select"}


def _shrink_uniform_constants(model) -> None:
    """Store a constant that repeats one value, and only feeds broadcasting elementwise ops whose output shape the
    other inputs already give, as one element. Constant folding writes out `zeros_like` in full: MiniLM's mean
    pooling carried 74 KB of zeros. The outputs are unchanged."""
    from openvino import opset13

    for node in model.get_ordered_ops():
        if node.get_type_name() != "Constant" or int(np.prod(node.get_output_shape(0))) < 2:
            continue
        readers = list(node.output(0).get_target_inputs())
        if not readers or not all(_broadcast_without(reader) for reader in readers):
            continue
        values = node.get_data()
        if not (values == values.flat[0]).all():
            continue
        single = opset13.constant(values.reshape(-1)[:1].reshape([1] * values.ndim))
        single.set_friendly_name(node.get_friendly_name())
        for reader in readers:
            reader.replace_source_output(single.output(0))


def _broadcast_without(port) -> bool:
    """Whether the op reading `port` keeps its output shape when that input becomes a single element."""
    op = port.get_node()
    if op.get_type_name() not in _BROADCASTING_OPS or op.get_attributes().get("auto_broadcast") != "numpy":
        return False
    others = [op.input(i).get_partial_shape() for i in range(op.get_input_size()) if i != port.get_index()]
    output = op.get_output_partial_shape(0)
    if not output.is_static or not all(shape.is_static for shape in others):
        return False
    return tuple(np.broadcast_shapes(*(tuple(shape.to_shape()) for shape in others))) == tuple(output.to_shape())


def _number_unnamed_nodes(model) -> None:
    """Rename auto-named nodes (`Name_<process-wide counter>`) by their position in the graph.

    The counter depends on how many graphs this process built before, so without this
    the same model exported twice in one process gives different bytes. Inputs and
    outputs keep their names.
    """
    for index, op in enumerate(model.get_ordered_ops()):
        if op.get_type_name() in ("Parameter", "Result"):
            continue
        if re.fullmatch(r"[A-Za-z]+_\d+", op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_n{index}")


class FakeQuantizeMixedGraph(MixedGraph):
    """NNCF's int8 model, writable with any groups of MatMuls reading their activation before its FakeQuantize."""

    def __init__(self, quantized, method: str):
        self.quantized, self.method = quantized, method
        self.groups = _fake_quantize_groups(quantized)

    def write(self, kept: frozenset[str], folder: Path) -> ExportedArtifact:
        import openvino as ov

        model = self.quantized.clone()
        ops = {op for group in self.groups if group.name in kept for op in group.ops}
        for node in model.get_ordered_ops():
            if node.get_friendly_name() in ops:
                for port in node.inputs():
                    source = port.get_source_output().get_node()
                    if source.get_type_name() == "FakeQuantize" and not _is_constant(source.input_value(0).get_node()):
                        port.replace_source_output(source.input_value(0))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.xml"
        ov.save_model(model, str(path), compress_to_fp16=False)
        return ExportedArtifact(path=path, files=[path, path.with_suffix(".bin")], format=OpenVINOBackend.format,
                                precision="mixed", method=self.method)


def _is_constant(node) -> bool:
    """A weight path (Constant, or its decompression Convert/Multiply chain), not an activation."""
    while node.get_type_name() in ("Convert", "Multiply", "Subtract") and node.get_input_size():
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def _fake_quantize_groups(model) -> list[PrecisionGroup]:
    """One group per activation FakeQuantize: the MatMuls reading it."""
    groups: dict[str, list[str]] = {}
    depth: dict[str, int] = {}
    elements: dict[str, int] = {}
    softmaxes = 0
    for node in model.get_ordered_ops():
        softmaxes += node.get_type_name() == "Softmax"
        if node.get_type_name() != "MatMul":
            continue
        for port in node.inputs():
            source = port.get_source_output().get_node()
            if source.get_type_name() == "FakeQuantize" and not _is_constant(source.input_value(0).get_node()):
                name = source.get_friendly_name()
                groups.setdefault(name, []).append(node.get_friendly_name())
                depth.setdefault(name, softmaxes)
                shape = port.get_partial_shape()
                elements[name] = int(np.prod(shape.to_shape())) if shape.is_static else 0
    return [PrecisionGroup(group_name(index, depth[name], ops), tuple(sorted(set(ops))), elements[name])
            for index, (name, ops) in enumerate(groups.items())]
