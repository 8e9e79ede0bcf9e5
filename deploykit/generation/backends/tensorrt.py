"""Decoders for TensorRT: ONNX with explicit cache inputs and outputs, validated and profiled under onnxruntime.

Weights fp32, or int8 or int4 weight-only as DequantizeLinear on constant integer weights
(`deploykit.graph.onnx_weights`; int4 in blocks, which takes ONNX opset 21).
No fp16 file: onnxruntime's float16 converter writes this graph with repeated output names (not valid ONNX). The
engine script builds with --stronglyTyped, so the engine computes in the graph's own types: float activations.

This is the input `trtexec` builds an engine from. TensorRT-LLM would add what this path lacks: paged KV caches,
in-flight batching, fused attention and GEMM plugins, and int4 AWQ kernels.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from deploykit.generation.backends.base import DecoderArtifact, DecoderBackend, DecoderExport
from deploykit.generation.runtime import LoadedDecoder, load_artifact


class TensorRTDecoder(DecoderBackend):
    name = "tensorrt"
    suffix = ".onnx"
    device_compiled = True  # the engine script takes `tokens` from 1 to the cache length; the rest is static
    weights = {
        "fp32": "tf2onnx, float32 ONNX",
        "int8": "tf2onnx, then weight-only int8 Q/DQ: every MatMul weight matrix and the token table stored int8 "
        "with one symmetric scale per output channel behind a DequantizeLinear (TensorRT fuses it into the GEMM), "
        "float activations",
        "int4": "tf2onnx, converted to opset 21, then weight-only int4 Q/DQ: MatMul weights in blocks of input "
        "channels with one symmetric scale per block and output channel (TensorRT 10's int4 weight-only GEMM); the "
        "token table int8 per row",
    }

    def export(self, saved_model: Path, export: DecoderExport, folder: Path) -> DecoderArtifact:
        import onnx

        from deploykit.backends.tensorrt import tf2onnx_file
        from deploykit.graph.onnx_weights import INT4_OPSET, weight_only_int4, weight_only_int8

        method = self.describe(export.weights)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.onnx"
        with tempfile.TemporaryDirectory(prefix="deploykit-onnx-") as scratch:
            float_path = Path(scratch) / "float.onnx"
            tf2onnx_file(saved_model, float_path)
            if export.weights in ("int8", "int4"):
                model = onnx.load(str(float_path))
                if export.weights == "int4":
                    model = onnx.version_converter.convert_version(model, INT4_OPSET)
                    saved = weight_only_int4(model, export.group_size)
                    method += f", group size {export.group_size}"
                else:
                    saved = weight_only_int8(model)
                onnx.save(model, str(path))
                method += f" ({saved / 1e6:.2f} MB of weights saved)"
            else:
                float_path.replace(path)
        onnx.checker.check_model(str(path))
        return DecoderArtifact(path, [path], export, method)

    def load(self, path: Path, threads: int | None, runtime_config: dict | None = None) -> LoadedDecoder:
        return load_artifact(self.name, str(path), threads, {})
