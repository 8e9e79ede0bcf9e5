"""Decoders on LiteRT: one .tflite with prefill and decode signatures over a fixed-size cache (XNNPACK on CPUs)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from deploykit.backends.litert import int16_activations
from deploykit.errors import DeployKitError
from deploykit.generation.backends.base import DecoderArtifact, DecoderBackend, DecoderExport
from deploykit.generation.runtime import LoadedDecoder, litert_signatures, load_artifact
from deploykit.graph.tflite_buffers import share_identical_buffers


class LiteRTDecoder(DecoderBackend):
    name = "litert"
    suffix = ".tflite"
    static_prefill = True
    weights = {
        "fp32": "TFLiteConverter, float32",
        "fp16": "TFLiteConverter, float16 weights",
        "int8": "ai-edge-quantizer weight-only int8 per channel (FULLY_CONNECTED and the vocabulary table), float "
        "activations (XNNPACK's int8-weight float GEMMs)",
        "int8-dynamic": "TFLiteConverter dynamic-range int8 (Optimize.DEFAULT): int8 weights, activations quantized "
        "at run time",
        "int4-dynamic": "ai-edge-quantizer dynamic int4, blockwise: the decoder blocks' FULLY_CONNECTED weights at "
        "int4 in groups of input channels, activations quantized at run time; the LM head and table int8",
        "a16w8": "ai-edge-quantizer static_wi8_ai16: int8 weights and int16 activations with ranges calibrated by "
        "running the float model's prefill and decode on calibration text (the integer graph NPUs run)",
    }
    calibrated = frozenset({"a16w8"})

    def export(self, saved_model: Path, export: DecoderExport, folder: Path) -> DecoderArtifact:
        import tensorflow as tf

        method = self.describe(export.weights)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["prefill", "decode"])
        if export.weights in ("fp16", "int8-dynamic"):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if export.weights == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        model = converter.convert()
        if export.weights == "a16w8":
            model = int16_activations(model, _calibration_steps(model, export))
        elif export.weights in ("int8", "int4-dynamic"):
            model = _quantized_weights(model, export.weights, export.group_size)
        if export.weights.startswith("int4"):
            method += f", groups of {export.group_size}"
        model, saved = share_identical_buffers(model)
        if saved:
            method += f"; one copy of each weight the graph held twice (the tied LM head: {saved / 1e6:.2f} MB saved)"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.tflite"
        path.write_bytes(model)
        return DecoderArtifact(path, [path], export, method)

    def load(self, path: Path, threads: int | None, runtime_config: dict | None = None) -> LoadedDecoder:
        return load_artifact(self.name, str(path), threads, {})


# Decode steps recorded per calibration text after its prefill: decode's ranges (one token against a full cache)
# differ from prefill's, and a few steps cover them while the recorded caches stay small (each sample holds one).
CALIBRATION_DECODE_STEPS = 4


def _calibration_steps(float_model: bytes, export: DecoderExport) -> dict[str, list[dict[str, np.ndarray]]]:
    """The inputs of every prefill chunk and a few decode steps of the float model on the calibration texts (each
    text's last tokens decoded one by one), per signature: what static activation ranges are calibrated on."""
    from ai_edge_litert.interpreter import Interpreter

    if not export.calibration:
        raise DeployKitError("a16w8 decoders calibrate their activation ranges on text and the build passed none; "
                             "pass --data with a `text` column.")
    float_decoder = litert_signatures(Interpreter(model_content=float_model), "float")
    samples: dict[str, list[dict[str, np.ndarray]]] = {"prefill": [], "decode": []}

    def recording(tokens: np.ndarray, cache: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        samples["decode" if tokens.shape[1] == 1 else "prefill"].append(
            {"tokens": tokens.copy(), "cache": cache.copy(), "index": np.asarray(index, dtype=np.int32)})
        return float_decoder.step(tokens, cache, index)

    recorder = replace(float_decoder, step=recording)
    for ids in export.calibration:
        ids = list(ids[:export.cache_length])
        prompt = ids[:max(1, len(ids) - CALIBRATION_DECODE_STEPS)]
        _, cache = recorder.prefill(prompt)
        for index in range(len(prompt), len(ids)):
            _, cache = recorder.decode(ids[index], cache, index)
    return samples


# keras-hub names every decoder block transformer_layer_<i>: int4 goes to their FULLY_CONNECTED ops only, while
# the LM head (tied to the token table on SmolLM2, Gemma and others, and the layer most sensitive to rounding)
# stays int8, as NNCF's int4 modes keep the last layer by default.
BLOCK_SCOPE = ".*transformer_layer_[0-9]+.*"


def _quantized_weights(model: bytes, weights: str, group_size: int) -> bytes:
    """int8 or int4 weights through ai-edge-quantizer, rounded to nearest (data-free): weight-only (explicit
    dequantize, float arithmetic) unless `weights` ends in -dynamic (activations quantized at run time; blockwise
    int4 exists only so: ai-edge-quantizer 0.10 refuses it weight-only). The token table is int8 behind
    EMBEDDING_LOOKUP in every case."""
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager

    from deploykit.graph.tflite_lookup import as_embedding_lookups

    model, _ = as_embedding_lookups(model)
    kind = "dynamic" if weights.endswith("-dynamic") else "weight_only"
    manager = recipe_manager.RecipeManager()
    add = getattr(manager, f"add_{kind}_config")
    operations = qtyping.TFLOperationName
    add(regex=".*", operation_name=operations.EMBEDDING_LOOKUP, num_bits=8,
        granularity=qtyping.QuantGranularity.CHANNELWISE)
    add(regex=".*", operation_name=operations.FULLY_CONNECTED, num_bits=8,
        granularity=qtyping.QuantGranularity.CHANNELWISE)
    if weights.startswith("int4"):
        add(regex=BLOCK_SCOPE, operation_name=operations.FULLY_CONNECTED, num_bits=4,
            granularity=getattr(qtyping.QuantGranularity, f"BLOCKWISE_{group_size}"))
    engine = quantizer.Quantizer(bytearray(model))
    engine.load_quantization_recipe(manager.get_quantization_recipe())
    return bytes(engine.quantize(None, enable_progress_report=False).quantized_model)
