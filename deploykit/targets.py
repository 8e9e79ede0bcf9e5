"""Hardware targets: the YAML schema and the registry that finds them.

A target is one YAML file describing what a class of hardware runs fast. The
built-in ones live in the repository's `targets/` folder; a user adds more by
pointing `DEPLOYKIT_TARGETS` at one or more folders (separated by `os.pathsep`),
whose files override built-ins of the same name.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deploykit.errors import DeployKitError

Precision = Literal["fp32", "fp16", "bf16", "int8", "a16w8", "dynamic-int8", "fp8", "int4-weights"]
INTEGER_PRECISIONS = ("int8", "a16w8")  # full-integer graphs: int8 weights, int8 or int16 activations
Sparsity = Literal["none", "2:4", "unstructured"]

# Installed from a wheel, the repository's targets/ folder is the package data deploykit/builtin_targets;
# in a source checkout (and an editable install) it is the folder itself.
_INSTALLED_TARGETS = Path(__file__).resolve().parent / "builtin_targets"
BUILTIN_TARGETS_DIR = _INSTALLED_TARGETS if _INSTALLED_TARGETS.is_dir() else Path(__file__).resolve().parent.parent / "targets"
TARGETS_ENV = "DEPLOYKIT_TARGETS"
# A target's name is also its output folder's name and a CLI word: no dots, slashes, spaces or capitals.
TARGET_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
TARGET_SUFFIXES = (".yaml", ".yml")


class Budgets(BaseModel):
    """Quality gates a build must pass on this target, overridable per build."""

    model_config = ConfigDict(extra="forbid")

    max_accuracy_drop: float = Field(
        1.0, ge=0, description="Largest allowed accuracy loss, in percentage points."
    )
    min_cosine: float = Field(
        0.99, ge=-1, le=1, description="Smallest allowed mean cosine similarity of embeddings."
    )
    max_latency_ms: float | None = Field(
        None, gt=0, description="Largest p50 latency; model-dependent, so usually given per build."
    )
    # 0.99 matches the default accuracy budget: when at most 1% of predictions change, accuracy moves by at
    # most 1 point whatever the labels are.
    min_agreement: float = Field(
        0.99, ge=0, le=1, description="Smallest share of unchanged predictions, for classifiers built without labels."
    )


class Target(BaseModel):
    """One hardware profile, as written in `targets/<name>.yaml`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    device: str = Field(description="The hardware this profile stands for, in words.")
    runtime: str = Field(description="The backend that exports and runs the artifact (litert, openvino, tensorrt, "
                         "or a plugin's).")
    precisions: list[Precision] = Field(
        min_length=1, description="Precisions the hardware runs fast, most preferred first."
    )
    integer_only: bool = Field(False, description="Every op must be integer (NPU, Edge TPU).")
    integer_io: bool = Field(False, description="Float inputs/outputs become int8 too.")
    static_shapes: bool = False
    sequence_range: tuple[int, int] | None = Field(
        None, description="[shortest, longest] sequence the deployed engine accepts (TensorRT optimisation profile); "
        "the ONNX then has a dynamic sequence axis and the build's length is the profile's optimum. "
        "Null: static shapes at the build's length."
    )
    sparsity: list[Sparsity] = ["none"]
    supported_ops: list[str] | None = Field(
        None, description="The accelerator's op set (runtime op names); null means any op the runtime has."
    )
    unsupported_ops: list[str] = []
    max_tensor_dims: int | None = Field(
        None, ge=1, description="Most dimensions larger than 1 that any tensor of an op may have."
    )
    memory_mb: int | None = Field(None, gt=0)
    threads: int | None = Field(None, ge=1, description="Profiling threads; null means all cores.")
    host_match: str | None = Field(
        None,
        description="Regex over '<arch> <cpu model>'; when it matches, local profiling "
        "runs on the target's own kind of device.",
    )
    profiling: dict = Field(
        {"name": "local"}, description="The profiling runner and its settings, e.g. {name: local} (or just local); "
        "see deploykit/profiling."
    )
    budgets: Budgets = Budgets()
    compiler: dict | None = Field(
        None, description="The device toolchain run after export, e.g. {name: edgetpu}; see deploykit/compilers."
    )
    recipes: list[str] = Field(
        [], description="Compression recipes (as --recipe) tried in order when quantization alone misses "
        "the latency budget; each costs accuracy, so list the gentlest first."
    )

    @field_validator("profiling", mode="before")
    @classmethod
    def _runner_block(cls, value: object) -> object:
        from deploykit.profiling.base import runner_spec

        return runner_spec(value)

    @field_validator("host_match")
    @classmethod
    def _host_match_is_a_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"{value!r} is not a valid regular expression ({error})") from None
        return value

    @field_validator("recipes")
    @classmethod
    def _recipes_parse(cls, value: list[str]) -> list[str]:
        from deploykit.passes.recipe import parse_recipe

        for text in value:
            try:
                parse_recipe(text)
            except DeployKitError as error:
                raise ValueError(f"recipe {text!r}: {error}") from None
        return value

    @model_validator(mode="after")
    def _sequence_range_is_a_tensorrt_profile(self) -> "Target":
        if self.sequence_range is not None:
            low, high = self.sequence_range
            if not 2 <= low <= high:
                raise ValueError(f"sequence_range must be [shortest, longest] with 2 <= shortest <= longest, got {list(self.sequence_range)}")
            if self.runtime != "tensorrt" or self.static_shapes:
                raise ValueError("sequence_range is a TensorRT optimisation profile: only for runtime tensorrt without static_shapes")
        return self

    @model_validator(mode="after")
    def _integer_only_needs_integer_precisions(self) -> "Target":
        if self.integer_only and not set(self.precisions) <= set(INTEGER_PRECISIONS):
            raise ValueError(f"an integer_only target may list only the precisions {list(INTEGER_PRECISIONS)}")
        return self

    @property
    def checks_ops(self) -> bool:
        """Whether exported graphs must be checked op by op against this target's limits."""
        return bool(self.integer_only or self.supported_ops is not None or self.unsupported_ops
                    or self.max_tensor_dims is not None)

    @property
    def default_precision(self) -> Precision:
        return self.precisions[0]


