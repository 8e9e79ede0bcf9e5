"""The target schema: what one YAML file in targets/ may say about a class of hardware (pure data, pydantic).

Plugin blocks (`runtime`, `compiler`, `profiling`) and `recipes` name things in
deploykit's registries; `deploykit/target_loader.py` checks them when a file loads.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deploykit.errors import quoted

Precision = Literal["fp32", "fp16", "bf16", "int8", "a16w8", "mixed", "dynamic-int8", "fp8", "int4-weights"]
INTEGER_PRECISIONS = ("int8", "a16w8")  # full-integer graphs: int8 weights, int8 or int16 activations
Sparsity = Literal["none", "2:4", "unstructured"]

# A target's name is also its output folder's name and a CLI word: no dots, slashes, spaces or capitals.
TARGET_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
MAX_HOST_DESCRIPTION = 200  # characters of a host's '<arch> <cpu model>' a pattern sees
MAX_HOST_MATCH = 200  # characters; the built-in targets' patterns are under 20
# Repetitions in sequence backtrack polynomially (`.*.*.*.*x`: n^4 steps on a host name of n characters); three
# keep the worst case on a 200-character name near a million steps.
MAX_HOST_MATCH_REPEATS = 3


def check_host_match(pattern: str) -> None:
    """A `host_match` must compile and run in linear time: Python's `re` has no timeout, and a repetition of
    something that itself repeats or alternates (`(a+)+`, `(a|a)*`) backtracks exponentially on a host name that
    almost matches. A report.json from elsewhere carries this field, so the check is the schema's."""
    if len(pattern) > MAX_HOST_MATCH:
        raise ValueError(f"host_match is {len(pattern)} characters; at most {MAX_HOST_MATCH}")
    try:
        parsed = re._parser.parse(pattern)
    except (re.error, RecursionError, OverflowError) as error:
        raise ValueError(f"{quoted(pattern)} is not a valid regular expression ({error})") from None
    if _repetitions(parsed) > MAX_HOST_MATCH_REPEATS:
        raise ValueError(f"{quoted(pattern)} has more than {MAX_HOST_MATCH_REPEATS} repetitions (*, +, {{m,n}}), "
                         "which can take polynomial time; match a shorter, literal part of the host name")
    if _nested_repetition(parsed, inside_repeat=False):
        raise ValueError(f"{quoted(pattern)} repeats a group that itself repeats or alternates, which can take "
                         "exponential time; write it without nesting, e.g. '(?i)cortex-a7[26]'")


def _repeats(op, argument) -> bool:
    from re._constants import MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT

    return op in (MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT) and argument[1] > 1


def _children(argument) -> list:
    """The sub-patterns of one parsed item (a group's body, a repetition's, each branch of an alternation)."""
    items = argument if isinstance(argument, (tuple, list)) else ()
    return [item for entry in items for item in (entry if isinstance(entry, list) else [entry])
            if isinstance(item, re._parser.SubPattern)]


def _repetitions(pattern) -> int:
    return sum(_repeats(op, argument) + sum(map(_repetitions, _children(argument))) for op, argument in pattern)


def _nested_repetition(pattern, inside_repeat: bool) -> bool:
    from re._constants import BRANCH

    for op, argument in pattern:
        repeats = _repeats(op, argument)
        if inside_repeat and (repeats or op is BRANCH):
            return True
        if any(_nested_repetition(child, inside_repeat or repeats) for child in _children(argument)):
            return True
    return False


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
    # Generative decoders, measured on held-out text against the original's next-token distributions. 1.10: int8
    # weights on a 135M decoder cost under 1%, int4 rounded to nearest on every layer about 10-30%, so the default
    # lets careful int4 (groups, data-aware scales, sensitive layers at int8) ship and plain int4 fall back.
    max_perplexity_ratio: float = Field(
        1.10, ge=1, description="Largest allowed perplexity of the artifact over the original's, on held-out text."
    )
    # 0.90: the original's own greedy choice is kept at nine positions in ten; lower, continuations visibly drift.
    min_top1_agreement: float = Field(
        0.90, ge=0, le=1, description="Smallest share of positions where the artifact's most likely next token is "
        "the original's."
    )
    # Off by default: a greedy continuation is all-or-nothing after its first different token, so on a few prompts
    # it swings on one near-tie; the per-position agreement above measures the same thing without the cascade.
    min_greedy_match: float | None = Field(
        None, ge=0, le=1, description="Smallest mean share of the original's first greedy tokens the artifact repeats."
    )


GENERATION_WEIGHTS = ("fp32", "fp16", "int8", "int4", "int4-mixed", "int8-dynamic", "int4-dynamic", "a16w8")


