"""Benchmark: full-integer int8 for integer-only accelerators (mobile-npu, edge-tpu), every path side by side.

One run, one machine, one profiler (a fresh worker process per artifact, batch 1),
the same evaluation sentences for every row:

    python tools/bench/full_integer.py                     # MiniLM, sequence length chosen from the data
    python tools/bench/full_integer.py --sequence-length 128 --qat-steps 300
    python tools/bench/full_integer.py --model /tmp/minilm-topics/classifier.keras \
        --data /tmp/minilm-topics/train.jsonl --eval-data /tmp/minilm-topics/test.jsonl

Rows: LiteRT fp32 (the reference for speed); the stock full-integer paths (TFLite
converter with a representative dataset, ai-edge-quantizer static_wi8_ai8) on the
graph as Keras traces it; deploykit's integer-capable graph with post-training int8,
with quantization-aware training, and with int16 activations (a16w8); dynamic-range
int8 for reference (not full-integer). "mobile-npu ops" and "edge-tpu ops" count
the ops that would fall back from each accelerator (0 = runs entirely on it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from deploykit import runtime_env  # noqa: F401
from deploykit.backends.base import ExportedArtifact, get_backend
from deploykit.pipeline import BuildOptions, prepare_session
from deploykit.graph.compatibility import check_compatibility
from deploykit.passes.recipe import recipe
from deploykit.profiling.base import ProfileSettings, get_runner
from deploykit.progress import StepLog
from deploykit.target_loader import load_target
from ptq_vs_vendor import _format  # same folder: one number format for every benchmark table


def stock_edge_quantizer(saved_model: Path, calibration, folder: Path) -> ExportedArtifact:
    """ai-edge-quantizer's full-integer recipe with its default min/max calibration."""
    import os

    import tensorflow as tf
    from ai_edge_quantizer import quantizer, recipe

    engine = quantizer.Quantizer(bytearray(tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()))
    engine.load_quantization_recipe(recipe.static_wi8_ai8())
    ranges = engine.calibrate({"serving_default": calibration}, num_threads=os.cpu_count() or 1)
    folder.mkdir(parents=True)
    path = folder / "model.tflite"
    path.write_bytes(bytes(engine.quantize(ranges, enable_progress_report=False).quantized_model))
    return ExportedArtifact(path, [path], "tflite", "static_wi8_ai8", "ai-edge-quantizer defaults")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--data", default=None, help="JSONL/CSV (default: the bundled sentences)")
    parser.add_argument("--eval-data", default=None, help="separate evaluation file (default: held out from --data)")
    parser.add_argument("--sequence-length", type=int, default=None, help="default: chosen from the data, as build does")
    parser.add_argument("--qat-steps", type=int, default=None, help="default: the qat pass's default")
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()

    qat = {"steps": args.qat_steps} if args.qat_steps else {}
    options = BuildOptions(sequence_length=args.sequence_length, profile=ProfileSettings(runs=args.runs),
                           pass_parameters={"qat": qat})
    npu, edge = load_target("mobile-npu"), load_target("edge-tpu")
    backend = get_backend("litert")
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-") as workdir:
        work = Path(workdir)
        session = prepare_session(args.model, args.data, args.eval_data, options, StepLog(), work)
        runner = get_runner(npu.profiling)
        threads = runner.threads(npu)
        integer_options = session.export_options(npu)
        keras_graph = session.models.saved_model()
        integer_graph = session.models.saved_model(options.masked_logit)
        started = time.perf_counter()
        qat_graph = session.models.saved_model(options.masked_logit, recipe(("qat",), options.pass_parameters))
        qat_seconds = time.perf_counter() - started

        stock = backend.export(keras_graph, "int8", integer_options, work / "stock-converter")
        paths = [
            ("TFLiteConverter full-integer, Keras graph", stock),
            ("ai-edge-quantizer static_wi8_ai8, Keras graph",
             stock_edge_quantizer(keras_graph, integer_options.calibration, work / "stock-aeq")),
            ("deploykit int8 post-training", backend.export(integer_graph, "int8", integer_options, work / "ptq")),
            ("deploykit qat + int8", backend.export(qat_graph, "int8", integer_options, work / "qat")),
            ("deploykit a16w8 (int16 activations)", backend.export(integer_graph, "a16w8", integer_options, work / "a16w8")),
            ("dynamic-range int8 (not full-integer)",
             backend.export(keras_graph, "dynamic-int8", session.export_options(load_target("arm-cpu")), work / "dyn")),
        ]
        baseline = session.baseline(backend, npu, runner, threads)
        rows = [("LiteRT fp32", baseline)]
        for label, artifact in paths:
            rows.append((label, session.measure(backend, artifact, runner, threads, label)))
        print_table(rows, session, threads, backend, npu, edge, qat_seconds)


def print_table(rows, session, threads, backend, npu, edge, qat_seconds) -> None:
    print(f"\nModel {session.bundle.source}, sequence length {session.sequence_length}, "
          f"{len(session.split.evaluation)} evaluation / {len(session.split.calibration)} calibration sentences, "
          f"{threads} threads, batch 1. QAT took {qat_seconds:.0f} s.\n")
    header = ("| path | MB | p50 ms | p50 vs fp32 | cosine mean | cosine min | NN agreement | accuracy "
              "| mobile-npu ops | edge-tpu ops |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    base_p50 = rows[0][1].profile["latency_ms"]["p50"]
    for label, measured in rows:
        size = sum(path.stat().st_size for path in measured.artifact.files)
        p50 = measured.profile["latency_ms"]["p50"]
        fidelity = measured.quality["fidelity"]
        ops = backend.graph_ops(measured.artifact.path)
        falls = [sum(check_compatibility(ops, target).fallback_ops.values()) for target in (npu, edge)]
        print(f"| {label} | {size / 1e6:.1f} | {p50:.2f} | {p50 / base_p50:.2f}× | {_format(fidelity['cosine_mean'])} | "
              f"{_format(fidelity['cosine_min'])} | {_format(fidelity['agreement'], 3)} | "
              f"{_format(measured.quality['accuracy'], 4)} | {falls[0]} | {falls[1]} |")


if __name__ == "__main__":
    main()
