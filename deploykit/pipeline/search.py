"""A build that searches: the build drives the study (`deploykit.pareto_search`) with its own evaluator.

Each trial is a candidate (a precision and a recipe) built, validated on the evaluation
texts and timed by the target's runner, exactly as `build` does. Before any training a
trial is skipped when the device's latency model says it misses `--max-latency-ms` beyond
the model's stated error; during a fine-tune, one whose quality halfway through is
hopeless (`prune_factor` times the gate's allowance) is stopped, and that verdict is
cached, so the same candidate in a rerun stops at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
from rich.markup import escape

from deploykit.backends.base import Backend
from deploykit.pipeline.candidates import TriedCandidate, export_key, try_candidate
from deploykit.pipeline.job import TargetJob
from deploykit.pipeline.output import write_target
from deploykit.pipeline.session import BuildSession
from deploykit.cache import digest
from deploykit.errors import DeployKitError
from deploykit.latency_model import architecture_of, misses_budget
from deploykit.pareto_search.pareto import OBJECTIVES
from deploykit.pareto_search.space import SearchSpace, search_space
from deploykit.pareto_search.study import (Evaluated, Stopped, candidate_id, candidate_of, choose, finished_count,
                                           length_of, open_study, redacted, requeue_interrupted, run_study,
                                           sampler_seed, search_summary, seed_fixed_candidates, states_text,
                                           trial_rows)
from deploykit.planner import Candidate, Gates, candidate_precisions, chosen_plan, plan_candidates, predict_candidate
from deploykit.results import BuildResult
from deploykit.targets import Target

CHECK_AT = 0.5  # share of a fine-tune's steps after which a hopeless trial is stopped


def study_name(session: BuildSession, target: Target) -> str:
    return f"{session.options.search.study}.{target.name}"


def target_space(session: BuildSession, target: Target, backend: Backend) -> SearchSpace:
    """The target's search space: its precisions, the passes that pay there, and the sequence lengths to try."""
    settings, options = session.options.search, session.options
    lengths = (session.sequence_length,)
    if session.token_lengths is not None:  # not when --sequence-length fixed it
        lengths += tuple(sorted(session.length_at(percentile) for percentile in settings.length_percentiles))
    return search_space(target, candidate_precisions(target, backend, options.precision),
                        architecture_of(session.bundle.backbone), session.bundle.onnx_source is None, settings.passes,
                        options.recipe, options.pass_parameters, lengths,
                        tuple(filter(None, [backend.int4_training_pass])) if options.qat else ())


def search_step(session: BuildSession, target: Target, backend: Backend) -> dict:
    """The plan's search step (the planner puts it in place of the fixed candidate order)."""
    settings = session.options.search
    return {"step": "search", "study": study_name(session, target), "trials": settings.trials,
            "prefer": settings.prefer, "objectives": ", ".join(OBJECTIVES), "constraints": "the gates below",
            "prune_factor": settings.prune_factor, **target_space(session, target, backend).describe()}


def search_target(job: TargetJob) -> BuildResult:
    """Run (or resume) the target's study, then ship the preferred Pareto point that passes every gate."""
    session, target, backend = job.session, job.target, job.backend
    settings, log, options = session.options.search, session.log, session.options
    timings_before = dict(log.seconds)
    space = target_space(session, target, backend)
    if settings.storage is None:
        options.out.mkdir(parents=True, exist_ok=True)
    storage_url = settings.storage or f"sqlite:///{(options.out / 'search.db').resolve()}"
    name = study_name(session, target)
    study = open_study(storage_url, name, sampler_seed(options.seed, settings), settings)
    requeued = requeue_interrupted(study)
    if not study.get_trials(deepcopy=False):
        keras = session.bundle.onnx_source is None
        seed_fixed_candidates(study, space, plan_candidates(
            target, backend, options.precision, options.qat and keras, options.recipe, options.pass_parameters,
            latency_budget=keras))
    done = finished_count(study)
    log.info(f"\n[bold]Search for {escape(target.name)}[/] ({escape(target.device)}): study {escape(name)} in "
             f"{escape(redacted(storage_url))}, {done} of {settings.trials} trials done"
             + (f", {requeued} interrupted trial(s) queued again" if requeued else "") + ".")
    log.info(f"  space: {escape(str(space.describe()))}")
    evaluator = TrialBuilder(job)
    run_study(study, space, evaluator, settings.trials, session.sequence_length, target.name, log)
    rows = trial_rows(study)
    chosen_row, front = choose(rows, settings.prefer)
    if chosen_row is None:
        raise DeployKitError(f"search for {target.name}: no trial produced an artifact ({len(rows)} trials: "
                             f"{states_text(rows)}); see the messages above, or widen the space.")
    candidate, length = candidate_of(chosen_row), length_of(chosen_row, session.sequence_length)
    with session.at_length(length):
        chosen = evaluator.built.get(candidate_id(candidate, length))
        if chosen is None:  # built by an earlier run or another worker: from the cache, or built again
            with log.step("search_rebuild",
                          f"Building trial {chosen_row['number']}'s {candidate.label} (from another run)"):
                chosen = try_candidate(job, candidate, session.workdir / f"{target.name}-chosen")
        outcome = StudyOutcome(rows, front, chosen_row, search_summary(name, storage_url, settings, space, rows,
                                                                      front, chosen_row, job.plan.sequence_length))
        return _write_search_target(job, chosen, evaluator.built, timings_before, outcome, settings.prefer)


