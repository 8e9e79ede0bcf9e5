"""Benchmark: deploykit's post-training artifacts vs fp32 and vs each vendor's one-call default path.

Everything is measured in one run, on one machine, with the same profiler (a fresh
worker process per artifact, batch 1, the same real sentence) and the same
evaluation sentences, so the printed ratios compare like with like:

    python tools/bench/ptq_vs_vendor.py                  # MiniLM, sequence length 128
    python tools/bench/ptq_vs_vendor.py --sequence-length 48 --runs 200
    python tools/bench/ptq_vs_vendor.py --runtimes tensorrt --sequence-length 48

Vendor default paths: TFLiteConverter with Optimize.DEFAULT; openvino.convert_model
+ save_model with its defaults (fp16-compressed weights) run with the CPU plugin's
default inference precision; nncf.quantize with default arguments; for TensorRT,
onnxruntime's quantize_static with the settings TensorRT accepts (QDQ, symmetric
int8, per-channel weights) and its default MinMax calibration, on the graph as Keras
traces it. TensorRT artifacts run under onnxruntime on this CPU: their fidelity is
what the GPU computes up to kernel rounding, their latency says nothing of the GPU.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from deploykit import runtime_env  # noqa: F401
from deploykit.backends.base import ExportedArtifact, get_backend
from deploykit.pipeline import BuildOptions, prepare_session
from deploykit.profiling.base import ProfileSettings, get_runner
from deploykit.progress import StepLog
from deploykit.target_loader import load_target


def vendor_tflite_default(saved_model: Path, folder: Path) -> ExportedArtifact:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    folder.mkdir(parents=True)
    path = folder / "model.tflite"
    path.write_bytes(converter.convert())
    return ExportedArtifact(path, [path], "tflite", "Optimize.DEFAULT", "vendor default")


def vendor_openvino_default(saved_model: Path, folder: Path, calibration=None) -> ExportedArtifact:
    import nncf
    import openvino as ov

    model = ov.convert_model(str(saved_model))
    if calibration is not None:
        model = nncf.quantize(model, nncf.Dataset(calibration))
    folder.mkdir(parents=True)
    path = folder / "model.xml"
    ov.save_model(model, str(path))
    label = "nncf.quantize defaults" if calibration is not None else "convert_model defaults"
    return ExportedArtifact(path, [path, path.with_suffix(".bin")], "openvino-ir", label, "vendor default")


def vendor_onnxruntime_qdq(saved_model: Path, folder: Path, calibration, gemm_only: bool = False) -> ExportedArtifact:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from deploykit.backends.tensorrt import calibration_reader, tf2onnx_file

    folder.mkdir(parents=True)
    float_path, path = folder / "float.onnx", folder / "model.onnx"
    tf2onnx_file(saved_model, float_path)

    quantize_static(str(float_path), str(path), calibration_reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul", "Gemm"] if gemm_only else None,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    float_path.unlink()
    which = "MatMul/Gemm only" if gemm_only else "every op it quantizes"
    return ExportedArtifact(path, [path], "onnx", f"onnxruntime QDQ, TensorRT settings, MinMax, {which}",
                            "vendor default")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--data", default=None, help="JSONL/CSV (default: the bundled sentences)")
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runtimes", default="litert,openvino,tensorrt", help="comma-separated subset to measure")
    args = parser.parse_args()
    runtimes = args.runtimes.split(",")

    options = BuildOptions(sequence_length=args.sequence_length,
                           profile=ProfileSettings(runs=args.runs, threads=args.threads))
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-") as workdir:
        work = Path(workdir)
        session = prepare_session(args.model, args.data, None, options, StepLog(), work)
        saved_model = session.models.saved_model()
        rows = []
        for runtime, deploykit_paths in (
            ("litert", [("arm-cpu", None), ("arm-cpu", "fp16"), ("mobile-npu", None)]),
            ("openvino", [("intel-cpu", None), ("intel-cpu", "bf16")]),
            ("tensorrt", [("nvidia-gpu", None), ("nvidia-gpu", "fp16")]),
        ):
            if runtime not in runtimes:
                continue
            backend = get_backend(runtime)
            first = load_target(deploykit_paths[0][0])
            runner = get_runner(first.profiling)
            threads = args.threads or runner.threads(first)
            baseline = session.baseline(backend, first, runner, threads)
            rows.append((runtime, "fp32 baseline", baseline))
            for target_name, precision in deploykit_paths:
                target = load_target(target_name)
                precision = precision or target.default_precision
                integer = target.integer_only or precision in backend.scaled_stream_precisions
                source = session.models.saved_model(options.masked_logit if integer else None)
                folder = work / f"{target_name}-{precision}"
                artifact = backend.export(source, precision, session.export_options(target), folder)
                label = f"deploykit {precision} ({target_name})"
                rows.append((runtime, label, session.measure(backend, artifact, runner, threads, label)))
            if runtime == "litert":
                # The stock full-integer recipe: the same converter settings on the graph as Keras traces it.
                stock = backend.export(saved_model, "int8", session.export_options(load_target("mobile-npu")),
                                       work / "vendor-full-integer")
                stock.precision = "full-integer converter, Keras mask"
                vendor = [vendor_tflite_default(saved_model, work / "vendor-tflite"), stock]
            elif runtime == "tensorrt":
                calibration = session.export_options(load_target("nvidia-gpu")).calibration
                vendor = [vendor_onnxruntime_qdq(saved_model, work / "vendor-qdq", calibration),
                          vendor_onnxruntime_qdq(saved_model, work / "vendor-qdq-gemm", calibration, gemm_only=True)]
            else:
                calibration = session.export_options(load_target("intel-cpu")).calibration
                vendor = [
                    vendor_openvino_default(saved_model, work / "vendor-ov"),
                    vendor_openvino_default(saved_model, work / "vendor-nncf", calibration),
                ]
            for artifact in vendor:
                rows.append((runtime, f"vendor {artifact.precision}", session.measure(backend, artifact, runner, threads,
                                                                              artifact.precision)))
        print_table(rows, session, threads)


def print_table(rows, session, threads) -> None:
    print(f"\nModel {session.bundle.source}, sequence length {session.sequence_length}, "
          f"{len(session.split.evaluation)} evaluation / {len(session.split.calibration)} calibration sentences, "
          f"{threads} threads, batch 1.\n")
    header = "| runtime | path | MB | size vs fp32 | p50 ms | p90 ms | speed-up vs fp32 | cosine mean | cosine min | NN agreement | runs as |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    baselines = {}
    for runtime, label, measured in rows:
        size = sum(path.stat().st_size for path in measured.artifact.files)
        latency = measured.profile["latency_ms"]
        if label == "fp32 baseline":
            baselines[runtime] = (size, latency["p50"])
        base_size, base_p50 = baselines[runtime]
        fidelity = measured.quality["fidelity"]
        runs_as = measured.profile["runtime"].get("inference_precision", "")
        print(f"| {runtime} | {label} | {size / 1e6:.1f} | {size / base_size:.3f}× | {latency['p50']:.2f} | "
              f"{latency['p90']:.2f} | {base_p50 / latency['p50']:.2f}× | {_format(fidelity['cosine_mean'])} | "
              f"{_format(fidelity['cosine_min'])} | {_format(fidelity['agreement'], 3)} | {runs_as} |")


def _format(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
