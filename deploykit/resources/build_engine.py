"""Build a TensorRT engine from the ONNX model beside this script (written by deploykit).

Needs the `tensorrt` Python package (10.x or 11.x) and an NVIDIA GPU: the engine is
tuned for the GPU it is built on, so run this on the deployment GPU (or one of the
same model). Precision lives in the ONNX graph (fp16 tensors, or Q/DQ nodes for
int8), so the network is built strongly typed, as TensorRT 11 requires.

    python build_engine.py                      # model.onnx -> model.engine
    python build_engine.py --sparse --workspace-mb 8192
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build(onnx_path: Path, engine_path: Path, workspace_mb: int, timing_cache: Path | None, sparse: bool,
          optimization_level: int, shapes: dict[str, list[int]]) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Accepted and required on 10.x, the only mode on 11.x.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        sys.exit(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.builder_optimization_level = optimization_level
    if sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)  # 2:4-sparse weights on sparse tensor cores
    if shapes:  # a dynamic sequence axis: one optimisation profile from the shortest to the longest input
        profile = builder.create_optimization_profile()
        for name, (low, best, high) in shapes.items():
            profile.set_shape(name, (1, low), (1, best), (1, high))
        config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        sys.exit("TensorRT could not build the engine; see its log above.")
    engine_path.write_bytes(bytes(serialized))
    if cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    print(f"wrote {engine_path} ({engine_path.stat().st_size / 1e6:.1f} MB)")


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=here / "model.onnx")
    parser.add_argument("--engine", type=Path, default=here / "model.engine")
    parser.add_argument("--workspace-mb", type=int, default=WORKSPACE_MB)
    parser.add_argument("--timing-cache", type=Path, default=here / "timing.cache")
    parser.add_argument("--sparse", action=argparse.BooleanOptionalAction, default=SPARSE)
    parser.add_argument("--optimization-level", type=int, default=OPTIMIZATION_LEVEL)
    args = parser.parse_args()
    build(args.onnx, args.engine, args.workspace_mb, args.timing_cache, args.sparse, args.optimization_level, SHAPES)


# Defaults from the target profile deploykit built for (rewritten when the script is written).
WORKSPACE_MB = 4096
SPARSE = False
OPTIMIZATION_LEVEL = 3
SHAPES = {}  # input -> [shortest, optimum, longest] sequence length; empty: static shapes

if __name__ == "__main__":
    main()
