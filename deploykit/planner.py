"""Planner: from a target's capabilities and the user's budgets to the ordered steps of a build.

The plan is printed before anything runs and stored in the report, so every
decision (precision, sequence length, gates) is visible and can be overridden.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from deploykit.backends.base import Backend, available_runtimes, get_backend
from deploykit.candidate import Candidate
from deploykit.errors import DeployKitError
from deploykit.passes.base import get_pass, pass_class
from deploykit.passes.recipe import check_order, parse_recipe, recipe
from deploykit.latency_model import Architecture, LatencyModel, architecture_of, misses_budget
from deploykit.profiling.base import ProfileRunner, ProfileSettings
from deploykit.graph.residual_scaling import DEFAULT_MAX_RESIDUAL_SCALE
from deploykit.size_budget import ParameterCounts, size_ladder, skip_too_large, with_reachable_vocabulary
from deploykit.targets import INTEGER_PRECISIONS, Target

if TYPE_CHECKING:
    from deploykit.options import BuildOptions
    from deploykit.models import ModelBundle

BASELINE_PRECISION = "fp32"


@dataclass(frozen=True)
class Gates:
    """Quality gates: the build fails (exit code 3) when the artifact misses one."""

    max_accuracy_drop: float  # percentage points, checked when the data has labels
    min_cosine: float  # mean cosine vs the original, checked for embedding models
    allow_fallback: bool = False  # ops falling back from the accelerator are reported, not failed
    max_latency_ms: float | None = None  # p50 on the profiling host, decided on its interval; None: no gate
    min_agreement: float = 0.99  # share of predictions unchanged, checked for classifiers without labels
    max_size_mb: float | None = None  # artifact bytes / 1e6; None: no size gate

    def checks(self, accuracy_drop: float | None, cosine_mean: float | None,
               fallback_ops: dict[str, int] | None, latency: dict | None = None,
               agreement: float | None = None, size_mb: float | None = None) -> list[dict]:
        """Every gate that applies, with its value, limit and verdict; never passes without a quality check.
        `latency`: the profile's latency summary (p50 and its interval) and `run_queue_wait_share`."""
        checks = []
        if self.max_latency_ms is not None and latency is not None:
            checks.append(latency_check(self.max_latency_ms, latency))
        if self.max_size_mb is not None and size_mb is not None:
            checks.append({"name": "size_mb", "value": round(size_mb, 4), "limit": self.max_size_mb,
                           "passed": size_mb <= self.max_size_mb})
        if fallback_ops is not None:
            count = sum(fallback_ops.values())
            checks.append({"name": "fallback_ops", "value": count, "limit": 0,
                           "passed": count == 0 or self.allow_fallback, "waived": self.allow_fallback})
        if accuracy_drop is not None:
            checks.append({"name": "accuracy_drop", "value": accuracy_drop, "limit": self.max_accuracy_drop,
                           "passed": accuracy_drop <= self.max_accuracy_drop})
        if cosine_mean is not None:
            checks.append({"name": "cosine_mean", "value": cosine_mean, "limit": self.min_cosine,
                           "passed": cosine_mean >= self.min_cosine})
        if agreement is not None:
            checks.append({"name": "agreement", "value": agreement, "limit": self.min_agreement,
                           "passed": agreement >= self.min_agreement})
        if not any(check["name"] in QUALITY_CHECKS for check in checks):
            checks.append({"name": "quality_checked", "value": 0, "limit": 1, "passed": False})
        return checks


QUALITY_CHECKS = ("accuracy_drop", "cosine_mean", "agreement")  # at least one of them decides every build


