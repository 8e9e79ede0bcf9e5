"""Device compilers: the vendor toolchain step after export, and their registry.

TensorRT engines, edgetpu_compiler and LiteRT's NPU ahead-of-time compilation
need toolchains (and often the device) that build machines rarely have. A
compiler runs when its toolchain is installed here; otherwise it says exactly
what is missing and leaves the device side what it needs (a build command or
script). Either way the outcome goes into report.json's `device_compile`.

A compiler is one module `deploykit/compilers/<name with _ for ->.py` holding one
`DeviceCompiler` subclass; a target names it in its YAML:

    compiler: {name: edgetpu}
    compiler: {name: litert-aot, vendor: qualcomm, soc_model: SM8650}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from deploykit.backends.base import ExportedArtifact
from deploykit.registry import Registry
from deploykit.progress import StepLog


class CompilerSettings(BaseModel):
    """A compiler's options from the target YAML; subclasses add fields with defaults."""

    model_config = ConfigDict(extra="forbid")

    name: str


@dataclass(frozen=True)
class CompileRequest:
    """What a compiler needs beyond the exported artifact."""

    artifact: ExportedArtifact
    folder: Path  # the target folder being assembled: compiled files, logs and scripts go here
    sequence_length: int
    input_names: tuple[str, ...]
    sparse_weights: bool = False  # a pass left 2:4-sparse weights worth marking for the compiler
    sequence_range: tuple[int, int] | None = None  # dynamic sequence axis: shortest and longest lengths to accept
    log: StepLog = field(default_factory=StepLog)

    @property
    def model_in_folder(self) -> str:
        """The artifact's path as scripts written into the folder name it: relative, so they survive a move."""
        model = self.artifact.path
        return model.relative_to(self.folder).as_posix() if model.is_relative_to(self.folder) else str(model.absolute())


@dataclass
class CompileResult:
    """What the compiler did: `compiled`, `not run` (toolchain missing) or `failed` (it ran and refused)."""

    compiler: str
    status: Literal["compiled", "not run", "failed"]
    reason: str  # one line: what was produced, or why nothing was
    files: list[Path] = field(default_factory=list)  # written into the target folder
    details: dict = field(default_factory=dict)  # compiler-specific facts (ops mapped, flags, command)

    def as_dict(self, folder: Path) -> dict:
        return {
            "compiler": self.compiler,
            "status": self.status,
            "reason": self.reason,
            "files": [path.relative_to(folder).as_posix() for path in self.files],
            **self.details,
        }


class DeviceCompiler:
    """One device toolchain step. Subclasses register themselves under `name`."""

    name: ClassVar[str]
    settings_class: ClassVar[type[CompilerSettings]] = CompilerSettings

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        COMPILERS.add(cls)

    def __init__(self, settings: CompilerSettings):
        self.settings = settings

    def missing(self) -> str | None:
        """Why this machine cannot run the toolchain (None: it can)."""
        raise NotImplementedError

    def compile(self, request: CompileRequest) -> CompileResult:
        """Compile the artifact into `request.folder`, or explain why not and leave the device side's recipe."""
        raise NotImplementedError


COMPILERS: Registry[DeviceCompiler] = Registry("device compiler", "deploykit.compilers", "deploykit.compilers")


def get_compiler(spec: dict) -> DeviceCompiler:
    """The compiler a target's `compiler:` block names, with its settings validated."""
    return COMPILERS.configured(spec, "compiler: {name: edgetpu}")
