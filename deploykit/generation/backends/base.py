"""The common interface of decoder exporters and runtimes, and their registry.

A decoder backend turns the SavedModel of a DecoderBundle's step into one artifact with that vendor's tools, and
loads it as a LoadedDecoder. Vendor packages are imported lazily, inside the methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from deploykit.errors import DeployKitError
from deploykit.generation.runtime import LoadedDecoder
from deploykit.registry import Registry

# Decode at batch 1 streams every weight once per token: int4 in groups of 64 input channels keeps the weights near
# 4.5 bits each (one fp16 scale and zero point per group) and on small decoders is markedly more faithful than 128.
DEFAULT_GROUP_SIZE = 64
# A group size matching the source's own blocks (GGUF Q4_0/Q4_1/Q8_0: 32) rounds onto the grid the source was
# already on, so the int4 artifact repeats the original's values instead of adding a second rounding.
GGUF_BLOCK_SIZES = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32}


@dataclass(frozen=True)
class DecoderExport:
    """What to export: precision of the weights, cache and prefill shapes, and the data int4 may calibrate on."""

    weights: str  # fp32 | fp16 | int8 | int4
    cache_length: int
    prefill_length: int  # the fixed prefill chunk of static-shape runtimes
    group_size: int = DEFAULT_GROUP_SIZE
    ratio: float = 1.0  # share of the eligible weights at int4, the rest int8 (data-aware below 1)
    algorithm: str = "rtn"  # rtn: data-free; awq: activation-aware scales with scale estimation (OpenVINO)
    calibration: tuple[tuple[int, ...], ...] = ()  # token ids of calibration texts

    def label(self) -> str:
        if self.weights != "int4":
            return self.weights
        ratio = "" if self.ratio == 1 else f", ratio {self.ratio:g}"
        return f"int4 (group {self.group_size}, {self.algorithm}{ratio})"


@dataclass
class DecoderArtifact:
    path: Path  # the file the runtime opens
    files: list[Path]
    export: DecoderExport
    method: str  # how it was produced, in words
    runtime_config: dict = field(default_factory=dict)  # how the runtime must load it, kept in generation.json


class DecoderBackend:
    """One decoder exporter + runtime, registered under the runtime name target files use."""

    name: ClassVar[str]
    suffix: ClassVar[str]
    weights: ClassVar[dict[str, str]]  # precision -> how this backend produces it
    static_prefill: ClassVar[bool] = False  # whether prefill runs in fixed-length chunks

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        DECODER_BACKENDS.add(cls)

    def export(self, saved_model: Path, export: DecoderExport, folder: Path) -> DecoderArtifact:
        raise NotImplementedError

    def signatures(self, export: DecoderExport) -> dict[str, int | None]:
        """The SavedModel signatures this backend converts: name -> tokens per call (None: any)."""
        if self.static_prefill:
            return {"prefill": export.prefill_length, "decode": 1}
        return {"serving_default": None}

    def load(self, path: Path, threads: int | None, runtime_config: dict | None = None) -> LoadedDecoder:
        """`runtime_config`: what export put in the artifact's `runtime_config` (checked by `runtime_settings`)."""
        raise NotImplementedError

    def runtime_settings(self, config: object) -> dict:
        """The runtime settings a build folder's generation.json may carry (untrusted): none unless a backend
        names them."""
        return {}

    def describe(self, weights: str) -> str:
        if weights not in self.weights:
            raise DeployKitError(f"weights {weights!r} are not available for decoders on the {self.name} runtime; "
                                 f"choose one of {', '.join(self.weights)}.")
        return self.weights[weights]


DECODER_BACKENDS: Registry[DecoderBackend] = Registry("decoder backend", "deploykit.generation.backends",
                                                      "deploykit.decoder_backends")


def get_decoder_backend(runtime: str) -> DecoderBackend:
    return DECODER_BACKENDS.get(runtime)()
