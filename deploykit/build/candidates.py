"""One candidate of a target, start to finish: its passes, the export, the op check against the target, the
measurement, and the gates."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from rich.markup import escape

from deploykit.backends.base import Backend
from deploykit.build.session import BuildSession, Measured
from deploykit.compatibility import Compatibility, check_compatibility
from deploykit.latency_model import Architecture, architecture_of
from deploykit.planner import Candidate, Plan
from deploykit.profiling.base import ProfileRunner
from deploykit.targets import Target


@dataclass
class TriedCandidate:
    """One candidate tried for a target: its measurements and gate verdicts."""

    candidate: Candidate
    measured: Measured
    compatibility: Compatibility | None  # None when the target sets no op limits or the backend cannot list ops
    accuracy_drop: float | None
    checks: list[dict]
    passes: list[dict]  # what each training-time pass did
    architecture: Architecture | None  # the encoder that was exported (None: an ONNX input)
    predicted_p50_ms: float | None = None  # the latency model's prediction before it was built

    @property
    def label(self) -> str:
        return self.candidate.label

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
            "recipe": self.candidate.recipe_text,
            "architecture": self.architecture.as_dict() if self.architecture else None,
            "latency_ms_p50": profile["latency_ms"]["p50"],
            "predicted_latency_ms_p50": self.predicted_p50_ms,
            "latency_ms": profile["latency_ms"],
            "peak_rss_mb": profile["peak_rss_mb"],
            "op_profile": profile.get("op_profile"),
            "bytes": sum(path.stat().st_size for path in self.measured.artifact.files),
            "fidelity": quality["fidelity"],
            "accuracy_drop": self.accuracy_drop,
            "fallback_ops": self.compatibility.fallback_ops if self.compatibility else None,
            "checks": self.checks,
        }


def try_candidate(session: BuildSession, backend: Backend, target: Target, plan: Plan, runner: ProfileRunner,
                  candidate: Candidate, folder: Path) -> TriedCandidate:
    """Run the candidate's passes, export, validate and profile it, and check it against the gates."""
    models, recipe = session.models, candidate.recipe
    integer = integer_trace(target, backend, candidate.precision, session)
    saved_model = models.saved_model(session.options.masked_logit if integer else None, recipe,
                                     dynamic_sequence(target, session))
    with session.log.step("export", f"Exporting {candidate.label} {backend.format} for {target.name}"):
        artifact = backend.export(saved_model, candidate.precision, session.export_options(target, recipe), folder)
    compatibility = None
    if target.checks_ops and (ops := backend.graph_ops(artifact.path)) is not None:
        compatibility = check_compatibility(ops, target)
    measured = session.measure(backend, artifact, runner, plan.threads, f"{candidate.label} {backend.name}", recipe)
    original_accuracy = session.reference().accuracy
    accuracy_drop = None
    if measured.quality["accuracy"] is not None and original_accuracy is not None:
        accuracy_drop = round((original_accuracy - measured.quality["accuracy"]) * 100, 4)
    task = session.bundle.task
    cosine = measured.quality["fidelity"]["cosine_mean"] if task == "embedding" else None
    # A classifier evaluated without labels is held to the original's predictions instead.
    agreement = measured.quality["fidelity"]["agreement"] if task == "classification" and original_accuracy is None \
        else None
    checks = plan.gates.checks(accuracy_drop, cosine, compatibility.fallback_ops if compatibility else None,
                               measured.profile["latency_ms"]["p50"], agreement)
    for check in checks:
        if not check["passed"]:
            session.log.info(f"[red]✗ {escape(candidate.label)}: gate {check['name']}: {check['value']:.4g} "
                             f"misses the limit {check['limit']}[/]")
    predicted = plan.predictions.get(candidate.label)
    return TriedCandidate(candidate, measured, compatibility, accuracy_drop, checks, models.pass_results(recipe),
                          architecture_of(models.bundle(recipe).backbone), predicted[0] if predicted else None)


def integer_trace(target: Target, backend: Backend, precision: str, session: BuildSession) -> bool:
    """Whether a candidate is exported from the integer-capable trace (bounded mask, scaled residual stream)."""
    if session.bundle.onnx_source is not None:  # an ONNX graph is exported as given
        return False
    return target.integer_only or precision in backend.scaled_stream_precisions


def dynamic_sequence(target: Target, session: BuildSession) -> bool:
    """Whether the target's artifact gets a dynamic sequence axis (an ONNX input stays as given: static)."""
    return target.sequence_range is not None and session.bundle.onnx_source is None