def latency_check(limit: float, latency: dict) -> dict:
    """The p50 latency gate, decided on the p50's interval: passed when its upper end is within `limit`; missed
    when its lower end is over it even with the time a worker thread waited for a core taken off (another
    process's load only ever slows a run down); otherwise *inconclusive*: the runs' noise, or load on the machine,
    straddles the limit, and deploykit says so instead of passing or failing on it. A runner that gives no
    interval (benchmark_model's summary) is decided on the p50 itself."""
    p50 = latency["p50"]
    low, high = latency.get("p50_interval") or (p50, p50)
    waited = min(max(latency.get("run_queue_wait_share") or 0.0, 0.0), 1.0)
    check = {"name": "latency_ms_p50", "value": p50, "interval": [low, high], "limit": limit, "passed": high <= limit}
    if not check["passed"] and low * (1 - waited) <= limit:
        check["inconclusive"] = True
        check["reason"] = (f"the p50's interval {low:.4g}–{high:.4g} ms"
                           + (f" (a worker thread waited for a core {waited:.0%} of the time)" if waited > 0.005 else "")
                           + f" straddles the {limit:g} ms limit; rerun on a quiet machine or with more --runs")
    return check


@dataclass
class Plan:
    """What a build of one target will do, in order."""

    target: str
    backend: str
    candidates: list[Candidate]  # tried in order until one passes the gates
    sequence_length: int
    threads: int
    gates: Gates
    steps: list[dict] = field(default_factory=list)
    predictions: dict[str, tuple[float, float]] = field(default_factory=dict)  # label -> (p50 ms, relative error)

    def step(self, name: str) -> dict:
        """The plan step called `name` (e.g. "export"), to read or annotate."""
        return next(step for step in self.steps if step["step"] == name)

    def lines(self) -> list[str]:
        """Human-readable steps, one per line."""
        return [f"{number}. {step['step']}: {step_details(step)}" for number, step in enumerate(self.steps, 1)]


def step_details(step: dict) -> str:
    """A plan step's parameters as `key=value, ...` (the step's name left out)."""
    return ", ".join(f"{key}={value}" for key, value in step.items() if key != "step")


def plan_candidates(target: Target, backend: Backend, requested: str | None, qat: bool = True,
                    forced: tuple[str, ...] | None = None, parameters: dict | None = None,
                    latency_budget: bool = False) -> list[Candidate]:
    """The candidates to try, in order: the target's precisions (or the user's one) that this backend produces.

    The build keeps the first candidate that passes the gates, so a target lists its
    precisions fastest first and a miss falls back to the next, more faithful one. On
    integer-only targets, post-training int8 is followed by quantization-aware
    training at int8: slower to build, as fast to run, and it recovers what rounding
    every activation to 8 bits costs; likewise int4-weights is followed by training onto
    the backend's int4 grid where a pass simulates it. With a latency budget, the target's own
    compression recipes (`recipes` in its YAML) follow at its first precision: they
    cost accuracy, so they are tried only when quantization alone is not fast enough.
    A forced recipe (`--recipe`) runs before every precision instead.
    """
    precisions = candidate_precisions(target, backend, requested)
    if forced is not None:
        check_order(forced)
        return [Candidate(precision, recipe(forced, parameters))
                for precision in _paying(forced, precisions, target, backend)]
    candidates = []
    for precision in precisions:
        candidates.append(Candidate(precision))
        if qat and target.integer_only and precision == "int8":
            candidates.append(Candidate(precision, recipe(("qat",), parameters)))
        if qat and precision == "int4-weights" and backend.int4_training_pass is not None:
            candidates.append(Candidate(precision, recipe((backend.int4_training_pass,), parameters)))
    if latency_budget:
        for text in target.recipes:
            names, own = parse_recipe(text)
            merged = {name: {**(parameters or {}).get(name, {}), **own[name]} for name in names}
            candidates.append(Candidate(precisions[0], recipe(names, merged)))
    return candidates


