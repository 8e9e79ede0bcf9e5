"""LiteRT (TFLite): export with the TFLite converter, run with ai-edge-litert's interpreter (XNNPACK)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deploykit.graph_ops import GraphOp, GraphTensor
from deploykit.backends.base import Backend, ExportedArtifact, ExportOptions, Inputs, Runner


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
            model = _int16_activations(model, options.calibration)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.tflite"
        path.write_bytes(model)
        return ExportedArtifact(path=path, files=[path], format=self.format, precision=precision, method=method)

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

    def load(self, path: Path, threads: int, runtime_config: dict) -> Runner:
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

        return Runner(run)


def _int16_activations(float_model: bytes, calibration: list[Inputs]) -> bytes:
    """Quantize a float .tflite to int8 weights and int16 activations with ai-edge-quantizer.

    16-bit activations keep the outlier-heavy activations of BERT-family models
    (residual stream, LayerNorm, attention scores) resolvable where one int8 scale
    per tensor cannot; NPUs that declare 16-bit activation support run them natively.
    """
    import os

    from ai_edge_quantizer import quantizer, recipe

    engine = quantizer.Quantizer(bytearray(float_model))
    engine.load_quantization_recipe(recipe.static_wi8_ai16())
    ranges = engine.calibrate({"serving_default": calibration}, num_threads=os.cpu_count() or 1)
    return bytes(engine.quantize(ranges, enable_progress_report=False).quantized_model)
