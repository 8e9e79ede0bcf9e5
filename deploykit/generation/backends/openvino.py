"""Decoders on OpenVINO: one IR with explicit cache inputs and outputs, any prompt length, weights through NNCF.

OpenVINO GenAI's stateful form (the cache inside the model, `beam_idx` input) comes from optimum-intel's PyTorch
export; from a TensorFlow graph the cache stays explicit, and each step passes it in and out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deploykit.generation.backends.base import DecoderArtifact, DecoderBackend, DecoderExport
from deploykit.generation.runtime import LoadedDecoder, load_artifact

PRECISION_HINT = "INFERENCE_PRECISION_HINT"


class OpenVINODecoder(DecoderBackend):
    name = "openvino"
    suffix = ".xml"
    int4_methods = ("rtn", "awq")
    weights = {
        "fp32": "openvino.convert_model, float32 weights",
        "fp16": "openvino.convert_model, weights stored as fp16",
        "int8": "nncf.compress_weights INT8_ASYM: int8 weights, one scale and zero point per output channel",
        "int4": "nncf.compress_weights INT4_ASYM: int4 weights in groups of input channels; embeddings and the last "
        "layer int8 (NNCF's default backup)",
        "int4-mixed": "nncf.compress_weights INT4_ASYM with a ratio below 1: the layers most sensitive on the "
        "calibration text (NNCF's Hessian-weighted activation metric) stay int8",
    }

    def export(self, saved_model: Path, export: DecoderExport, folder: Path) -> DecoderArtifact:
        import nncf
        import openvino as ov

        method = self.describe(export.weights)
        model = ov.convert_model(str(saved_model))
        model.set_rt_info("saved_model", ["conversion_parameters", "input_model"])  # not the temporary path
        if export.weights == "int8":
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        elif export.weights in ("int4", "int4-mixed"):
            data = {}
            if export.algorithm == "awq" or export.ratio < 1:
                samples = [_step_inputs(model, ids) for ids in export.calibration]
                data = {"dataset": nncf.Dataset(samples), "subset_size": len(samples)}
            if export.algorithm == "awq":
                data.update({"awq": True, "scale_estimation": True})
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM,
                                          group_size=export.group_size, ratio=export.ratio, **data)
            method += f", group size {export.group_size}, ratio {export.ratio:g}, {export.algorithm}"
        saved = _share_identical_constants(model)
        if saved:
            method += f"; one copy of each weight the graph held twice (the tied LM head: {saved / 1e6:.2f} MB saved)"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.xml"
        ov.save_model(model, str(path), compress_to_fp16=export.weights == "fp16")
        # Float weights run in float32: on CPUs with bf16 units the plugin would otherwise pick bf16 activations.
        config = {PRECISION_HINT: "f32"} if export.weights == "fp32" else {}
        return DecoderArtifact(path, self.artifact_files(path), export, method, config)

    def artifact_files(self, path: Path) -> list[Path]:
        return [path, path.with_suffix(".bin")]

    def runtime_settings(self, config: object) -> dict:
        value = config.get(PRECISION_HINT) if isinstance(config, dict) else None
        return {PRECISION_HINT: value} if value in ("f32", "bf16", "f16") else {}

    def load(self, path: Path, threads: int | None, runtime_config: dict | None = None) -> LoadedDecoder:
        return load_artifact(self.name, str(path), threads, self.runtime_settings(runtime_config or {}))


def _share_identical_constants(model, smallest: int = 1 << 16) -> int:
    """Point every consumer of a constant at the first byte-identical one: NNCF compresses the token table (a
    Gather) and the tied LM head (a MatMul) of the same weights into two equal int8 tensors. Returns bytes saved;
    constants under `smallest` bytes are left alone (scales, shapes: nothing to gain)."""
    import hashlib

    first: dict[tuple, object] = {}
    saved = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Constant" or node.get_byte_size() < smallest:
            continue
        data = node.get_data()
        key = (str(node.get_element_type()), tuple(data.shape), hashlib.sha256(data.tobytes()).digest())
        if key not in first:
            first[key] = node
            continue
        for target in list(node.output(0).get_target_inputs()):
            target.replace_source_output(first[key].output(0))
        saved += node.get_byte_size()
    return saved


def _step_inputs(model, token_ids: tuple[int, ...]) -> dict[str, np.ndarray]:
    """One calibration sample: a prefill of `token_ids` into an empty cache."""
    shape = tuple(int(d) for d in model.input("cache").get_partial_shape().to_shape())
    return {"tokens": np.asarray([token_ids], dtype=np.int32), "cache": np.zeros(shape, dtype=np.float32),
            "index": np.asarray(0, dtype=np.int32)}