def _paying(passes: tuple[str, ...], precisions: list[str], target: Target, backend: Backend) -> list[str]:
    """The precisions a recipe can pay at: a last pass training for an export's rounding (qat, int4-qat) pays
    only at the precisions it simulates, on the backends whose rounding it is."""
    last = pass_class(passes[-1]) if passes else None
    if last is not None and last.for_backends and backend.name not in last.for_backends:
        raise DeployKitError(
            f"--recipe ends with {last.name}, which trains for the {' or '.join(last.for_backends)} backend's "
            f"rounding, but target {target.name!r} exports through {backend.name}; choose another target or drop "
            f"{last.name}.")
    paying = [precision for precision in precisions if last is None or last.pays_at(precision)]
    if not paying:
        raise DeployKitError(
            f"--recipe ends with {last.name}, which trains for the rounding of {', '.join(last.simulates)}, but "
            f"target {target.name!r} is built at {', '.join(precisions)}; pass --precision {last.simulates[0]} or "
            f"drop {last.name}.")
    return paying


def candidate_precisions(target: Target, backend: Backend, requested: str | None) -> list[str]:
    """The precisions to try, in order: the user's choice alone, or the target's that this backend produces."""
    if requested is not None:
        backend.describe(requested)
        if target.integer_only and requested not in target.precisions:
            raise DeployKitError(
                f"target {target.name!r} runs integer-only graphs in {', '.join(target.precisions)}; "
                f"--precision {requested} cannot run there."
            )
        return [requested]
    candidates = [p for p in target.precisions if p in backend.precisions]
    if candidates:
        return candidates
    raise DeployKitError(
        f"target {target.name!r} lists precisions {target.precisions}, none of which the {backend.name} "
        f"backend produces ({', '.join(backend.precisions)}); fix the target file or pass --precision."
    )


def make_plan(
    target: Target,
    backend: Backend,
    candidates: list[Candidate],
    sequence_length: int,
    sequence_length_reason: str,
    calibration_samples: int,
    evaluation_samples: int,
    gates: Gates,
    profile: ProfileSettings,
    runner: ProfileRunner,
    masked_logit: float,
    max_residual_scale: float = DEFAULT_MAX_RESIDUAL_SCALE,
) -> Plan:
    """The steps of one target's build (post-training: export at a precision, validate, profile)."""
    threads = profile.threads or runner.threads(target)
    first = candidates[0].precision
    export = {
        "step": "export",
        "backend": backend.name,
        "format": backend.format,
        "precision": first,
        "method": backend.describe(first),
        "calibration_samples": calibration_samples if first in INTEGER_PRECISIONS else 0,
    }
    if len(candidates) > 1:
        export["if_gates_fail_try"] = [candidate.label for candidate in candidates[1:]]
    if target.integer_only or first in backend.scaled_stream_precisions:
        export["masked_attention_logit"] = masked_logit
        export["residual_stream"] = f"outlier channels divided by powers of two up to {max_residual_scale:g}"
    passes = []
    for name, items in dict.fromkeys(step for c in candidates for step in c.recipe):
        chosen = get_pass(name, **dict(items))
        users = [c.label for c in candidates if (name, items) in c.recipe]
        warnings = {"warning": "; ".join(notes)} if (notes := chosen.target_warnings(target)) else {}
        passes.append({"step": name, "for_candidates": users, "training_samples": "all but evaluation",
                       **chosen.describe(), **warnings})
    check_ops = []
    if target.checks_ops:
        rules = ["float tensors"] if target.integer_only else []
        rules += ["ops outside the target's op set"] if target.supported_ops is not None or target.unsupported_ops else []
        rules += [f"tensors with more than {target.max_tensor_dims} dimensions > 1"] if target.max_tensor_dims else []
        check_ops = [{"step": "check_ops", "reports": ", ".join(rules),
                      "on_fallback": "report only (--allow-fallback)" if gates.allow_fallback else "fail the build"}]
    steps = [
        {"step": "tokenize", "sequence_length": sequence_length, "chosen_by": sequence_length_reason},
        export,
        *check_ops,
        *passes,
        {"step": "baseline", "backend": backend.name, "precision": BASELINE_PRECISION,
         "method": backend.describe(BASELINE_PRECISION)},
        {
            "step": "validate",
            "evaluation_samples": evaluation_samples,
            "max_accuracy_drop": gates.max_accuracy_drop,
            "min_cosine": gates.min_cosine,
            "min_agreement": gates.min_agreement,
            **({"max_latency_ms": gates.max_latency_ms} if gates.max_latency_ms is not None else {}),
            **({"max_size_mb": gates.max_size_mb} if gates.max_size_mb is not None else {}),
        },
        {"step": "profile", "runner": runner.name, "threads": threads, "runs": profile.runs, "warmup": profile.warmup},
    ]
    return Plan(target.name, backend.name, candidates, sequence_length, threads, gates, steps)


