"""The common interface of exporters/runtimes, and their registry.

A backend is one module `deploykit/backends/<runtime>.py` holding one `Backend`
subclass whose `name` is the runtime named in target YAML files. Everything
vendor-specific stays in that module; the rest of deploykit calls `export` and
`load`. Runtime modules import their vendor packages lazily, so that the
profiling worker can load an artifact without importing TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

import numpy as np

from deploykit.graph.graph_ops import GraphOp
from deploykit.errors import DeployKitError
from deploykit.registry import Registry

if TYPE_CHECKING:
    from deploykit.graph.mixed_precision import PrecisionGroup

Inputs = dict[str, np.ndarray]


@dataclass
class LoadedModel:
    """A loaded artifact: call it on one batch-1 example (timing runs in the profiling worker, not here)."""

    run: Callable[[Inputs], np.ndarray]

    def __call__(self, inputs: Inputs) -> np.ndarray:
        return self.run(inputs)


@dataclass
class ExportedArtifact:
    """Files a backend wrote, and how to run them as intended."""

    path: Path  # the file a runtime opens
    files: list[Path]  # every file of the model (e.g. .xml and .bin)
    format: str
    precision: str
    method: str  # how it was produced, in words, for the plan and the report
    runtime_config: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # what the export chose (e.g. a mixed-precision analysis), reported


# Percentile-calibrated activation ranges (TensorRT Q/DQ): TensorRT's own calibrators default to 99.99 too.
DEFAULT_ACTIVATION_PERCENTILE = 99.99
# int4 weights: one scale per 128 input channels of a row, the group size NNCF and GPTQ-style kernels default to
# (smaller groups: more faithful, larger files); every eligible layer at int4 unless a ratio below 1 asks otherwise.
DEFAULT_INT4_GROUP_SIZE = 128
DEFAULT_INT4_RATIO = 1.0
# How int4 values are chosen. rtn: each group rounded to its nearest level, data-free. awq / gptq: on the calibration
# samples, activation-aware scaling / column-by-column error compensation, both with scale estimation. GPTQ is the
# default: on MiniLM (group 128) cosine 0.982 against 0.962 rounded to nearest, for about a minute of CPU per model.
INT4_ALGORITHMS = ("rtn", "awq", "gptq")
DEFAULT_INT4_ALGORITHM = "gptq"


@dataclass(frozen=True)
class Int4Settings:
    """How precision int4-weights compresses: groups, the share at int4, the algorithm, and the embedding tables."""

    group_size: int = DEFAULT_INT4_GROUP_SIZE  # input channels sharing one scale (-1: one per row)
    ratio: float = DEFAULT_INT4_RATIO  # share of the eligible weights at int4, the rest int8 (data-aware below 1)
    algorithm: str = DEFAULT_INT4_ALGORITHM  # one of INT4_ALGORITHMS
    # Embedding tables at int4 too (int8 by default): on MiniLM, 17.9 -> 11.9 MB for 0.004 cosine.
    embeddings: bool = False
    # The int4 vocabulary table's groups along each row (None: group_size). A row is one token's vector; one scale
    # and zero point per row (-1) instead of three at group 128 saves 5 of its 199.5 bytes (0.15 MB on MiniLM).
    embedding_group_size: int | None = None

    @property
    def table_group_size(self) -> int:
        return self.group_size if self.embedding_group_size is None else self.embedding_group_size

    def describe(self) -> str:
        """How the tables are stored, for artifact descriptions."""
        if not self.embeddings:
            return "embeddings int8"
        return "embeddings int4" + ("" if self.table_group_size == self.group_size else
                                    " one scale per row" if self.table_group_size == -1 else
                                    f" in groups of {self.table_group_size}")
# Converters run as child processes (tf2onnx) stop after this: BERT-large converts in ~5 minutes on 2 cores.
DEFAULT_CONVERTER_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class ExportOptions:
    """What an exporter needs to know beyond the model: the target's constraints and the calibration data."""

    calibration: list[Inputs]
    integer_only: bool = False
    integer_io: bool = False
    activation_percentile: float = DEFAULT_ACTIVATION_PERCENTILE  # percentile-calibrating backends: values kept in range
    converter_timeout_s: float = DEFAULT_CONVERTER_TIMEOUT_S  # limit for a converter run as a child process
    int4: Int4Settings = Int4Settings()  # precision int4-weights


