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

# int4 groups of 64 input channels: 64 divides the hidden sizes of the small decoders deploykit targets (SmolLM2
# 576 and 960, Gemma 3 270M 640, Qwen2.5-0.5B 896), where NNCF's default 128 does not divide 576 or 960. Measured on
# SmolLM2 (OpenVINO, rounded to nearest), 32 was no more faithful (perplexity ratio 1.25 vs 1.20) for 5% more bytes.
DEFAULT_GROUP_SIZE = 64


@dataclass(frozen=True)
class DecoderExport:
    """What to export: precision of the weights, cache and prefill shapes, and the data int4 may calibrate on."""

    weights: str  # fp32 | fp16 | int8 | int4
    cache_length: int
    prefill_length: int  # the fixed prefill chunk of static-shape runtimes
    group_size: int = DEFAULT_GROUP_SIZE
    ratio: float = 1.0  # share of the eligible weights at int4, the rest int8 (int4-mixed: below 1, data-aware)
    algorithm: str = "rtn"  # rtn: data-free; awq: activation-aware scales with scale estimation (OpenVINO)
    calibration: tuple[tuple[int, ...], ...] = ()  # token ids of calibration texts

    def label(self) -> str:
        if not self.weights.startswith("int4"):
            return self.weights
        ratio = "" if self.ratio == 1 else f", ratio {self.ratio:g}"
        return f"{self.weights} (group {self.group_size}, {self.algorithm}{ratio})"


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
    int4_methods: ClassVar[tuple[str, ...]] = ("rtn",)  # how this backend can choose int4 levels
    calibrated: ClassVar[frozenset[str]] = frozenset()  # precisions whose export runs the model on calibration text
    device_compiled: ClassVar[bool] = False  # whether the target's device compiler takes this backend's decoders

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

    def artifact_files(self, path: Path) -> list[Path]:
        """The files an artifact is made of, `path` (the one the runtime opens) first."""
        return [path]

    def runtime_settings(self, config: object) -> dict:
        """The runtime settings a build folder's generation.json may carry (untrusted): none unless a backend
        names them."""
        return {}

    def check_method(self, method: str) -> None:
        if method not in self.int4_methods:
            raise DeployKitError(f"int4 method {method!r} is not available for decoders on the {self.name} runtime; "
                                 f"choose {' or '.join(self.int4_methods)}.")

    def describe(self, weights: str) -> str:
        if weights not in self.weights:
            raise DeployKitError(f"weights {weights!r} are not available for decoders on the {self.name} runtime; "
                                 f"choose one of {', '.join(self.weights)}.")
        return self.weights[weights]


DECODER_BACKENDS: Registry[DecoderBackend] = Registry("decoder backend", "deploykit.generation.backends",
                                                      "deploykit.decoder_backends")


def get_decoder_backend(runtime: str) -> DecoderBackend:
    return DECODER_BACKENDS.get(runtime)()


def export_in_child(runtime: str, saved_model: Path, export: DecoderExport, folder: Path) -> DecoderArtifact:
    """`export` in a fresh process, which hands its memory back when it ends.

    The converters' transient memory is several times a model's float weights (SmolLM2-135M, 540 MB of float32:
    the LiteRT int8 export took the build process from 2.7 to 8 GB, and the memory stayed taken after it), so a
    build that exports a candidate and a float baseline per target in one process grows past what a 2-core CI
    machine shares between two test workers."""
    from deploykit.subprocesses import in_fresh_process

    return in_fresh_process(f"the {runtime} export of {export.label()} weights", _export_here, runtime, saved_model,
                            export, folder)


def _export_here(runtime: str, saved_model: Path, export: DecoderExport, folder: Path) -> DecoderArtifact:
    return get_decoder_backend(runtime).export(saved_model, export, folder)