def target_dirs() -> list[Path]:
    """Folders searched for targets, later ones overriding earlier ones."""
    extra = [Path(p) for p in os.environ.get(TARGETS_ENV, "").split(os.pathsep) if p]
    for folder in extra:
        if not folder.is_dir():
            raise DeployKitError(
                f"{TARGETS_ENV} names {str(folder)!r}, which is not a folder; "
                "point it at a folder of target YAML files."
            )
    return [BUILTIN_TARGETS_DIR, *extra]


def load_target_file(path: Path) -> Target:
    """Parse and validate one target YAML file, with a one-line error on any problem."""
    if not TARGET_NAME.fullmatch(path.stem):
        raise DeployKitError(
            f"target file {path} has the name {path.stem!r}; target names are lowercase letters, digits and "
            "hyphens, starting with a letter or digit (rename the file)."
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as error:
        raise DeployKitError(f"target file {path} is not UTF-8 text (byte {error.start}); save it as UTF-8.") from None
    except (OSError, yaml.YAMLError, RecursionError) as error:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise DeployKitError(f"target file {path} is not readable YAML ({first}); fix its syntax.") from None
    if not isinstance(raw, dict):
        raise DeployKitError(f"target file {path} must hold a mapping of fields, got {type(raw).__name__}.")
    raw.setdefault("name", path.stem)
    if raw["name"] != path.stem:
        raise DeployKitError(
            f"target file {path} declares name {raw['name']!r}; it must match the file name {path.stem!r}."
        )
    try:
        target = Target.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in error.errors()
        )
        raise DeployKitError(f"target file {path} is invalid: {problems}.") from None
    from deploykit.backends.base import BACKENDS
    from deploykit.compilers.base import get_compiler
    from deploykit.profiling.base import get_runner

    checks = (("runtime", lambda: BACKENDS.get(target.runtime)), ("profiling", lambda: get_runner(target.profiling)),
              ("compiler", lambda: target.compiler is None or get_compiler(target.compiler)))
    for field_name, check in checks:  # plugins are named through their registries and check their own settings
        try:
            check()
        except DeployKitError as error:
            raise DeployKitError(f"target file {path} is invalid: {field_name}: {error}") from None
    return target


def _target_files() -> dict[str, Path]:
    """name -> file. Hidden files (editor locks, `..yaml`) are skipped; a user folder's file overrides a
    built-in target of the same name, but one name given twice by the user (`x.yml` beside `x.yaml`, or in
    two DEPLOYKIT_TARGETS folders) is an error naming both, since neither could be said to win."""
    files = {path.stem: path for path in _yaml_files(BUILTIN_TARGETS_DIR)}
    user: dict[str, Path] = {}
    for folder in target_dirs()[1:]:
        for path in _yaml_files(folder):
            if path.stem in user:
                raise DeployKitError(
                    f"target {path.stem!r} is defined twice, in {user[path.stem]} and {path}; remove or rename one."
                )
            user[path.stem] = path
    return {**files, **user}


def _yaml_files(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.iterdir() if p.suffix in TARGET_SUFFIXES and not p.name.startswith("."))
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise DeployKitError(
                f"target {path.stem!r} is defined twice, in {seen[path.stem]} and {path}; remove or rename one."
            )
        seen[path.stem] = path
    return paths


def list_targets() -> list[Target]:
    """Every registered target, sorted by name."""
    return [load_target_file(path) for _, path in sorted(_target_files().items())]


def load_target(name: str) -> Target:
    """The target called `name`; an unknown name errors with the closest known names."""
    files = _target_files()
    if name not in files:
        close = difflib.get_close_matches(name, files, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DeployKitError(
            f"unknown target {name!r}.{hint} Known targets: {', '.join(sorted(files))} "
            f"(add one as a YAML file in a folder named by {TARGETS_ENV})."
        )
    return load_target_file(files[name])


def resolve_targets(names: str) -> list[Target]:
    """Targets from a comma-separated list; 'all' means every registered target."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise DeployKitError("no target given; pass --target NAME (see `deploykit targets`).")
    if wanted == ["all"]:
        return list_targets()
    return [load_target(name) for name in wanted]
