"""Runs builds: load model and data once, then per target export, validate, profile and report.

Each target's output is assembled in a hidden staging folder beside the final one
and renamed into place only when complete, so a failed build leaves no
half-written target folder. A build that misses a quality gate is complete: its
folder is written and its result says `passed=False` (the CLI exits with 3).
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import tempfile
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.markup import escape

from deploykit.backends.base import (
    DEFAULT_CONVERTER_TIMEOUT_S, Backend, ExportedArtifact, ExportOptions, Inputs, available_runtimes, get_backend,
)
from deploykit.compatibility import Compatibility, check_compatibility
from deploykit.compilers.base import CompileRequest, get_compiler
from deploykit.data import DEFAULT_DATA, DataSplit, TextDataset, choose_sequence_length, load_dataset, split_dataset
from deploykit.errors import DeployKitError
from deploykit.evaluate import accuracy, classification_fidelity, embedding_fidelity, label_ids, run_examples
from deploykit.models import ModelBundle, integer_graph, load_model
from deploykit.onnx_model import run_graph, write_static_graph
from deploykit.output_folder import check_output, new_staging, replace_folder
from deploykit.passes.base import Pass, PassContext, get_pass, pass_class
from deploykit.passes.recipe import read_recipe
from deploykit.planner import (
    BASELINE_PRECISION, Candidate, Gates, Plan, Recipe, candidate_precisions, check_runner, make_plan,
    plan_candidates,
)
from deploykit.profiling.local import ProfileSettings, profile_artifact
from deploykit.progress import StepLog
from deploykit.residual_scaling import find_scales, scaled_residual_stream
from deploykit.report.assemble import assemble_report
from deploykit.report.manifest import write_manifest
from deploykit.report.markdown import render_markdown
from deploykit.targets import Target, resolve_targets

DEFAULT_MODEL = "minilm-l6"


@dataclass(frozen=True)
class BuildOptions:
    """Every knob of a build; the defaults are what `deploykit build` does without flags."""

    out: Path = Path("dist")
    precision: str | None = None  # None: the target's preferred precision
    sequence_length: int | None = None  # None: chosen from the data
    sequence_length_percentile: float = 99.0
    max_accuracy_drop: float | None = None  # None: the target's budget
    min_cosine: float | None = None  # None: the target's budget
    min_agreement: float | None = None  # classifiers without labels; None: the target's budget
    max_latency_ms: float | None = None  # p50 gate; None: the target's budget (usually none)
    calibration_samples: int = 300
    evaluation_samples: int = 500
    profile: ProfileSettings = ProfileSettings()
    seed: int = 0
    masked_logit: float = -30.0  # padded attention positions in integer-only graphs; see bounded_attention_mask
    allow_fallback: bool = False  # report ops that would leave the accelerator, but do not fail the build on them
    max_residual_scale: float = 8.0  # integer graphs: largest per-channel divisor of the residual stream (1 = off)
    # Percentile-calibrated activation ranges (TensorRT Q/DQ): TensorRT's own calibrators default to 99.99 too.
    activation_percentile: float = 99.99
    qat: bool = True  # integer-only targets try quantization-aware training when post-training int8 misses a gate
    pass_parameters: dict = field(default_factory=dict)  # pass name -> parameter overrides, e.g. {"qat": {"steps": 600}}
    recipe: tuple[str, ...] | None = None  # forced passes, in order (None: the planner chooses)
    force: bool = False  # replace OUT/<target> even when deploykit did not write it
    converter_timeout_s: float = DEFAULT_CONVERTER_TIMEOUT_S  # limit for a converter child process (tf2onnx)


class View:
    """Attribute access over a report's nested dicts: `result.metrics.latency_ms.p50`."""

    def __init__(self, data: dict):
        self._data = data

    def __getattr__(self, name: str):
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(name) from None
        return View(value) if isinstance(value, dict) else value

    def __repr__(self) -> str:
        return f"View({self._data!r})"


@dataclass
class BuildResult:
    """One target's outcome: where its files are and what report.json says."""

    target: str
    folder: Path
    report: dict

    @property
    def passed(self) -> bool:
        return self.report["gates"]["passed"]

    @property
    def artifact(self) -> View:
        return View({**self.report["artifact"], "path": self.folder / self.report["artifact"]["path"]})

    @property
    def metrics(self) -> View:
        return View(self.report["metrics"])


