"""One candidate of a target, start to finish: its passes, the export, the op check against the target, the
measurement, and the gates. The export (with the model's tokenizer and what each pass did) and the measurement
come from the content-addressed cache when the same inputs were built before."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from rich.markup import escape

from deploykit.backends.base import Backend, ExportedArtifact
from deploykit.pipeline.job import TargetJob
from deploykit.pipeline.mixed import export_mixed, selection_goal
from deploykit.pipeline.session import BuildSession, Measured
from deploykit.cache import digest
from deploykit.graph.compatibility import Compatibility, check_compatibility
from deploykit.latency_model import Architecture, architecture_of
from deploykit.graph.mixed_precision import MIXED
from deploykit.passes.base import get_pass, pass_class
from deploykit.planner import Candidate
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
    tokenizer_files: list[Path]  # vocab.txt and tokenizer.json of the model the recipe produced
    integer_graph: dict | None  # how an integer-capable graph was traced (None: the framework's own graph)
    predicted_p50_ms: float | None = None  # the latency model's prediction before it was built

    @property
    def label(self) -> str:
        return self.candidate.label

    @property
    def passed(self) -> bool:
        return all(check["passed"] for check in self.checks)

    @property
    def inconclusive(self) -> bool:
        """No gate missed, but one could not be decided (a latency whose interval straddles its limit)."""
        return not self.passed and all(check["passed"] or check.get("inconclusive") for check in self.checks)

    def copy_to(self, folder: Path) -> None:
        """Copy the artifact's and tokenizer's files into the target folder and point the record at them."""
        artifact = self.measured.artifact
        copied = [Path(shutil.copy2(path, folder / path.name)) for path in artifact.files]
        for path in self.tokenizer_files:
            shutil.copy2(path, folder / path.name)
        self.measured.artifact = replace(artifact, path=folder / artifact.path.name, files=copied)

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
            "run_queue_wait_share": profile.get("run_queue_wait_share"),  # another process's load while timed
            "peak_rss_mb": profile["peak_rss_mb"],
            "op_profile": profile.get("op_profile"),
            "bytes": sum(path.stat().st_size for path in self.measured.artifact.files),
            "fidelity": quality["fidelity"],
            "accuracy_drop": self.accuracy_drop,
            "fallback_ops": self.compatibility.fallback_ops if self.compatibility else None,
            "checks": self.checks,
        }


def try_candidate(job: TargetJob, candidate: Candidate, folder: Path) -> TriedCandidate:
    """Run the candidate's passes, export, validate and profile it, and check it against the gates."""
    session, backend, target, plan, runner = job.session, job.backend, job.target, job.plan, job.runner
    recipe = candidate.recipe
    exported = export_candidate(job, candidate, folder)
    artifact = exported.artifact
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
    size_mb = sum(path.stat().st_size for path in artifact.files) / 1e6
    latency = {**measured.profile["latency_ms"], "run_queue_wait_share": measured.profile.get("run_queue_wait_share")}
    checks = plan.gates.checks(accuracy_drop, cosine, compatibility.fallback_ops if compatibility else None,
                               latency, agreement, size_mb)
    for check in checks:
        if check.get("inconclusive"):
            session.log.info(f"[yellow]? {escape(candidate.label)}: gate {check['name']} inconclusive: "
                             f"{escape(check['reason'])}[/]")
        elif not check["passed"]:
            session.log.info(f"[red]✗ {escape(candidate.label)}: gate {check['name']}: {check['value']:.4g} "
                             f"misses the limit {check['limit']}[/]")
    predicted = plan.predictions.get(candidate.label)
    return TriedCandidate(candidate, measured, compatibility, accuracy_drop, checks, exported.passes,
                          exported.architecture, exported.tokenizer_files, exported.integer_graph,
                          predicted[0] if predicted else None)


@dataclass
class Exported:
    """A candidate's artifact and what produced it (from this run or from the cache)."""

    artifact: ExportedArtifact
    passes: list[dict]
    architecture: Architecture | None
    tokenizer_files: list[Path]
    integer_graph: dict | None


