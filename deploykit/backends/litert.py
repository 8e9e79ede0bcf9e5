"""LiteRT (TFLite): export with the TFLite converter, run with ai-edge-litert's interpreter (XNNPACK)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deploykit.errors import DeployKitError
from deploykit.graph.graph_ops import GraphOp, GraphTensor
from deploykit.backends.base import (Backend, ExportedArtifact, ExportOptions, Inputs, Int4Settings, MixedGraph,
                                     LoadedModel)
from deploykit.graph.mixed_precision import PrecisionGroup
from deploykit.graph.tflite_lookup import as_embedding_lookups

# A region is the ops under one layer path this deep below the model's common root (model / block / sublayer, e.g.
# bert_backbone/transformer_layer_2/self_attention_layer_norm): int16 pays where a region's own tensors stay
# 16-bit, so a region is the unit an analysis can keep high; finer (one op) gains nothing, since LiteRT requantizes
# an int16 op's input from the int8 tensor its producer already rounded.
REGION_DEPTH = 3


class LiteRTBackend(Backend):
    name = "litert"
    suffix = ".tflite"
    format = "tflite"
    # XNNPACK turns fp16 weights into fp32 when it loads the model (fp16 arithmetic only when forced by a flag).
    executes_as = {"fp16": "fp32"}
    precisions = {
        "fp32": "TFLiteConverter, float32",
        "fp16": "TFLiteConverter, float16 weights (Optimize.DEFAULT, supported_types=[float16])",
        "dynamic-int8": "TFLiteConverter dynamic-range int8 (Optimize.DEFAULT): int8 weights, activations quantized at run time",
        "int8": "TFLiteConverter full-integer int8 with a representative dataset (calibration samples)",
        "a16w8": "ai-edge-quantizer static_wi8_ai16 on the float model: int8 weights, int16 activations, "
        "min/max calibration on the calibration samples",
        "mixed": "ai-edge-quantizer on the float model: int8 weights, int8 activations except the most sensitive "
        "regions' int16 (per-op recipes, requantized at their borders; still no float op)",
        "int4-weights": "ai-edge-quantizer dynamic int4: FULLY_CONNECTED weights at int4 (activations quantized at run "
        "time), the vocabulary table as an int8 or int4 EMBEDDING_LOOKUP",
    }

    def export(self, saved_model: Path, precision: str, options: ExportOptions, folder: Path) -> ExportedArtifact:
        import tensorflow as tf

        method = self.describe(precision)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        if precision == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif precision == "dynamic-int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif precision == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            samples = options.calibration
            converter.representative_dataset = lambda: (dict(sample) for sample in samples)
            if options.integer_only:
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                method += ", integer-only ops"
            else:
                converter.target_spec.supported_ops = [
                    tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                    tf.lite.OpsSet.TFLITE_BUILTINS,
                ]
            if options.integer_io:
                converter.inference_output_type = tf.int8
                method += ", int8 output"
        model = converter.convert()
        if precision == "a16w8":
            model = int16_activations(model, {"serving_default": options.calibration})
        elif precision == "int4-weights":
            model = _int4_weights(model, options)
            int4 = options.int4
            groups = "one scale per row" if int4.group_size == -1 else f"groups of up to {int4.group_size}"
            method += f", {groups}, {int4.algorithm}, {int4.describe()}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.tflite"
        path.write_bytes(model)
        return ExportedArtifact(path=path, files=[path], format=self.format, precision=precision, method=method)

    def check_int4(self, settings: Int4Settings) -> None:
        _check_int4_settings(settings)

    def mixed_graph(self, saved_model: Path, options: ExportOptions, scratch: Path) -> "Int16MixedGraph":
        import tensorflow as tf

        float_model = tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()
        return Int16MixedGraph(float_model, options.calibration, self.describe("mixed"))

    def graph_ops(self, path: Path) -> list[GraphOp]:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        tensors = {
            t["index"]: GraphTensor(np.dtype(t["dtype"]).name, tuple(int(d) for d in t["shape_signature"]))
            for t in interpreter.get_tensor_details()
        }
        return [
            GraphOp(op["op_name"], tuple(tensors[i] for i in [*op["inputs"], *op["outputs"]] if i >= 0))
            for op in interpreter._get_ops_details()
        ]

    def load(self, path: Path, threads: int, runtime_config: dict) -> LoadedModel:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        runner = interpreter.get_signature_runner()
        output_details = runner.get_output_details()
        (output_name,) = output_details
        scale, zero_point = output_details[output_name]["quantization"]

        def run(inputs: Inputs) -> np.ndarray:
            output = runner(**inputs)[output_name]
            if output.dtype != np.float32 and scale:
                return (output.astype(np.float32) - zero_point) * scale
            return output

        return LoadedModel(run)


class Int16MixedGraph(MixedGraph):
    """The float model calibrated once, writable as full-integer int8 with any regions at int16 activations."""

    # int16 kernels on the build host's CPU are LiteRT's reference kernels (about 20x int8 on MiniLM): the
    # everything-but-one variants would be nearly all-int16, minutes each, so only the kept-high side is measured.
    measure_complements = False

    def __init__(self, float_model: bytes, calibration: list[Inputs], method: str):
        from ai_edge_quantizer import quantizer

        self.float_model, self.method = float_model, method
        engine = quantizer.Quantizer(bytearray(float_model))
        engine.load_quantization_recipe(_static_recipe({}))
        # Ranges are float min/max per tensor, whatever the bit width: one calibration serves every variant.
        self.ranges = engine.calibrate({"serving_default": calibration}, num_threads=os.cpu_count() or 1)
        self.groups = _regions(float_model)

    def write(self, kept: frozenset[str], folder: Path) -> ExportedArtifact:
        from ai_edge_quantizer import quantizer

        scopes = {group.name: group.ops for group in self.groups if group.name in kept}
        engine = quantizer.Quantizer(bytearray(self.float_model))
        engine.load_quantization_recipe(_static_recipe(scopes))
        model = bytes(engine.quantize(self.ranges, enable_progress_report=False).quantized_model)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.tflite"
        path.write_bytes(model)
        return ExportedArtifact(path=path, files=[path], format=LiteRTBackend.format, precision="mixed",
                                method=self.method, details={"activations": activation_precisions(path)})


def _static_recipe(int16_scopes: dict[str, tuple[str, ...]]):
    """Static quantization: int8 weights and activations, with the named ops at int16 activations."""
    import re

    from ai_edge_quantizer import qtyping, recipe_manager

    manager = recipe_manager.RecipeManager()
    every = qtyping.TFLOperationName.ALL_SUPPORTED
    manager.add_static_config(regex=".*", operation_name=every, activation_num_bits=8, weight_num_bits=8)
    for ops in int16_scopes.values():  # an op's scope is its output tensors' names, each followed by ';'
        manager.add_static_config(regex="^(?:" + "|".join(re.escape(op) for op in ops) + ")$", operation_name=every,
                                  activation_num_bits=16, weight_num_bits=8)
    return manager.get_quantization_recipe()


def _regions(float_model: bytes) -> list[PrecisionGroup]:
    """The float ops grouped by layer path (REGION_DEPTH below the common root), in graph order."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=float_model)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = []
    for op in interpreter._get_ops_details():
        outputs = [tensors[i] for i in op["outputs"] if i >= 0]
        if outputs and all(np.dtype(t["dtype"]) == np.float32 for t in outputs):
            scope = "".join(f"{t['name']};" for t in outputs)
            ops.append((outputs[0]["name"].split(";")[0].split("/"), scope,
                        sum(int(np.prod(t["shape"])) for t in outputs)))
    nested = [path for path, _, _ in ops if len(path) > 1]  # ops named without a layer path do not set the root
    root = 0
    while nested and all(len(path) > root + 1 and path[root] == nested[0][root] for path in nested):
        root += 1
    regions: dict[str, tuple[list[str], int]] = {}
    for path, scope, elements in ops:
        key = "/".join(path[root:-1][:REGION_DEPTH]) or "(top level)"
        scopes, total = regions.get(key, ([], 0))
        regions[key] = (scopes + [scope], total + elements)
    return [PrecisionGroup(f"{index:02d} {key}", tuple(scopes), total)
            for index, (key, (scopes, total)) in enumerate(regions.items())]


