"""Every knob of a build, checked before any work, and forced recipes turned into options."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from deploykit.backends.base import (DEFAULT_ACTIVATION_PERCENTILE, DEFAULT_CONVERTER_TIMEOUT_S, INT4_ALGORITHMS,
                                     Int4Settings)
from deploykit.cache import DEFAULT_MAX_GB
from deploykit.data import DEFAULT_CALIBRATION_SAMPLES, DEFAULT_EVALUATION_SAMPLES, DEFAULT_LENGTH_PERCENTILE
from deploykit.errors import DeployKitError
from deploykit.graph.integer_graph import DEFAULT_MASKED_LOGIT
from deploykit.graph.mixed_precision import MixedSettings
from deploykit.passes.recipe import read_recipe
from deploykit.profiling.base import ProfileSettings
from deploykit.graph.residual_scaling import DEFAULT_MAX_RESIDUAL_SCALE
from deploykit.pareto_search.settings import PREFERENCES, SearchSettings


@dataclass(frozen=True)
class BuildOptions:
    """Every knob of a build; the defaults are what `deploykit build` does without flags."""

    out: Path = Path("dist")
    precision: str | None = None  # None: the target's preferred precision
    sequence_length: int | None = None  # None: chosen from the data
    sequence_length_percentile: float = DEFAULT_LENGTH_PERCENTILE
    max_accuracy_drop: float | None = None  # None: the target's budget
    min_cosine: float | None = None  # None: the target's budget
    min_agreement: float | None = None  # classifiers without labels; None: the target's budget
    max_latency_ms: float | None = None  # p50 gate; None: the target's budget (usually none)
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    evaluation_samples: int = DEFAULT_EVALUATION_SAMPLES
    profile: ProfileSettings = ProfileSettings()
    runner: str | None = None  # profiling runner; None: the target's (`profiling:` in its YAML)
    device: str | None = None  # ssh://user@host[:port], adb://SERIAL or a devices-file name: profile there
    devices_file: Path | None = None  # None: $DEPLOYKIT_DEVICES or ./devices.yaml
    trust_new_host: bool = False  # accept and record an SSH device's unknown host key
    benchmark_binary: str | None = None  # adb: a local benchmark_model binary to push
    # Where fidelity is measured: "device" runs the evaluation samples through the artifact on the profiling device
    # (its runtime and delegate), "host" on this machine; None: the device when one is given, else the host.
    validate_on: str | None = None
    # Host and device fidelity (cosine, agreement, accuracy as fractions) further apart than this are a finding:
    # 0.01 is the margin between the default cosine gate (0.99) and a perfect copy.
    host_device_tolerance: float = 0.01
    save_profile: Path | None = None  # write <folder>/<target>/<device>.json with what was measured
    profiles: Path | None = None  # measured profiles for the latency model; None: ./profiles when it exists
    seed: int = 0
    masked_logit: float = DEFAULT_MASKED_LOGIT  # padded attention positions in integer-only graphs
    allow_fallback: bool = False  # report ops that would leave the accelerator, but do not fail the build on them
    max_residual_scale: float = DEFAULT_MAX_RESIDUAL_SCALE  # integer graphs: largest residual-stream divisor (1 = off)
    activation_percentile: float = DEFAULT_ACTIVATION_PERCENTILE  # percentile-calibrated ranges (TensorRT Q/DQ)
    qat: bool = True  # integer-only targets try quantization-aware training when post-training int8 misses a gate
    pass_parameters: dict = field(default_factory=dict)  # pass name -> parameter overrides, e.g. {"qat": {"steps": 600}}
    recipe: tuple[str, ...] | None = None  # forced passes, in order (None: the planner chooses)
    force: bool = False  # replace OUT/<target> even when deploykit did not write it
    converter_timeout_s: float = DEFAULT_CONVERTER_TIMEOUT_S  # limit for a converter child process (tf2onnx)
    max_size_mb: float | None = None  # size gate on the artifact's files (MB = 1e6 bytes); None: none
    use_cache: bool = True  # reuse exports and measurements of the same inputs (--no-cache: run every stage)
    cache: Path | None = None  # None: $DEPLOYKIT_CACHE, else $XDG_CACHE_HOME/deploykit
    cache_max_gb: float = DEFAULT_MAX_GB  # least recently used entries go beyond this
    search: SearchSettings | None = None  # None: try the planner's fixed candidates; else an Optuna search
    mixed: MixedSettings = MixedSettings()  # how precision "mixed" chooses the groups it keeps high
    int4: Int4Settings = Int4Settings()  # how precision int4-weights compresses
    # The command line's values as (name, value) pairs, echoed in report.json's `options` (empty from the Python API):
    # `deploykit build --config report.json` repeats the build. Nothing reads them back inside a build.
    command: tuple = ()


def check_options(options: BuildOptions) -> None:
    """Reject option values no build can use, with the option's name and the accepted range."""
    profile = options.profile
    rules = [  # (option, value, accepted, what is accepted)
        ("calibration samples", options.calibration_samples, lambda v: v >= 1, "at least 1"),
        ("evaluation samples", options.evaluation_samples, lambda v: v >= 1, "at least 1"),
        ("seed", options.seed, lambda v: v >= 0, "0 or more"),
        ("activation percentile", options.activation_percentile, lambda v: 50 <= v <= 100, "in [50, 100]"),
        ("length percentile", options.sequence_length_percentile, lambda v: 0 < v <= 100, "in (0, 100]"),
        ("sequence length", options.sequence_length, lambda v: v >= 2, "at least 2"),
        ("max accuracy drop", options.max_accuracy_drop, lambda v: 0 <= v <= 100, "in [0, 100] points"),
        ("min cosine", options.min_cosine, lambda v: -1 <= v <= 1, "in [-1, 1]"),
        ("min agreement", options.min_agreement, lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("max latency", options.max_latency_ms, lambda v: v > 0, "above 0 ms"),
        ("host-device tolerance", options.host_device_tolerance, lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("masked logit", options.masked_logit, lambda v: v < 0, "below 0"),
        ("max residual scale", options.max_residual_scale, lambda v: v >= 1, "at least 1"),
        ("converter timeout", options.converter_timeout_s, lambda v: v > 0, "above 0 s"),
        ("runs", profile.runs, lambda v: v >= 1, "at least 1"),
        ("warmup", profile.warmup, lambda v: v >= 0, "0 or more"),
        ("threads", profile.threads, lambda v: v >= 1, "at least 1"),
        ("profiling timeout", profile.timeout_s, lambda v: v > 0, "above 0 s"),
        ("max size", options.max_size_mb, lambda v: v > 0, "above 0 MB"),
        ("cache size", options.cache_max_gb, lambda v: v > 0, "above 0 GB"),
        ("mixed reserve", options.mixed.reserve, lambda v: 0 <= v < 1, "in [0, 1)"),
        ("mixed max share", options.mixed.max_share, lambda v: 0 < v <= 1, "in (0, 1]"),
        ("mixed samples", options.mixed.samples, lambda v: v >= 1, "at least 1"),
        ("int4 group size", options.int4.group_size, lambda v: v >= 1 or v == -1, "at least 1 (or -1: one per row)"),
        ("int4 ratio", options.int4.ratio, lambda v: 0 < v <= 1, "in (0, 1]"),
        ("int4 embedding group size", options.int4.embedding_group_size, lambda v: v >= 1 or v == -1,
         "at least 1 (or -1: one per row)"),
    ]
    if options.search is not None:
        rules += [("trials", options.search.trials, lambda v: v >= 1, "at least 1"),
                  ("prune factor", options.search.prune_factor, lambda v: v >= 0, "0 (off) or more")]
        rules += [("search length percentile", value, lambda v: 0 < v <= 100, "in (0, 100]")
                  for value in options.search.length_percentiles]
        if options.search.prefer not in PREFERENCES:
            raise DeployKitError(f"prefer must be one of {', '.join(PREFERENCES)}, got {options.search.prefer!r}.")
        from deploykit.passes.base import PASSES

        unknown = sorted(set(options.search.passes or ()) - set(PASSES.names()))
        if unknown:
            raise DeployKitError(f"--search-passes: unknown pass {', '.join(unknown)}; known passes: "
                                 f"{', '.join(PASSES.names())} (or 'none' for precisions only).")
    if options.int4.algorithm not in INT4_ALGORITHMS:
        raise DeployKitError(f"int4 algorithm must be one of {', '.join(INT4_ALGORITHMS)}, got "
                             f"{options.int4.algorithm!r}.")
    for name, value, accepted, expected in rules:
        if value is not None and (not math.isfinite(value) or not accepted(value)):
            raise DeployKitError(f"{name} must be {expected}, got {value}.")
    if options.validate_on not in (None, "host", "device"):
        raise DeployKitError(f"validate on must be host or device, got {options.validate_on!r}.")


def forced_recipe(text: str, pass_parameters: dict, precision: str | None) -> dict:
    """BuildOptions fields for a forced recipe: the shorthand, a recipe file or a build's report.json.

    The recipe's parameters override `pass_parameters`; a recipe file's precision applies unless one is given.
    """
    spec = read_recipe(text)
    merged = {**pass_parameters, **{name: {**pass_parameters.get(name, {}), **spec.parameters[name]}
                                    for name in spec.names}}
    return {"recipe": spec.names, "pass_parameters": merged, "precision": precision or spec.precision}