def export_key(job: TargetJob, candidate: Candidate) -> str:
    """What a candidate's artifact depends on: the session's inputs, the target, the precision, every pass parameter
    (and for "mixed", how it chooses and the fidelity it aims at)."""
    session, backend, target, gates = job.session, job.backend, job.target, job.plan.gates
    resolved = [(name, get_pass(name, **dict(items)).describe()) for name, items in candidate.recipe]
    mixed = None
    if candidate.precision == MIXED:
        mixed = [session.options.mixed.__dict__, selection_goal(session, gates)]
    return digest(session.fingerprint(), "export", backend.name, target.model_dump(), candidate.precision, resolved,
                  mixed, candidate.int4_embeddings)


def export_candidate(job: TargetJob, candidate: Candidate, folder: Path) -> Exported:
    """The candidate's artifact: from the cache, or by running its passes and the export (then stored)."""
    session, backend, target, plan, runner = job.session, job.backend, job.target, job.plan, job.runner
    cache, recipe = session.cache, candidate.recipe
    key = export_key(job, candidate) if cache is not None else None
    if key is not None and (entry := cache.get("export", key)) is not None:
        meta = entry.meta
        folder.mkdir(parents=True, exist_ok=True)
        files = [Path(shutil.copy2(entry.path(name), folder / name)) for name in meta["files"]]
        (folder / "tokenizer").mkdir(exist_ok=True)
        tokenizer = [Path(shutil.copy2(entry.path(f"tokenizer/{name}"), folder / "tokenizer" / name))
                     for name in meta["tokenizer"]]
        artifact = ExportedArtifact(folder / meta["path"], files, meta["format"], meta["precision"], meta["method"],
                                    meta["runtime_config"], meta["details"])
        # Inputs of a model with other token ids come from its own tokenizer: measure it from the cache, or rebuild.
        if not any(pass_class(name).changes_token_ids for name in candidate.passes) or session.measurement_cached(
                artifact, runner, plan.threads):
            session.log.info(f"[dim]{escape(candidate.label)}: artifact reused from the cache ({key[:12]})[/]")
            architecture = Architecture(**meta["architecture"]) if meta["architecture"] else None
            return Exported(artifact, meta["passes"], architecture, tokenizer, meta["integer_graph"])
    models = session.models
    integer = integer_trace(target, backend, candidate.precision, session)
    saved_model = models.saved_model(session.options.masked_logit if integer else None, recipe,
                                     dynamic_sequence(target, session))
    if candidate.precision == MIXED:
        artifact = export_mixed(session, backend, target, plan.gates, saved_model, recipe, folder)
    else:
        with session.log.step("export", f"Exporting {candidate.label} {backend.format} for {target.name}"):
            artifact = backend.export(saved_model, candidate.precision,
                                      session.export_options(target, recipe, candidate.int4_embeddings), folder)
    tokenizer_folder = folder / "tokenizer"
    tokenizer = models.bundle(recipe).write_tokenizer(tokenizer_folder, session.sequence_length)
    exported = Exported(artifact, models.pass_results(recipe), architecture_of(models.bundle(recipe).backbone),
                        tokenizer, models.integer_graph_facts(recipe) if integer else None)
    if key is not None:
        files = {path.name: path for path in artifact.files}
        files.update({f"tokenizer/{path.name}": path for path in tokenizer})
        cache.put("export", key, files, {
            "files": [path.name for path in artifact.files], "tokenizer": [path.name for path in tokenizer],
            "path": artifact.path.name, "format": artifact.format, "precision": artifact.precision,
            "method": artifact.method, "runtime_config": artifact.runtime_config, "details": artifact.details,
            "passes": exported.passes,
            "architecture": exported.architecture.as_dict() if exported.architecture else None,
            "integer_graph": exported.integer_graph, "candidate": candidate.label})
    return exported


def integer_trace(target: Target, backend: Backend, precision: str, session: BuildSession) -> bool:
    """Whether a candidate is exported from the integer-capable trace (bounded mask, scaled residual stream)."""
    if session.bundle.onnx_source is not None:  # an ONNX graph is exported as given
        return False
    return target.integer_only or precision in backend.scaled_stream_precisions


def dynamic_sequence(target: Target, session: BuildSession) -> bool:
    """Whether the target's artifact gets a dynamic sequence axis (an ONNX input stays as given: static)."""
    return target.sequence_range is not None and session.bundle.onnx_source is None