def activation_precisions(path: Path) -> dict:
    """Activation tensors (op outputs) of a quantized .tflite by type: how many, and their bytes, per type."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    counts: dict[str, dict[str, int]] = {}
    for op in interpreter._get_ops_details():
        for index in op["outputs"]:
            tensor = tensors[index]
            dtype = np.dtype(tensor["dtype"])
            row = counts.setdefault(dtype.name, {"tensors": 0, "bytes": 0, "itemsize": dtype.itemsize})
            row["tensors"] += 1
            row["bytes"] += int(np.prod(tensor["shape"])) * dtype.itemsize
    total_tensors = sum(row["tensors"] for row in counts.values()) or 1
    total_bytes = sum(row["bytes"] for row in counts.values()) or 1
    return {name: {**row, "tensor_share": round(row["tensors"] / total_tensors, 4),
                   "byte_share": round(row["bytes"] / total_bytes, 4)} for name, row in sorted(counts.items())}


def int16_activations(float_model: bytes, calibration: dict[str, list[Inputs]]) -> bytes:
    """Quantize a float .tflite to int8 weights and int16 activations with ai-edge-quantizer, with ranges from
    the calibration inputs of each signature.

    16-bit activations keep the outlier-heavy activations of BERT-family models
    (residual stream, LayerNorm, attention scores) resolvable where one int8 scale
    per tensor cannot; NPUs that declare 16-bit activation support run them natively.
    """
    from ai_edge_quantizer import quantizer, recipe

    engine = quantizer.Quantizer(bytearray(float_model))
    engine.load_quantization_recipe(recipe.static_wi8_ai16())
    ranges = engine.calibrate(calibration, num_threads=os.cpu_count() or 1)
    return bytes(engine.quantize(ranges, enable_progress_report=False).quantized_model)


# The int4 algorithms ai-edge-quantizer has, by deploykit's names (awq is NNCF's only).
_INT4_ALGORITHM_KEYS = {"rtn": "min_max_uniform_quantize", "gptq": "GPTQ"}
_INT4_GROUP_SIZES = (32, 64, 128, 256)  # ai-edge-quantizer's blockwise granularities


def _check_int4_settings(settings: Int4Settings) -> None:
    """Refuse, in one line, the int4 settings only OpenVINO honours."""
    if settings.algorithm not in _INT4_ALGORITHM_KEYS:
        raise DeployKitError(f"LiteRT int4 weights take --int4-algorithm {' or '.join(_INT4_ALGORITHM_KEYS)}, got "
                             f"{settings.algorithm!r} (an OpenVINO algorithm); pass one of those.")
    if settings.ratio < 1:
        raise DeployKitError(f"LiteRT int4 weights quantize every FULLY_CONNECTED layer, so --int4-ratio "
                             f"{settings.ratio:g} cannot apply; drop it (NNCF's data-aware ratio is OpenVINO's).")
    for option, size in (("--int4-group-size", settings.group_size),
                         ("--int4-embedding-group-size", settings.table_group_size)):
        if size != -1 and size not in _INT4_GROUP_SIZES:
            raise DeployKitError(f"LiteRT int4 groups are {', '.join(map(str, _INT4_GROUP_SIZES))} input channels or "
                                 f"-1 (one scale per row), got {option} {size}; pass one of those.")


def _int4_granularity(group_size: int, width: int) -> tuple[int, str] | None:
    """(bits, granularity) for a weight `width` input channels wide: one scale per row (-1), else the largest block
    of at most `group_size` that divides the width (as NNCF's ADJUST does); None where no block divides it."""
    if group_size == -1:
        return 4, "CHANNELWISE"
    fitting = [size for size in _INT4_GROUP_SIZES if size <= group_size and width % size == 0]
    return (4, f"BLOCKWISE_{max(fitting)}") if fitting else None


def _int4_weights(float_model: bytes, options: ExportOptions) -> bytes:
    """int4 FULLY_CONNECTED weights (dynamic: LiteRT quantizes their input activations at run time, so the products
    are integer) and the embedding tables at int8, or int4 with `embeddings`, behind EMBEDDING_LOOKUP. GPTQ (the
    default) compensates each column's rounding error on the calibration samples' activations. A weight no allowed
    group divides stays int8 (one scale per row)."""
    import re

    from ai_edge_quantizer import qtyping, quantizer, recipe_manager

    settings = options.int4
    _check_int4_settings(settings)
    model, _ = as_embedding_lookups(float_model)
    configs: dict[tuple[str, int, str], list[str]] = {}  # (op, bits, granularity) -> op scopes
    for op_name, scope, width in _weighted_ops(model):
        quantize = op_name == "FULLY_CONNECTED" or settings.embeddings
        group_size = settings.group_size if op_name == "FULLY_CONNECTED" else settings.table_group_size
        chosen = (_int4_granularity(group_size, width) if quantize else None) or (8, "CHANNELWISE")
        configs.setdefault((op_name, *chosen), []).append(scope)
    manager = recipe_manager.RecipeManager()
    for (op_name, bits, granularity), scopes in configs.items():
        manager.add_dynamic_config(
            regex="^(?:" + "|".join(re.escape(scope) for scope in scopes) + ")$",
            operation_name=getattr(qtyping.TFLOperationName, op_name), num_bits=bits,
            granularity=getattr(qtyping.QuantGranularity, granularity),
            algorithm_key=_INT4_ALGORITHM_KEYS[settings.algorithm] if op_name == "FULLY_CONNECTED" and bits == 4
            else _INT4_ALGORITHM_KEYS["rtn"])
    engine = quantizer.Quantizer(bytearray(model))
    engine.load_quantization_recipe(manager.get_quantization_recipe())
    ranges = None
    if settings.algorithm == "gptq":
        ranges = engine.calibrate({"serving_default": options.calibration}, num_threads=os.cpu_count() or 1)
    return bytes(engine.quantize(ranges, enable_progress_report=False).quantized_model)


def _weighted_ops(model: bytes) -> list[tuple[str, str, int]]:
    """(op name, scope, weight width) of each FULLY_CONNECTED and EMBEDDING_LOOKUP with a constant weight: the
    width is what a group of one scale spans (a FULLY_CONNECTED's input channels, a table's columns)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("FULLY_CONNECTED", "EMBEDDING_LOOKUP") and len(op["inputs"]) > 1:
            weight = tensors[op["inputs"][1]]
            scope = "".join(f"{tensors[i]['name']};" for i in op["outputs"] if i >= 0)
            found.append((op["op_name"], scope, int(weight["shape"][-1])))
    return found