class MixedGraph:
    """A quantized graph a backend can write with any of its groups kept at its higher precision ("mixed")."""

    groups: list["PrecisionGroup"]
    # Whether the sensitivity analysis also measures each everything-but-one variant (see rank_groups).
    measure_complements: ClassVar[bool] = True

    def write(self, kept: frozenset[str], folder: Path) -> ExportedArtifact:
        """The graph with the named groups at high precision and the rest quantized, as an artifact in `folder`."""
        raise NotImplementedError


class Backend:
    """One exporter + runtime. Subclasses register themselves under `name`."""

    name: ClassVar[str]
    format: ClassVar[str]
    suffix: ClassVar[str]  # of the file a runtime opens
    precisions: ClassVar[dict[str, str]]  # precision -> how this backend produces it
    # Precisions exported from the integer-capable trace (bounded mask, scaled residual stream) even on
    # targets that are not integer-only: int8 GEMMs whose inputs would otherwise carry outlier channels.
    scaled_stream_precisions: ClassVar[frozenset[str]] = frozenset()
    reads_onnx: ClassVar[bool] = False  # whether `export` also takes an .onnx file as its source graph
    companion_suffixes: ClassVar[tuple[str, ...]] = ()  # files beside the artifact the runtime also reads
    # Precisions whose kernels are another's on the CPU this backend profiles on (the latency model predicts
    # them from that precision's measurements when they have none of their own).
    executes_as: ClassVar[dict[str, str]] = {}
    # The pass that trains weights onto this backend's int4-weights grid, tried after int4-weights (None: none
    # simulates it exactly, and training towards another grid would not pay).
    int4_training_pass: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        BACKENDS.add(cls)

    def export(self, saved_model: Path, precision: str, options: ExportOptions, folder: Path) -> ExportedArtifact:
        """Convert the source graph (a SavedModel folder, or an .onnx file when `reads_onnx`) into `folder`."""
        raise NotImplementedError

    def mixed_graph(self, saved_model: Path, options: ExportOptions, scratch: Path) -> MixedGraph:
        """The quantized graph and its precision groups, for precision "mixed" (backends listing it implement this)."""
        raise NotImplementedError

    def load(self, path: Path, threads: int, runtime_config: dict) -> LoadedModel:
        """Load the artifact with the runtime, ready to run batch-1 examples."""
        raise NotImplementedError

    def artifact_files(self, path: Path) -> list[Path]:
        """The artifact and the files beside it that its runtime reads (e.g. OpenVINO's .bin): what to copy."""
        return [path, *(path.with_suffix(suffix) for suffix in self.companion_suffixes)]

    def graph_ops(self, path: Path) -> list[GraphOp] | None:
        """The artifact's ops with their tensors' types and shapes; None when this backend cannot list them."""
        return None

    def check_int4(self, settings: Int4Settings) -> None:
        """Refuse, before any work, int4 settings this backend's int4-weights cannot honour (by default: none)."""

    def describe(self, precision: str) -> str:
        if precision not in self.precisions:
            raise DeployKitError(
                f"precision {precision!r} is not available on the {self.name} backend; "
                f"choose one of {', '.join(self.precisions)}."
            )
        return self.precisions[precision]


BACKENDS: Registry[Backend] = Registry("backend", "deploykit.backends", "deploykit.backends")


def get_backend(runtime: str) -> Backend:
    """The backend for a runtime name; a runtime without an exporter is a clear error."""
    if runtime not in BACKENDS.entries and runtime not in available_runtimes():
        raise DeployKitError(
            f"deploykit has no exporter for the {runtime!r} runtime yet; targets on "
            f"{', '.join(available_runtimes())} can be built today."
        )
    return BACKENDS.get(runtime)()


def backend_for_file(path: Path) -> Backend:
    """The backend whose runtime opens files like `path` (by suffix)."""
    for runtime in available_runtimes():
        backend = get_backend(runtime)
        if path.suffix == backend.suffix:
            return backend
    known = ", ".join(sorted(get_backend(r).suffix for r in available_runtimes()))
    raise DeployKitError(f"{path} is not an artifact deploykit can run; pass a file ending in one of {known}.")


def available_runtimes() -> list[str]:
    return BACKENDS.names()
