"""Where a decode step's time goes in OpenVINO: per-op-type times from the CPU plugin's performance counters.

A Llama decoder with SmolLM2-135M's shapes (hidden 576, 9 query and 3 key/value heads, feed-forward 1536, 49,152
tokens; random weights: the op times do not depend on the values) is traced the way deploykit traces every decoder,
converted, compressed to int8 weights by NNCF, and run for one decode step at a given cache fill. Prints each op
type's share of the summed node times: the answer to "is it the cache going in and out, the weights, or the glue
between them?" before anyone builds a stateful export to fix the wrong one.

    python tools/bench/decoder_op_profile.py --layers 30 --cache-length 256 --fill 128
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--cache-length", type=int, default=256)
    parser.add_argument("--fill", type=int, default=128, help="cache positions already written")
    parser.add_argument("--steps", type=int, default=30, help="decode steps timed")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()

    import keras
    import keras_hub
    import nncf
    import openvino as ov

    from deploykit.generation.decoder import DecoderBundle

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.LlamaBackbone(vocabulary_size=49152, num_layers=args.layers, num_query_heads=9,
                                              num_key_value_heads=3, hidden_dim=576, intermediate_dim=1536,
                                              max_sequence_length=2048)
    bundle = DecoderBundle(keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None), "{}", "random",
                           2048, {"architecture": "llama"})
    with tempfile.TemporaryDirectory() as scratch:
        bundle.write_saved_model(Path(scratch), args.cache_length, {"serving_default": None})
        model = nncf.compress_weights(ov.convert_model(scratch), mode=nncf.CompressWeightsMode.INT8_ASYM)
    compiled = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True})
    request = compiled.create_infer_request()
    inputs = {"tokens": np.array([[5]], np.int32), "cache": np.zeros(bundle.cache_shape(args.cache_length), np.float32),
              "index": np.asarray(args.fill, np.int32)}
    for _ in range(5):
        request.infer(inputs)
    start = time.perf_counter()
    for _ in range(args.steps):
        request.infer(inputs)
    step_ms = (time.perf_counter() - start) / args.steps * 1000
    by_type: dict[str, list[float]] = {}
    for node in request.profiling_info:  # the last step's counters
        entry = by_type.setdefault(node.node_type, [0.0, 0])
        entry[0] += node.real_time.total_seconds() * 1000
        entry[1] += 1
    total = sum(ms for ms, _ in by_type.values())
    print(f"{args.layers} layers, cache {args.cache_length}, fill {args.fill}: {step_ms:.1f} ms per decode step "
          f"(wall), {total:.1f} ms summed over nodes; cache input {inputs['cache'].nbytes / 1e6:.1f} MB")
    print(f"{'op type':32s} {'ms':>8s} {'share':>7s} {'nodes':>6s}")
    for kind, (ms, count) in sorted(by_type.items(), key=lambda item: -item[1][0])[:args.top]:
        print(f"{kind:32s} {ms:8.2f} {ms / total:7.1%} {count:6d}")


if __name__ == "__main__":
    main()