@dataclass
class _Reference:
    """What the original Keras model does on the evaluation samples at one sequence length."""

    outputs: np.ndarray
    accuracy: float | None
    label_ids: np.ndarray | None  # evaluation labels as output indices (classifiers with labels)
    label_mapping: str | None  # how labels were mapped to indices, for the report


@dataclass
class _Measured:
    """An exported model with its validation and profiling results."""

    artifact: ExportedArtifact
    quality: dict
    profile: dict


@dataclass
class _Candidate:
    """One precision tried for a target: its measurements and gate verdicts."""

    measured: _Measured
    compatibility: Compatibility | None  # None when the target sets no op limits or the backend cannot list ops
    accuracy_drop: float | None
    checks: list[dict]
    label: str  # passes + precision, e.g. "qat + int8"
    passes: list[dict]  # what each training-time pass did
    bundle: ModelBundle  # the model exported (its tokenizer builds the inputs)

    @property
    def passed(self) -> bool:
        return all(check["passed"] for check in self.checks)

    def move_to(self, folder: Path) -> None:
        """Move the artifact's files into the target folder and point the record at them."""
        artifact = self.measured.artifact
        moved = [Path(shutil.move(str(path), str(folder / path.name))) for path in artifact.files]
        self.measured.artifact = replace(artifact, path=folder / artifact.path.name, files=moved)

    def summary(self) -> dict:
        """The candidate's footprint in the report: what it cost and what it kept."""
        quality, profile = self.measured.quality, self.measured.profile
        return {
            "candidate": self.label,
            "precision": self.measured.artifact.precision,
            "passes": self.passes,
            "passed": self.passed,
            "latency_ms_p50": profile["latency_ms"]["p50"],
            "bytes": sum(path.stat().st_size for path in self.measured.artifact.files),
            "fidelity": quality["fidelity"],
            "accuracy_drop": self.accuracy_drop,
            "fallback_ops": self.compatibility.fallback_ops if self.compatibility else None,
            "checks": self.checks,
        }