@dataclass
class StudyOutcome:
    """What a finished study gives the target folder: every trial, the Pareto front, the shipped trial."""

    rows: list[dict]
    front: list[dict]
    chosen_row: dict
    summary: dict  # search.json's header and the report's search section


def _write_search_target(job: TargetJob, chosen: TriedCandidate, built: dict, timings_before: dict,
                         outcome: StudyOutcome, prefer: str) -> BuildResult:
    """The target folder around the chosen trial, at its sequence length, with search.json and the plot beside."""
    session, target = job.session, job.target
    rows, front, chosen_row = outcome.rows, outcome.front, outcome.chosen_row
    candidate = candidate_of(chosen_row)
    plan = chosen_plan(job.plan, job.backend, candidate.precision, session.sequence_length,
                       f"the search (trial {chosen_row['number']})")
    session.log.info(f"  Pareto front of {target.name}: {len(front)} point(s); shipping trial {chosen_row['number']} "
                     f"({escape(candidate.label)}), the best on {prefer}.")
    extra = {}
    search_json = session.workdir / f"{target.name}-search.json"
    search_json.write_text(json.dumps({**outcome.summary, "trials": rows}, indent=2) + "\n")
    extra["search.json"] = search_json
    plot = session.workdir / f"{target.name}-pareto.png"
    from deploykit.pareto_search.plot import plot_front

    plot_front(rows, front, chosen_row, plot, f"{target.name}: {len(rows)} trials")
    extra["pareto.png"] = plot
    tried = [built[key] for key in sorted(built)]
    return write_target(replace(job, plan=plan), chosen, tried or [chosen], timings_before, extra, outcome.summary)


class TrialBuilder:
    """The search's evaluator: skip, stop or build a trial's candidate at its sequence length, as `build` would."""

    def __init__(self, job: TargetJob):
        self.job = job
        self.architecture = architecture_of(job.session.bundle.backbone)
        self.built: dict[str, TriedCandidate] = {}  # candidate_id -> what this run built

    def __call__(self, candidate: Candidate, length: int, number: int) -> Evaluated:
        with self.job.session.at_length(length):
            return self._build(candidate, length, number)

    def _build(self, candidate: Candidate, length: int, number: int) -> Evaluated:
        job = self.job
        session, gates, plan = job.session, job.plan.gates, job.plan
        facts = {}
        predicted = None
        if job.latency_model is not None:
            predicted = predict_candidate(candidate, job.latency_model, self.architecture, session.sequence_length,
                                          plan.threads, job.backend.executes_as)
            if predicted is not None:
                facts["predicted_latency_ms"] = round(predicted[0], 4)
        if misses_budget(predicted, gates.max_latency_ms):
            reason = (f"predicted {predicted[0]:.3g} ms (±{predicted[1]:.0%}), over the {gates.max_latency_ms:g} ms "
                      "budget: skipped before any training")
            session.log.info(f"  [yellow]{escape(reason)}[/]")
            raise Stopped("skipped", reason, facts)
        stop = HopelessFineTune(session, gates, session.options.search.prune_factor)
        verdict_key = digest(export_key(job, candidate), stop.factor, stop.allowance)
        if session.cache is not None and (verdict := session.cache.get("verdict", verdict_key)) is not None:
            session.log.info(f"  [yellow]stopped early before (cached): {escape(verdict.meta['pruned'])}[/]")
            raise Stopped("pruned", verdict.meta["pruned"], {**facts, "checkpoints": verdict.meta["checkpoints"]})
        session.models.fine_tune_callbacks = (stop.callback(),) if stop.enabled else ()
        try:
            tried = try_candidate(job, candidate, session.workdir / f"{job.target.name}-trial-{number}")
        except HopelessTrial as hopeless:
            if session.cache is not None:  # the same candidate in a rerun stops at once
                session.cache.put("verdict", verdict_key, {}, {"pruned": str(hopeless),
                                                               "checkpoints": stop.checkpoints})
            session.log.info(f"  [yellow]stopped early: {escape(str(hopeless))}[/]")
            raise Stopped("pruned", str(hopeless), {**facts, "checkpoints": stop.checkpoints}) from None
        finally:
            session.models.fine_tune_callbacks = ()
            session.models.release()
        if stop.checkpoints:
            facts["checkpoints"] = stop.checkpoints
        self.built[candidate_id(candidate, length)] = tried
        return Evaluated(trial_result(tried, session), facts)