class Generation(BaseModel):
    """How a target runs generative decoders; a target without this block refuses them before any work."""

    model_config = ConfigDict(extra="forbid")

    weights: list[Literal[GENERATION_WEIGHTS]] = Field(
        description="Weight precisions tried in order; the first that passes the gates ships. int8 and int4 keep "
        "float activations; -dynamic quantizes them at run time too (LiteRT); int4-mixed keeps the layers most "
        "sensitive on calibration text at int8 (OpenVINO); a16w8 is a full-integer graph, int8 weights and int16 "
        "activations calibrated on text (LiteRT, for NPUs)."
    )
    # 0.8: the share NNCF's and optimum-intel's mixed int4/int8 examples use for sub-billion decoders.
    int4_mixed_ratio: float = Field(
        0.8, gt=0, lt=1, description="int4-mixed: the share of the layers' weights at int4; the rest int8."
    )
    static_prefill: bool = Field(
        False, description="Prefill runs in fixed-length chunks (runtimes without dynamic shapes); else any length."
    )
    int4_method: Literal["rtn", "awq"] = Field(
        "rtn", description="How int4 levels are chosen: rtn rounds to nearest (data-free); awq fits activation-aware "
        "scales with scale estimation on calibration text (OpenVINO)."
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
    benchmark_model_flags: list[str] = Field(
        [], description="Flags LiteRT's benchmark_model gets on an Android device of this class (its delegate, e.g. "
        "--use_nnapi=true, --use_gpu=true, an external QNN/NeuroPilot delegate); the adb runner passes them."
    )
    budgets: Budgets = Budgets()
    generation: Generation | None = Field(
        None, description="How this target runs generative decoders (absent: it refuses them)."
    )
    compiler: dict | None = Field(
        None, description="The device toolchain run after export, e.g. {name: edgetpu}; see deploykit/compilers."
    )
    recipes: list[str] = Field(
        [], description="Compression recipes (as --recipe) tried in order when quantization alone misses "
        "the latency budget; each costs accuracy, so list the gentlest first."
    )
    activation_cost: dict[str, float] = Field(
        {}, description="Relative cost of one activation element per tensor type on this hardware (e.g. {int8: 1, "
        "int16: 2}), with its source in a comment: what a mixed-precision artifact is predicted to cost against the "
        "uniform precisions, where the device cannot be measured."
    )

    @field_validator("profiling", mode="before")
    @classmethod
    def _runner_block(cls, value: object) -> object:
        """`profiling: local` is short for `profiling: {name: local}`."""
        return {"name": value} if isinstance(value, str) else value

    @field_validator("benchmark_model_flags")
    @classmethod
    def _flags_are_name_value(cls, flags: list[str]) -> list[str]:
        for flag in flags:
            if not re.fullmatch(r"--[A-Za-z0-9_]+=\S+", flag):
                raise ValueError(f"{flag!r} is not a benchmark_model flag of the form --name=value")
        return flags

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, value: str) -> str:
        """A name becomes a folder (OUT/<name>, profiles/<name>): a report.json from elsewhere must not steer it."""
        if not TARGET_NAME.fullmatch(value) or len(value) > 64:
            raise ValueError(f"{quoted(value)} is not a target name (lowercase letters, digits and hyphens, at most "
                             "64, starting with a letter or digit)")
        return value

    @field_validator("host_match")
    @classmethod
    def _host_match_is_a_safe_regex(cls, value: str | None) -> str | None:
        if value is not None:
            check_host_match(value)
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

    @field_validator("activation_cost")
    @classmethod
    def _costs_are_positive(cls, costs: dict[str, float]) -> dict[str, float]:
        for name, cost in costs.items():
            if not cost > 0:
                raise ValueError(f"activation_cost of {name} must be positive, got {cost}")
        return costs

    @model_validator(mode="after")
    def _integer_only_needs_integer_precisions(self) -> "Target":
        allowed = (*INTEGER_PRECISIONS, "mixed")  # mixed on an integer-only runtime: int8 with int16 regions
        if self.integer_only and not set(self.precisions) <= set(allowed):
            raise ValueError(f"an integer_only target may list only the precisions {list(allowed)}")
        return self

    def matches_host(self, host: str) -> bool:
        """Whether a host ('<arch> <cpu model>', possibly reported by a device) is of this target's kind; the
        description is cut to MAX_HOST_DESCRIPTION characters, which bounds the pattern's work."""
        return bool(self.host_match) and re.search(self.host_match, host[:MAX_HOST_DESCRIPTION]) is not None

    @property
    def checks_ops(self) -> bool:
        """Whether exported graphs must be checked op by op against this target's limits."""
        return bool(self.integer_only or self.supported_ops is not None or self.unsupported_ops
                    or self.max_tensor_dims is not None)

    @property
    def default_precision(self) -> Precision:
        return self.precisions[0]
