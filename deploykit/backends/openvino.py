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

from deploykit.backends.base import Backend, ExportedArtifact, ExportOptions, Inputs, Runner

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
    }
    runtime_hints = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
    reads_onnx = True
    companion_suffixes = (".bin",)

    def export(self, saved_model: Path, precision: str, options: ExportOptions, folder: Path) -> ExportedArtifact:
        import openvino as ov

        method = self.describe(precision)
        model = ov.convert_model(str(saved_model))
        # convert_model records the (temporary) input path; a stable value keeps artifacts byte-identical.
        model.set_rt_info("saved_model", ["conversion_parameters", "input_model"])
        if precision == "int8":
            model = _quantize(model, options.calibration)
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

    def load(self, path: Path, threads: int, runtime_config: dict) -> Runner:
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", **runtime_config}
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        request = compiled.create_infer_request()
        output = compiled.outputs[0]

        def run(inputs: Inputs) -> np.ndarray:
            return np.array(request.infer(inputs)[output], copy=True)

        return Runner(run)


def _quantize(model, calibration: list[Inputs]):
    import nncf

    return nncf.quantize(
        model,
        nncf.Dataset(calibration),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
    )


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
