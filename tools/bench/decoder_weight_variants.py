"""Benchmark: how faithful each weight variant of one runtime is on a real decoder (fidelity and size; timings are
rough, one artifact after another).

    python tools/bench/decoder_weight_variants.py openvino      # NNCF int8/int4: group size, rtn vs AWQ, ratio
    python tools/bench/decoder_weight_variants.py litert        # converter vs ai-edge-quantizer, dynamic vs weight-only

Each variant is exported from the same traced step (256-token cache) and scored against the float original on 8
held-out passages of 128 tokens from the bundled sentences: perplexity ratio, top-1 agreement, mean KL. Prints one
JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from deploykit import runtime_env  # noqa: F401
from deploykit.generation.backends.base import DecoderExport, get_decoder_backend
from deploykit.generation.backends.litert import BLOCK_SCOPE
from deploykit.generation.build import GenerationOptions, held_out_text
from deploykit.generation.loaders import load_decoder
from deploykit.generation.metrics import measure_fidelity

CACHE = 256


def _row(name: str, files: list[Path], decoder, text, reference) -> None:
    fidelity = measure_fidelity(reference, text.evaluation, decoder)
    _, cache = decoder.prefill(text.evaluation[0])
    times = []
    for _ in range(3):
        filled = cache.copy()
        start = time.perf_counter()
        for offset in range(8):
            _, filled = decoder.decode(100 + offset, filled, 128 + offset)
        times.append((time.perf_counter() - start) / 8 * 1000)
    print(json.dumps({"variant": name, "MB": round(sum(p.stat().st_size for p in files) / 1e6, 1),
                      "ppl_ratio": round(fidelity.perplexity_ratio, 4), "top1": round(fidelity.top1_agreement, 4),
                      "kl": round(fidelity.mean_kl, 5), "decode_ms": round(float(np.median(times)), 1)}), flush=True)


def litert_variants(bundle, text, reference, scratch: Path) -> None:
    import tensorflow as tf
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager

    from deploykit.graph.tflite_lookup import as_embedding_lookups

    backend = get_decoder_backend("litert")
    bundle.write_saved_model(scratch / "saved", CACHE, backend.signatures(DecoderExport("fp32", CACHE, 64)))
    converter = tf.lite.TFLiteConverter.from_saved_model(str(scratch / "saved"), signature_keys=["prefill", "decode"])
    float_model = converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    dynamic_range = converter.convert()

    def quantized(configs: list[tuple]) -> bytes:
        model, _ = as_embedding_lookups(float_model)
        manager = recipe_manager.RecipeManager()
        for kind, regex, operation, bits, granularity in configs:
            getattr(manager, f"add_{kind}_config")(regex=regex, num_bits=bits,
                                                   operation_name=getattr(qtyping.TFLOperationName, operation),
                                                   granularity=getattr(qtyping.QuantGranularity, granularity))
        engine = quantizer.Quantizer(bytearray(model))
        engine.load_quantization_recipe(manager.get_quantization_recipe())
        return bytes(engine.quantize(None, enable_progress_report=False).quantized_model)

    table = ("dynamic", ".*", "EMBEDDING_LOOKUP", 8, "CHANNELWISE")
    variants = {
        "fp32": float_model,
        "converter dynamic int8": dynamic_range,
        "ai-edge-quantizer dynamic int8": [table, ("dynamic", ".*", "FULLY_CONNECTED", 8, "CHANNELWISE")],
        "ai-edge-quantizer weight-only int8": [("weight_only", ".*", "EMBEDDING_LOOKUP", 8, "CHANNELWISE"),
                                               ("weight_only", ".*", "FULLY_CONNECTED", 8, "CHANNELWISE")],
        "ai-edge-quantizer dynamic int4 blocks of 32, head int8": [
            table, ("dynamic", ".*", "FULLY_CONNECTED", 8, "CHANNELWISE"),
            ("dynamic", BLOCK_SCOPE, "FULLY_CONNECTED", 4, "BLOCKWISE_32")],
    }
    for number, (name, variant) in enumerate(variants.items()):
        path = scratch / f"{number}.tflite"
        path.write_bytes(variant if isinstance(variant, bytes) else quantized(variant))
        _row(name, [path], backend.load(path, 2), text, reference)


def openvino_variants(bundle, text, reference, calibration, scratch: Path) -> None:
    backend = get_decoder_backend("openvino")
    bundle.write_saved_model(scratch / "saved", CACHE, backend.signatures(DecoderExport("fp32", CACHE, 64)))
    samples = tuple(tuple(ids) for ids in calibration)
    variants = [("fp32, f32", DecoderExport("fp32", CACHE, 64), "f32"),
                ("int8, bf16 activations", DecoderExport("int8", CACHE, 64), None),
                ("int8, f32", DecoderExport("int8", CACHE, 64), "f32"),
                ("int4 group 32 rtn, bf16", DecoderExport("int4", CACHE, 64, 32), None),
                ("int4 group 32 rtn, f32", DecoderExport("int4", CACHE, 64, 32), "f32"),
                ("int4 group 64 rtn, f32", DecoderExport("int4", CACHE, 64, 64), "f32"),
                ("int4 group 32 awq+se ratio 1, f32", DecoderExport("int4", CACHE, 64, 32, 1.0, "awq", samples), "f32"),
                ("int4 group 32 awq+se ratio 0.8, f32", DecoderExport("int4", CACHE, 64, 32, 0.8, "awq", samples),
                 "f32")]
    for number, (name, export, hint) in enumerate(variants):
        artifact = backend.export(scratch / "saved", export, scratch / str(number))
        config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
        _row(name, artifact.files, backend.load(artifact.path, 2, config), text, reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runtime", choices=["openvino", "litert"])
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    bundle = load_decoder(args.model)
    text = held_out_text(bundle, GenerationOptions(eval_texts=8, cache_length=CACHE), calibrate=True)
    reference = [bundle.full_logits(ids) for ids in text.evaluation]
    with tempfile.TemporaryDirectory(prefix="decoder-variants-") as scratch:
        if args.runtime == "litert":
            litert_variants(bundle, text, reference, Path(scratch))
        else:
            openvino_variants(bundle, text, reference, text.calibration, Path(scratch))


if __name__ == "__main__":
    main()