def gates_for(target: Target, options: "BuildOptions") -> Gates:
    """The target's budgets, each overridden by the option the user set."""
    budgets = target.budgets
    return Gates(
        max_accuracy_drop=_first_set(options.max_accuracy_drop, budgets.max_accuracy_drop),
        min_cosine=_first_set(options.min_cosine, budgets.min_cosine),
        min_agreement=_first_set(options.min_agreement, budgets.min_agreement),
        allow_fallback=options.allow_fallback,
        max_latency_ms=_first_set(options.max_latency_ms, budgets.max_latency_ms, None),
        max_size_mb=options.max_size_mb,
    )


def plan_target(target: Target, backend: Backend, runner: ProfileRunner, bundle: "ModelBundle", sequence_length: int,
                sequence_length_reason: str, calibration_samples: int, evaluation_samples: int,
                options: "BuildOptions", latency_model: LatencyModel | None = None, search: dict | None = None) -> Plan:
    """Everything one target's build will do, checked against the model before any work.

    `search`: the search step of a build that searches (its study chooses, not the fixed candidate order).
    """
    gates = gates_for(target, options)
    keras = bundle.onnx_source is None
    if not keras:
        check_reads_onnx(target, backend)
        if options.recipe:
            bundle.check_keras("--recipe " + ",".join(options.recipe))
    candidates = plan_candidates(target, backend, options.precision, options.qat and keras, options.recipe,
                                 options.pass_parameters, latency_budget=gates.max_latency_ms is not None and keras)
    if any(pass_class(name).rebuilds_model for candidate in candidates for name in candidate.passes):
        bundle.check_rebuildable()  # before the first export, not an hour into training
    lossless, ladder = None, 0
    if gates.max_size_mb is not None and keras and options.recipe is None:
        added = size_ladder(candidates, bundle, options.int4.embeddings, options.pass_parameters)
        candidates, ladder = candidates + added, len(added)
        candidates, lossless = with_reachable_vocabulary(candidates, bundle)
    added = candidates[len(candidates) - ladder:]
    prediction = None
    if latency_model is not None:
        prediction = predict_latencies(candidates, latency_model, architecture_of(bundle.backbone), sequence_length,
                                       options.profile.threads or runner.threads(target), gates.max_latency_ms,
                                       backend.executes_as)
        candidates = prediction.kept
    sizes = None
    counts = ParameterCounts.of(bundle, (lossless or {}).get("parameters", 0)) if gates.max_size_mb else None
    if counts is not None:
        sizes = skip_too_large(candidates, counts, gates.max_size_mb)
        candidates = sizes.kept
        if lossless:
            sizes.step["lossless"] = lossless["text"]
        if ladder:
            sizes.step["then_tries"] = [c.label for c in added if c in sizes.kept]
    plan = make_plan(target, backend, candidates, sequence_length, sequence_length_reason, calibration_samples,
                     evaluation_samples, gates, options.profile, runner, options.masked_logit,
                     options.max_residual_scale)
    if prediction is not None:
        plan.predictions = prediction.predictions
        plan.steps.insert(1, prediction.step)
    if sizes is not None and (sizes.step.get("skipped") or sizes.step.get("lossless") or sizes.step.get("then_tries")):
        plan.steps.insert(1, sizes.step)
    if target.sequence_range is not None and keras:
        low, high = target.sequence_range
        if not low <= sequence_length <= high or high > bundle.max_sequence_length:
            raise DeployKitError(
                f"target {target.name!r} accepts sequences of {low}..{high} tokens (sequence_range) but the build "
                f"uses {sequence_length} and the model at most {bundle.max_sequence_length}; pass "
                "--sequence-length within the range or fix the range."
            )
        plan.step("export")["sequence_axis"] = f"dynamic, {low}..{high} tokens (optimum {sequence_length})"
    if search is not None:
        plan.step("export").pop("if_gates_fail_try", None)
        plan.steps.insert(1, search)
    return plan