@dataclass
class BuildSession:
    """Shares the model, data, reference outputs and fp32 baselines between the targets of one build."""

    bundle: ModelBundle
    split: DataSplit
    sequence_length: int
    sequence_length_reason: str
    options: BuildOptions
    log: StepLog
    workdir: Path
    _reference: _Reference | None = None
    _saved_models: dict = field(default_factory=dict)
    _baselines: dict = field(default_factory=dict)
    _encoded: dict = field(default_factory=dict)
    _calibration: dict = field(default_factory=dict)
    _pass_results: dict = field(default_factory=dict)
    _residual: dict = field(default_factory=dict)  # id(bundle) -> (scales, scaled channel count)
    _derived: dict = field(default_factory=dict)  # passes -> the model they produced
    _structural: dict = field(default_factory=dict)  # architecture-changing passes -> (model, their records)
    _teacher_outputs: np.ndarray | None = None  # the original model's outputs on the training texts

    def encoded(self, which: str, bundle: ModelBundle | None = None) -> Inputs:
        """A split's texts as model inputs, with `bundle`'s tokenizer (default: the original's)."""
        bundle = bundle or self.bundle
        key = (which, id(bundle.tokenizer))
        if key not in self._encoded:
            dataset = getattr(self.split, which)
            self._encoded[key] = bundle.encode(dataset.texts, self.sequence_length)
        return self._encoded[key]

    def reference(self) -> _Reference:
        if self._reference is None:
            with self.log.step("reference", "Running the original model on the evaluation samples"):
                if self.bundle.onnx_source is not None:
                    outputs = run_graph(self.saved_model(), self.encoded("evaluation"))
                else:
                    outputs = self.bundle.predict(self.encoded("evaluation"))
                ids, mapping = None, None
                labels = self.split.evaluation.labels
                if self.bundle.task == "classification" and labels is not None:
                    ids, mapping = label_ids(labels, self.bundle.class_names, outputs.shape[-1])
                original_accuracy = accuracy(outputs, ids) if ids is not None else None
            self._reference = _Reference(outputs, original_accuracy, ids, mapping)
        return self._reference

    def saved_model(self, masked_logit: float | None = None, recipe: Recipe = (), dynamic: bool = False) -> Path:
        """The traced graph, once per masked-logit setting (None: the framework's own graph), recipe and
        shape (`dynamic`: any sequence length, for targets with a `sequence_range`)."""
        if self.bundle.onnx_source is not None:  # ONNX input: the static-shape graph is every exporter's source
            if "onnx" not in self._saved_models:
                with self.log.step("saved_model", "Fixing the ONNX model's inputs to [1, sequence length]"):
                    self._saved_models["onnx"] = write_static_graph(
                        self.bundle.onnx_source, self.sequence_length, self.workdir / "source.onnx")
            return self._saved_models["onnx"]
        key = (masked_logit, recipe, dynamic)
        length = None if dynamic else self.sequence_length
        if key not in self._saved_models:
            folder = self.workdir / f"saved_model_{len(self._saved_models)}"
            if recipe:
                self._pass_results[recipe] = self._run_passes(recipe, masked_logit, folder, length)
            else:
                how = "" if masked_logit is None else " (integer-capable: bounded mask, scaled residual stream)"
                how += ", dynamic sequence axis" if dynamic else ""
                with self._graph_context(masked_logit, self.bundle), \
                        self.log.step("saved_model", f"Tracing the model to a SavedModel{how}"):
                    self.bundle.write_saved_model(folder, length)
            self._saved_models[key] = folder
        return self._saved_models[key]

    def candidate_bundle(self, recipe: Recipe) -> ModelBundle:
        """The model a recipe produced (the original when no pass changed the architecture)."""
        return self._derived.get(recipe, self.bundle)

    def pass_results(self, recipe: Recipe) -> list[dict]:
        """What each pass of a recipe did (empty before it ran)."""
        return self._pass_results.get(recipe, [])

    def _graph_context(self, masked_logit: float | None, bundle: ModelBundle) -> ExitStack:
        """How the graph is traced: as the framework does, or integer-capable (masked_logit set)."""
        stack = ExitStack()
        if masked_logit is not None:
            stack.enter_context(integer_graph(masked_logit))
            scales = self.residual_scales(bundle)
            if scales is not None:
                stack.enter_context(scaled_residual_stream(bundle, scales))
        return stack

    def residual_scales(self, bundle: ModelBundle) -> np.ndarray | None:
        """Per-channel scales of the residual stream for integer graphs (found once per model)."""
        key = id(bundle)
        if key not in self._residual:
            limit = self.options.max_residual_scale
            with self.log.step("residual_scales", "Measuring residual-stream outlier channels on calibration samples"):
                scales = find_scales(bundle, self.sequence_length, self.calibration_samples(bundle)[:64], limit)
            self._residual[key] = (scales, int((scales > 1).sum()) if scales is not None else 0)
        return self._residual[key][0]

    def integer_graph_facts(self, bundle: ModelBundle) -> dict:
        """How integer-only graphs were traced, for the report."""
        return {
            "masked_attention_logit": self.options.masked_logit,
            "layer_norm": "mean, SUB, MUL, RSQRT (integer-capable ops)",
            "max_residual_scale": self.options.max_residual_scale,
            "scaled_residual_channels": self._residual.get(id(bundle), (None, 0))[1],
        }

    def _run_passes(self, recipe: Recipe, masked_logit: float | None, folder: Path, length: int | None) -> list[dict]:
        """Apply each pass in order, measure the model after each, and trace the result.

        Architecture-changing passes return a new model and leave the original alone;
        their result is shared by every target of the build. An in-place pass (qat,
        always last) trains inside the export's graph context, and the original weights
        are put back afterwards.
        """
        (last_name, last_parameters), last = recipe[-1], pass_class(recipe[-1][0])
        structural = recipe[:-1] if last.must_be_last else recipe
        bundle, results = self._structural_passes(structural)
        weights = bundle.deployment_model(self.sequence_length).weights  # shared with other recipes: restored below
        original = [variable.numpy() for variable in weights]
        try:
            with self._graph_context(masked_logit, bundle):
                tracing = None
                if last.must_be_last:
                    chosen = get_pass(last_name, **dict(last_parameters))
                    results = results + [self._measured_pass(chosen, bundle)[1]]
                    tracing = chosen.export_context()
                names = " + ".join(name for name, _ in recipe)
                with self.log.step("saved_model", f"Tracing the model after {names} to a SavedModel"):
                    with tracing or nullcontext():
                        bundle.write_saved_model(folder, length)
        finally:
            for variable, value in zip(weights, original):
                variable.assign(value)
        self._derived[recipe] = bundle
        return results

    def _structural_passes(self, recipe: Recipe) -> tuple[ModelBundle, list[dict]]:
        """Run architecture-changing passes in order, once per recipe prefix for the whole build."""
        if not recipe:
            return self.bundle, []
        if recipe not in self._structural:
            bundle, results = self._structural_passes(recipe[:-1])
            name, parameters = recipe[-1]
            bundle, record = self._measured_pass(get_pass(name, **dict(parameters)), bundle)
            self._structural[recipe] = (bundle, results + [record])
        return self._structural[recipe]

    def _measured_pass(self, chosen: Pass, bundle: ModelBundle) -> tuple[ModelBundle, dict]:
        """Apply one pass and measure the Keras model it leaves against the original."""
        result = chosen.apply(self._pass_context(bundle))
        bundle = result.bundle or bundle
        record = result.as_dict()
        with self.log.step(f"{chosen.name}_measure", f"Measuring the model after {chosen.name} on the evaluation texts"):
            record["quality_after"] = self.quality(bundle.predict(self.encoded("evaluation", bundle)))
        return bundle, record

    def _pass_context(self, bundle: ModelBundle) -> PassContext:
        """The training texts (encoded for `bundle`), what the original outputs on them, their labels if any."""
        if self._teacher_outputs is None:
            with self.log.step("teacher", f"Running the original model on {len(self.split.training)} training texts"):
                self._teacher_outputs = self.bundle.predict(self.encoded("training"))
        teacher = self._teacher_outputs
        ids = None
        if self.bundle.task == "classification" and self.split.training.labels is not None:
            ids, _ = label_ids(self.split.training.labels, self.bundle.class_names, teacher.shape[-1])
        return PassContext(
            bundle=bundle, sequence_length=self.sequence_length, train_texts=self.split.training.texts,
            train_inputs=self.encoded("training", bundle), teacher_outputs=teacher,
            teacher=self.bundle, label_ids=ids, calibration=self.calibration_samples(bundle),
            log=self.log, seed=self.options.seed,
        )

    def quality(self, outputs: np.ndarray) -> dict:
        """Fidelity against the original and, with labels, accuracy."""
        reference = self.reference()
        if self.bundle.task == "embedding":
            fidelity = embedding_fidelity(reference.outputs, outputs)
        else:
            fidelity = classification_fidelity(reference.outputs, outputs)
        ids = reference.label_ids
        return {"fidelity": fidelity, "accuracy": accuracy(outputs, ids) if ids is not None else None}

    def validate(self, backend: Backend, artifact: ExportedArtifact, threads: int, bundle: ModelBundle) -> dict:
        """Run the artifact on every evaluation sample; the runtime is released on return."""
        runner = backend.load(artifact.path, threads, artifact.runtime_config)
        return self.quality(run_examples(runner, self.encoded("evaluation", bundle)))

    def measure(self, backend: Backend, artifact: ExportedArtifact, threads: int, label: str,
                bundle: ModelBundle | None = None) -> _Measured:
        """Validate and profile an artifact; `bundle` says which tokenizer builds its inputs."""
        bundle = bundle or self.bundle
        with self.log.step(f"validate_{label}", f"Validating the {label} artifact on {len(self.split.evaluation)} samples"):
            quality = self.validate(backend, artifact, threads, bundle)
        # Release the in-process runtime's worker threads before timing another process.
        gc.collect()
        sample = {name: values[:1] for name, values in self.encoded("evaluation", bundle).items()}
        runs = self.options.profile.runs
        with self.log.step(f"profile_{label}", f"Profiling the {label} artifact ({runs} runs, {threads} threads)"):
            profile = profile_artifact(
                backend.name, artifact.path, artifact.runtime_config, sample, threads, self.options.profile
            )
        return _Measured(artifact, quality, profile)

    def calibration_samples(self, bundle: ModelBundle | None = None) -> list[Inputs]:
        """Batch-1 calibration examples for `bundle`'s tokenizer (default: the original's)."""
        calibration = self.encoded("calibration", bundle)
        key = id(calibration)
        if key not in self._calibration:
            self._calibration[key] = [
                {name: values[i:i + 1] for name, values in calibration.items()} for i in range(len(self.split.calibration))
            ]
        return self._calibration[key]

    def export_options(self, target: Target, bundle: ModelBundle | None = None) -> ExportOptions:
        return ExportOptions(calibration=self.calibration_samples(bundle), integer_only=target.integer_only,
                             integer_io=target.integer_io, activation_percentile=self.options.activation_percentile,
                             converter_timeout_s=self.options.converter_timeout_s)

    def baseline(self, backend: Backend, target: Target, threads: int) -> _Measured:
        key = (backend.name, threads)
        if key not in self._baselines:
            folder = self.workdir / f"baseline_{backend.name}_{threads}"
            with self.log.step("export_baseline", f"Exporting the fp32 {backend.name} baseline"):
                artifact = backend.export(self.saved_model(), BASELINE_PRECISION, self.export_options(target), folder)
            self._baselines[key] = self.measure(backend, artifact, threads, f"fp32 {backend.name} baseline")
        return self._baselines[key]

    def gates(self, target: Target) -> Gates:
        budgets = target.budgets
        return Gates(
            max_accuracy_drop=_first_set(self.options.max_accuracy_drop, budgets.max_accuracy_drop),
            min_cosine=_first_set(self.options.min_cosine, budgets.min_cosine),
            min_agreement=_first_set(self.options.min_agreement, budgets.min_agreement),
            allow_fallback=self.options.allow_fallback,
            max_latency_ms=self.options.max_latency_ms if self.options.max_latency_ms is not None
            else budgets.max_latency_ms,
        )

    def plan(self, target: Target) -> tuple[Backend, Plan]:
        backend = get_backend(target.runtime)
        gates = self.gates(target)
        keras = self.bundle.onnx_source is None
        if not keras:
            check_reads_onnx(target, backend)
            if self.options.recipe:
                self.bundle.check_keras("--recipe " + ",".join(self.options.recipe))
        candidates = plan_candidates(target, backend, self.options.precision, self.options.qat and keras,
                                     self.options.recipe, self.options.pass_parameters,
                                     latency_budget=gates.max_latency_ms is not None and keras)
        if any(pass_class(name).rebuilds_model for candidate in candidates for name in candidate.passes):
            self.bundle.check_rebuildable()  # before the first export, not an hour into training
        plan = make_plan(
            target, backend, candidates, self.sequence_length, self.sequence_length_reason,
            len(self.split.calibration), len(self.split.evaluation), gates, self.options.profile,
            self.options.masked_logit, self.options.max_residual_scale,
        )
        if self.dynamic(target):
            low, high = target.sequence_range
            if not low <= self.sequence_length <= high or high > self.bundle.max_sequence_length:
                raise DeployKitError(
                    f"target {target.name!r} accepts sequences of {low}..{high} tokens (sequence_range) but the build "
                    f"uses {self.sequence_length} and the model at most {self.bundle.max_sequence_length}; pass "
                    "--sequence-length within the range or fix the range."
                )
            plan.steps[1]["sequence_axis"] = f"dynamic, {low}..{high} tokens (optimum {self.sequence_length})"
        return backend, plan

    def candidate(self, backend: Backend, target: Target, plan: Plan, candidate: Candidate, folder: Path) -> _Candidate:
        """Run the candidate's passes, export, validate and profile it, and check it against the gates."""
        precision = candidate.precision
        integer = _integer_trace(target, backend, precision, self.bundle)
        saved_model = self.saved_model(self.options.masked_logit if integer else None, candidate.recipe,
                                       self.dynamic(target))
        bundle = self.candidate_bundle(candidate.recipe)
        with self.log.step("export", f"Exporting {candidate.label} {backend.format} for {target.name}"):
            artifact = backend.export(saved_model, precision, self.export_options(target, bundle), folder)
        compatibility = None
        if target.checks_ops and (ops := backend.graph_ops(artifact.path)) is not None:
            compatibility = check_compatibility(ops, target)
        measured = self.measure(backend, artifact, plan.threads, f"{candidate.label} {backend.name}", bundle)
        original_accuracy = self.reference().accuracy
        accuracy_drop = None
        if measured.quality["accuracy"] is not None and original_accuracy is not None:
            accuracy_drop = round((original_accuracy - measured.quality["accuracy"]) * 100, 4)
        cosine = measured.quality["fidelity"]["cosine_mean"] if self.bundle.task == "embedding" else None
        # A classifier evaluated without labels is held to the original's predictions instead.
        unlabelled = self.bundle.task == "classification" and original_accuracy is None
        agreement = measured.quality["fidelity"]["agreement"] if unlabelled else None
        checks = plan.gates.checks(accuracy_drop, cosine, compatibility.fallback_ops if compatibility else None,
                                   measured.profile["latency_ms"]["p50"], agreement)
        for check in checks:
            if not check["passed"]:
                self.log.info(f"[red]✗ {escape(candidate.label)}: gate {check['name']}: {check['value']:.4g} "
                              f"misses the limit {check['limit']}[/]")
        passes = self.pass_results(candidate.recipe)
        return _Candidate(measured, compatibility, accuracy_drop, checks, candidate.label, passes, bundle)

    def dynamic(self, target: Target) -> bool:
        """Whether the target's artifact gets a dynamic sequence axis (an ONNX input stays as given: static)."""
        return target.sequence_range is not None and self.bundle.onnx_source is None

    def device_compile(self, target: Target, chosen: _Candidate, folder: Path) -> dict | None:
        """Run the target's device toolchain on the shipped artifact, or record why it could not run here."""
        if target.compiler is None:
            return None
        compiler = get_compiler(target.compiler)
        sparse = any(record["pass"] == "prune" and record["parameters"].get("pattern") == "2:4"
                     and record["parameters"].get("sparsity", 0) > 0 for record in chosen.passes)
        request = CompileRequest(
            artifact=chosen.measured.artifact, folder=folder, sequence_length=self.sequence_length,
            input_names=tuple(self.encoded("evaluation", chosen.bundle)), sparse_weights=sparse, log=self.log,
            sequence_range=target.sequence_range if self.dynamic(target) else None,
        )
        missing = compiler.missing()
        verb = "Running" if missing is None else "Preparing (toolchain missing)"
        with self.log.step("device_compile", f"{verb} {compiler.name} for {target.name}"):
            result = compiler.compile(request)
        colour = {"compiled": "green", "not run": "yellow", "failed": "red"}[result.status]
        self.log.info(f"[{colour}]{compiler.name}: {result.status}[/] — {escape(result.reason)}")
        return result.as_dict(folder)

    def build_target(self, target: Target, backend: Backend, plan: Plan) -> BuildResult:
        self.log.info(f"\n[bold]Plan for {escape(target.name)}[/] ({escape(target.device)}):")
        for line in plan.lines():
            self.log.info(f"  {escape(line)}")
        timings_before = dict(self.log.seconds)
        out = self.options.out
        staging = new_staging(out, target.name)
        try:
            tried = []
            for number, candidate in enumerate(plan.candidates):  # fastest first; keep the first passing every gate
                chosen = self.candidate(backend, target, plan, candidate, self.workdir / f"{target.name}-{number}")
                tried.append(chosen)
                if chosen.passed:
                    break
            else:  # every candidate missed: ship the one missing the fewest gates (the fastest of those)
                chosen = min(tried, key=lambda candidate: sum(not check["passed"] for check in candidate.checks))
            chosen.move_to(staging)
            baseline = self.baseline(backend, target, plan.threads)
            chosen.bundle.write_tokenizer(staging, self.sequence_length)
            device_compile = self.device_compile(target, chosen, staging)
            report = assemble_report(
                target=target, plan=plan, bundle=self.bundle, split=self.split, folder=staging,
                chosen=chosen, tried=tried, baseline=baseline, original_accuracy=self.reference().accuracy,
                label_mapping=self.reference().label_mapping,
                timings=_timings_since(timings_before, self.log.seconds),
                integer_graph=self.integer_graph_facts(chosen.bundle)
                if _integer_trace(target, backend, chosen.measured.artifact.precision, self.bundle) else None,
                device_compile=device_compile,
            )
            (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            (staging / "report.md").write_text(render_markdown(report))
            write_manifest(staging)
            final = out / target.name
            replace_folder(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return BuildResult(target.name, final, report)


def check_reads_onnx(target: Target, backend: Backend) -> None:
    """ONNX input has no Keras graph to trace: only exporters that convert ONNX themselves can take it."""
    if not backend.reads_onnx:
        readers = ", ".join(sorted(name for name in available_runtimes() if get_backend(name).reads_onnx))
        raise DeployKitError(
            f"target {target.name!r} exports through {backend.name}, which needs a Keras or TensorFlow model; "
            f"ONNX input builds for targets on {readers} (e.g. intel-cpu, nvidia-gpu)."
        )


def _integer_trace(target: Target, backend: Backend, precision: str, bundle: ModelBundle) -> bool:
    """Whether a candidate is exported from the integer-capable trace (bounded mask, scaled residual stream)."""
    if bundle.onnx_source is not None:  # an ONNX graph is exported as given
        return False
    return target.integer_only or precision in backend.scaled_stream_precisions


def _timings_since(before: dict, now: dict) -> dict:
    """Seconds spent per step since `before`: this target's share of a shared StepLog."""
    spent = {key: round(value - before.get(key, 0.0), 2) for key, value in now.items()}
    return {key: value for key, value in spent.items() if value > 0}


def _first_set(*values):
    return next(v for v in values if v is not None)


def prepare_session(
    model: str | Path | None,
    data: str | Path | None,
    eval_data: str | Path | None,
    options: BuildOptions,
    log: StepLog,
    workdir: Path,
    task: str | None = None,
    tokenizer: str | Path | None = None,
) -> BuildSession:
    """Load data and model, split, and choose the sequence length, failing early on bad input."""
    dataset = load_dataset(data or DEFAULT_DATA)
    if data is None and model is not None:
        # The bundled labels belong to the bundled topics, not to the user's classes.
        dataset = TextDataset(dataset.texts, None, dataset.source)
        log.info("No --data given: calibrating and evaluating on the bundled sentences, without their labels.")
    evaluation = load_dataset(eval_data) if eval_data else None
    with log.step("load_model", f"Loading model {model or DEFAULT_MODEL}"):
        bundle = load_model(model or DEFAULT_MODEL, task=task, tokenizer=tokenizer)
    split = split_dataset(dataset, evaluation, options.calibration_samples, options.evaluation_samples, options.seed)
    if options.sequence_length is not None:
        bundle.check_sequence_length(options.sequence_length)
        length, reason = options.sequence_length, "--sequence-length"
    else:
        texts = dataset.texts + (evaluation.texts if evaluation else [])
        lengths = bundle.token_lengths(texts)
        length = choose_sequence_length(lengths, bundle.max_sequence_length, options.sequence_length_percentile)
        reason = (
            f"p{options.sequence_length_percentile:g} of {len(texts)} token lengths "
            f"({np.percentile(lengths, options.sequence_length_percentile):.0f}) rounded up to a multiple of 8, "
            f"capped at {bundle.max_sequence_length}"
        )
    return BuildSession(bundle, split, length, reason, options, log, workdir)


def build_targets(
    model: str | Path | None = None,
    targets: str = "intel-cpu",
    data: str | Path | None = None,
    eval_data: str | Path | None = None,
    options: BuildOptions = BuildOptions(),
    task: str | None = None,
    tokenizer: str | Path | None = None,
    log: StepLog | None = None,
) -> list[BuildResult]:
    """Build every target in a comma-separated list ('all' for the whole registry).

    Every option, target, input and output folder is checked before the first export,
    so a multi-target build fails whole or runs whole.
    """
    log = log or StepLog()
    check_options(options)
    resolved = []
    onnx_input = model is not None and str(model).endswith(".onnx")
    for target in resolve_targets(targets):  # fail before any work when a named target cannot be built
        try:
            backend = get_backend(target.runtime)
            check_runner(target)
            if onnx_input:
                check_reads_onnx(target, backend)
            candidate_precisions(target, backend, options.precision)
        except DeployKitError as error:
            if targets.strip() != "all":
                raise
            log.info(f"[yellow]Skipping {target.name}:[/] {escape(str(error))}")
            continue
        resolved.append(target)
    if not resolved:
        raise DeployKitError(f"none of the targets in {targets!r} can be built; see the messages above.")
    check_output(options.out, [target.name for target in resolved], options.force)
    out_existed = options.out.exists()
    try:
        with tempfile.TemporaryDirectory(prefix="deploykit-build-") as workdir:
            session = prepare_session(model, data, eval_data, options, log, Path(workdir), task, tokenizer)
            log.info(escape(
                f"Model: {session.bundle.source} ({session.bundle.task}); data: {len(session.split.calibration)} "
                f"calibration, {len(session.split.evaluation)} evaluation samples; sequence length "
                f"{session.sequence_length} ({session.sequence_length_reason})."
            ))
            plans = [(target, *session.plan(target)) for target in resolved]  # every target's settings
            session.reference()  # labels meet the model's classes here, before the first export
            return [session.build_target(target, backend, plan) for target, backend, plan in plans]
    except BaseException:
        if not out_existed and options.out.is_dir() and not any(options.out.iterdir()):
            options.out.rmdir()
        raise


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
        ("masked logit", options.masked_logit, lambda v: v < 0, "below 0"),
        ("max residual scale", options.max_residual_scale, lambda v: v >= 1, "at least 1"),
        ("converter timeout", options.converter_timeout_s, lambda v: v > 0, "above 0 s"),
        ("runs", profile.runs, lambda v: v >= 1, "at least 1"),
        ("warmup", profile.warmup, lambda v: v >= 0, "0 or more"),
        ("threads", profile.threads, lambda v: v >= 1, "at least 1"),
        ("profiling timeout", profile.timeout_s, lambda v: v > 0, "above 0 s"),
    ]
    for name, value, accepted, expected in rules:
        if value is not None and (not math.isfinite(value) or not accepted(value)):
            raise DeployKitError(f"{name} must be {expected}, got {value}.")


def forced_recipe(text: str, pass_parameters: dict, precision: str | None) -> dict:
    """BuildOptions fields for a forced recipe: the shorthand, a recipe file or a build's report.json.

    The recipe's parameters override `pass_parameters`; a recipe file's precision applies unless one is given.
    """
    spec = read_recipe(text)
    merged = {**pass_parameters, **{name: {**pass_parameters.get(name, {}), **spec.parameters[name]}
                                    for name in spec.names}}
    return {"recipe": spec.names, "pass_parameters": merged, "precision": precision or spec.precision}


def build(
    model: str | Path | None = None,
    target: str = "intel-cpu",
    data: str | Path | None = None,
    **kwargs,
) -> BuildResult:
    """Build one target: `dk.build("./my-bert", target="intel-cpu", data="reviews.jsonl")`.

    Keyword arguments: `eval_data`, `task`, `tokenizer`, `options` (a BuildOptions),
    `log` (a StepLog), or any BuildOptions field (e.g. `precision="fp16"`, `out="dist"`).
    `recipe` also takes the CLI's text: `recipe="distill:layers=3,trim-vocab"`.
    """
    if "," in target or target == "all":
        raise DeployKitError("build() takes one target; use build_targets() for a list or 'all'.")
    fields = BuildOptions.__dataclass_fields__
    option_values = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    if "out" in option_values:
        option_values["out"] = Path(option_values["out"])
    if isinstance(option_values.get("recipe"), str):
        option_values.update(forced_recipe(option_values["recipe"], option_values.get("pass_parameters", {}),
                                           option_values.get("precision")))
    options = kwargs.pop("options", None) or BuildOptions(**option_values)
    return build_targets(model, target, data, options=options, **kwargs)[0]