class HopelessTrial(Exception):
    """A fine-tune whose quality halfway through is too far from the gate to be worth finishing."""


class HopelessFineTune:
    """Checks the student's quality on the evaluation texts at CHECK_AT of each fine-tune's steps, and stops the
    trial when its loss exceeds `factor` times what the quality gate allows."""

    def __init__(self, session: BuildSession, gates: Gates, factor: float):
        self.session, self.factor = session, factor
        self.allowance = quality_allowance(session, gates)
        self.enabled = factor > 0 and self.allowance is not None
        self.checkpoints: list[dict] = []

    def callback(self):
        import keras

        watch = self

        class Checkpoint(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                steps = self.params.get("steps") or 0
                if steps and batch + 1 == max(1, int(steps * CHECK_AT)):
                    watch.check(self.model.student, batch + 1, steps)

        return Checkpoint()

    def check(self, student, step: int, steps: int) -> None:
        session = self.session
        inputs = session.models.encoded("evaluation")
        count = len(inputs["token_ids"])  # eager calls in batches: predict() would trace a function per student
        outputs = np.concatenate([np.asarray(student({k: v[i:i + 32] for k, v in inputs.items()}, training=False))
                                  for i in range(0, count, 32)])
        quality = session.quality(outputs)
        original = session.reference().accuracy
        drop = (original - quality["accuracy"]) * 100 if quality["accuracy"] is not None and original is not None \
            else None
        loss = quality_loss(session, quality["fidelity"], drop)
        limit = self.factor * self.allowance
        self.checkpoints.append({"step": step, "steps": steps, "quality_loss": round(loss, 6), "limit": limit})
        session.log.info(f"  fine-tune step {step}/{steps}: quality loss {loss:.4g} (stop above {limit:.4g})")
        if loss > limit:
            raise HopelessTrial(f"quality loss {loss:.4g} at step {step} of {steps}, over {self.factor:g}× the "
                                f"gate's allowance {self.allowance:.4g}")


def quality_loss(session: BuildSession, fidelity: dict, accuracy_drop: float | None) -> float:
    """The quality objective, lower is better: accuracy points lost with labels, else 1 - cosine (embeddings) or
    1 - agreement (classifiers)."""
    if accuracy_drop is not None:
        return float(accuracy_drop)
    if session.bundle.task == "embedding":
        return 1.0 - float(fidelity["cosine_mean"])
    return 1.0 - float(fidelity["agreement"])


def quality_allowance(session: BuildSession, gates: Gates) -> float | None:
    """How much quality loss the gate allows, in quality_loss's units."""
    if session.bundle.task == "classification" and session.reference().accuracy is not None:
        return gates.max_accuracy_drop
    if session.bundle.task == "embedding":
        return 1.0 - gates.min_cosine
    return 1.0 - gates.min_agreement


def trial_result(tried: TriedCandidate, session: BuildSession) -> dict:
    """A built trial's objectives and verdicts, as stored in the study."""
    profile, quality = tried.measured.profile, tried.measured.quality
    fidelity = quality["fidelity"]
    return {
        "latency_ms": round(float(profile["latency_ms"]["p50"]), 4),
        "size_mb": round(sum(path.stat().st_size for path in tried.measured.artifact.files) / 1e6, 4),
        "quality_loss": round(quality_loss(session, fidelity, tried.accuracy_drop), 6),
        "accuracy_drop": tried.accuracy_drop,
        "cosine_mean": fidelity.get("cosine_mean"),
        "agreement": fidelity.get("agreement"),
        "passed": tried.passed,
        "checks": tried.checks,
        "architecture": tried.architecture.as_dict() if tried.architecture else None,
        "cached": bool(profile.get("cached")),
    }