def chosen_plan(plan: Plan, backend: Backend, precision: str, sequence_length: int, chosen_by: str) -> Plan:
    """A new plan saying what a search's choice ran: its precision, and its sequence length where it differs."""
    chosen = replace(plan, steps=copy.deepcopy(plan.steps), sequence_length=sequence_length)
    if sequence_length != plan.sequence_length:
        chosen.step("tokenize").update(sequence_length=sequence_length, chosen_by=chosen_by)
    chosen.step("export").update(precision=precision, method=backend.describe(precision))
    return chosen


def check_reads_onnx(target: Target, backend: Backend) -> None:
    """ONNX input has no Keras graph to trace: only exporters that convert ONNX themselves can take it."""
    if not backend.reads_onnx:
        readers = ", ".join(sorted(name for name in available_runtimes() if get_backend(name).reads_onnx))
        raise DeployKitError(
            f"target {target.name!r} exports through {backend.name}, which needs a Keras or TensorFlow model; "
            f"ONNX input builds for targets on {readers} (e.g. intel-cpu, nvidia-gpu)."
        )


def _first_set(*values):
    """The first value that is not None (the last one when all are)."""
    return next((value for value in values if value is not None), values[-1])


def predict_candidate(candidate: Candidate, model: LatencyModel, architecture: Architecture | None,
                      sequence_length: int, threads: int, executes_as: dict[str, str] | None = None
                      ) -> tuple[float, float] | None:
    """(p50 ms, relative error) of a candidate from the architecture its passes declare; None when unknown."""
    shape = architecture
    for name, items in candidate.recipe:
        shape = get_pass(name, **dict(items)).architecture_after(shape) if shape else None
    return model.predict(candidate.precision, shape, sequence_length, threads, executes_as)


@dataclass
class Prediction:
    """The latency model's word on a target's candidates: what to try, what each should take, the plan step."""

    kept: list[Candidate]
    predictions: dict[str, tuple[float, float]]  # label -> (p50 ms, relative error)
    step: dict


def predict_latencies(candidates: list[Candidate], model: LatencyModel, architecture: Architecture | None,
                      sequence_length: int, threads: int, budget: float | None,
                      executes_as: dict[str, str] | None = None) -> Prediction:
    """Predict every candidate's p50 from the device's profile, and drop those that cannot meet the latency budget.

    A candidate is skipped only when its prediction misses the budget by more than the
    model's stated error; if every candidate would be skipped, the fastest predicted one
    is still built, so the report shows the measured miss.
    """
    predictions = {}
    for candidate in candidates:
        predicted = predict_candidate(candidate, model, architecture, sequence_length, threads, executes_as)
        if predicted is not None:
            predictions[candidate.label] = predicted
    skipped = [c for c in candidates if misses_budget(predictions.get(c.label), budget)]
    if skipped and len(skipped) == len(candidates):
        skipped.remove(min(skipped, key=lambda c: predictions[c.label][0]))
    step = {"step": "predict_latency", "profile": model.source, "threads": model.threads,
            "predicted_p50_ms": {label: f"{p50:g} (±{error:.0%})" for label, (p50, error) in predictions.items()}
            or "none: the profile has no fit for these precisions at these threads"}
    if skipped:
        step["skipped"] = [f"{c.label}: predicted {predictions[c.label][0]:g} ms, over the {budget:g} ms budget "
                           f"by more than the model's ±{predictions[c.label][1]:.0%}" for c in skipped]
    return Prediction([c for c in candidates if c not in skipped], predictions, step)
