"""A hardware-aware search for one target: an Optuna study over its space, with the gates as constraints.

Each trial is a candidate (a precision and a recipe) built, validated on the evaluation
texts and timed by the target's runner, exactly as `build` does; its objectives are p50
latency, artifact size and quality loss, all minimised. Before any training a trial is
skipped when the device's latency model says it misses `--max-latency-ms` beyond the
model's stated error; during a fine-tune, one whose quality halfway through is hopeless
(`prune_factor` times the gate's allowance) is stopped. Finished trials, measurements and
verdicts live in Optuna's storage, so a search resumes where it stopped and several
machines can work on one study; the cache makes a repeated candidate free.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from dataclasses import dataclass

import numpy as np
from rich.markup import escape

from deploykit.backends.base import Backend
from deploykit.build.candidates import TriedCandidate, export_key, try_candidate
from deploykit.build.output import write_target
from deploykit.build.session import BuildSession
from deploykit.cache import digest
from deploykit.errors import DeployKitError
from deploykit.interrupts import held, released
from deploykit.latency_model import LatencyModel, architecture_of, misses_budget
from deploykit.planner import Candidate, Gates, Plan, candidate_precisions, plan_candidates, predict_candidate
from deploykit.profiling.base import ProfileRunner
from deploykit.results import BuildResult
from deploykit.pareto_search.pareto import OBJECTIVES, pareto_front, preferred
from deploykit.pareto_search.settings import SearchSettings
from deploykit.pareto_search.space import SearchSpace, search_space
from deploykit.targets import Target

# Optuna's heartbeat: a trial whose process died (SIGKILL, a lost machine) is failed after the grace period and
# its parameters run again; 60 s keeps the storage traffic negligible next to minutes-long trials.
HEARTBEAT_S = 60
GRACE_S = 180
CHECK_AT = 0.5  # share of a fine-tune's steps after which a hopeless trial is stopped
UNBUILT = {"built": 1.0}  # a skipped or stopped trial: infeasible, whatever it would have measured


def search_target(session: BuildSession, target: Target, backend: Backend, plan: Plan, runner: ProfileRunner,
                  latency_model: LatencyModel | None) -> BuildResult:
    """Run (or resume) the target's study, then ship the preferred Pareto point that passes every gate."""
    settings: SearchSettings = session.options.search
    log, options = session.log, session.options
    timings_before = dict(log.seconds)
    keras = session.bundle.onnx_source is None
    lengths = (session.sequence_length,)
    if session.token_lengths is not None:  # not when --sequence-length fixed it
        lengths += tuple(sorted(session.length_at(percentile) for percentile in settings.length_percentiles))
    space = search_space(target, candidate_precisions(target, backend, options.precision),
                         architecture_of(session.bundle.backbone), keras, settings.passes, options.recipe,
                         options.pass_parameters, lengths,
                         tuple(filter(None, [backend.int4_training_pass])) if options.qat else ())
    if settings.storage is None:
        options.out.mkdir(parents=True, exist_ok=True)
    storage_url = settings.storage or f"sqlite:///{(options.out / 'search.db').resolve()}"
    name = f"{settings.study}.{target.name}"
    study = open_study(storage_url, name, _sampler_seed(options.seed, settings), settings)
    requeued = requeue_interrupted(study)
    if not study.get_trials(deepcopy=False):
        seed_fixed_candidates(study, space, plan_candidates(
            target, backend, options.precision, options.qat and keras, options.recipe, options.pass_parameters,
            latency_budget=keras))
    done = finished_count(study)
    log.info(f"\n[bold]Search for {escape(target.name)}[/] ({escape(target.device)}): study {escape(name)} in "
             f"{escape(redacted(storage_url))}, {done} of {settings.trials} trials done"
             + (f", {requeued} interrupted trial(s) queued again" if requeued else "") + ".")
    log.info(f"  space: {escape(str(space.describe()))}")
    plan.step("export").pop("if_gates_fail_try", None)  # the study chooses, not the fixed order
    plan.steps.insert(1, {"step": "search", "study": name, "trials": settings.trials, "prefer": settings.prefer,
                          "objectives": ", ".join(OBJECTIVES), "constraints": "the gates below",
                          "prune_factor": settings.prune_factor, **space.describe()})
    built: dict[str, TriedCandidate] = {}
    objective = Objective(session, target, backend, plan, runner, space, latency_model, built)
    if done < settings.trials:
        with held():  # Ctrl-C stops a trial's work, never Optuna's recording of a state (see Objective.__call__)
            study.optimize(objective, n_trials=settings.trials - done, catch=(DeployKitError,),
                           callbacks=[StopAfter(settings.trials)], gc_after_trial=True)
    rows = trial_rows(study)
    chosen_row, front = choose(rows, settings.prefer)
    if chosen_row is None:
        raise DeployKitError(f"search for {target.name}: no trial produced an artifact ({len(rows)} trials: "
                             f"{_states(rows)}); see the messages above, or widen the space.")
    candidate, length = candidate_of(chosen_row), length_of(chosen_row, session.sequence_length)
    with session.at_length(length):
        chosen = built.get(candidate_id(candidate, length))
        if chosen is None:  # built by an earlier run or another worker: from the cache, or built again
            with log.step("search_rebuild",
                          f"Building trial {chosen_row['number']}'s {candidate.label} (from another run)"):
                chosen = try_candidate(session, backend, target, plan, runner, candidate,
                                       session.workdir / f"{target.name}-chosen")
        outcome = StudyOutcome(rows, front, chosen_row, search_summary(name, storage_url, settings, space, rows,
                                                                      front, chosen_row, plan.sequence_length))
        return _write_search_target(session, target, backend, plan, runner, chosen, built, timings_before, outcome,
                                    settings.prefer)


@dataclass
class StudyOutcome:
    """What a finished study gives the target folder: every trial, the Pareto front, the shipped trial."""

    rows: list[dict]
    front: list[dict]
    chosen_row: dict
    summary: dict  # search.json's header and the report's search section


def _write_search_target(session: BuildSession, target: Target, backend: Backend, plan: Plan, runner: ProfileRunner,
                         chosen: TriedCandidate, built: dict, timings_before: dict, outcome: StudyOutcome,
                         prefer: str) -> BuildResult:
    """The target folder around the chosen trial, at its sequence length, with search.json and the plot beside."""
    rows, front, chosen_row = outcome.rows, outcome.front, outcome.chosen_row
    log = session.log
    candidate = candidate_of(chosen_row)
    if session.sequence_length != plan.sequence_length:
        plan.sequence_length = session.sequence_length
        plan.step("tokenize").update(sequence_length=session.sequence_length,
                                     chosen_by=f"the search (trial {chosen_row['number']})")
    plan.step("export").update(precision=candidate.precision, method=backend.describe(candidate.precision))
    log.info(f"  Pareto front of {target.name}: {len(front)} point(s); shipping trial {chosen_row['number']} "
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
    return write_target(session, target, backend, plan, runner, chosen, tried or [chosen], timings_before, extra,
                        outcome.summary)


def open_study(url: str, name: str, seed: int, settings: SearchSettings):
    """The study in its storage (created on first use): three minimised objectives, the gates as constraints."""
    import optuna

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():  # the heartbeat is marked experimental; it has been stable since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                                 grace_period=GRACE_S)
    except Exception as error:  # SQLAlchemy's many connection errors: one line naming the URL
        raise DeployKitError(f"cannot open the search storage {redacted(url)}: {str(error).splitlines()[0]} "
                             "(check the URL, that the database server runs, and its driver, e.g. psycopg2).") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # deploykit's own log says what each trial does
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                directions=["minimize"] * len(OBJECTIVES))
    # Offset by the trials already there: a resumed search must not replay the first run's random proposals.
    startup = settings.startup_trials or min(10, max(3, settings.trials // 3))
    with warnings.catch_warnings():  # multivariate TPE over conditional passes is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(
            seed=seed + len(study.get_trials(deepcopy=False)), n_startup_trials=startup, multivariate=True,
            group=True)
    return study


def _constrain(trial, values: dict[str, float]) -> None:
    """Record the trial's constraints (feasible when every value is <= 0) for the sampler and for repeats."""
    trial.set_user_attr("constraints", values)
    for name, value in values.items():
        trial.set_constraint(name, value)


def _sampler_seed(seed: int, settings: SearchSettings) -> int:
    """The build's seed for the default, single-worker storage; a worker's own offset on a shared one, so two
    machines do not propose the same first trials."""
    if settings.storage is None:
        return seed
    return seed + (hash((socket.gethostname(), os.getpid())) % 100_000)


def seed_fixed_candidates(study, space: SearchSpace, candidates: list[Candidate]) -> None:
    """Queue the target's fixed candidates (what `build` would try: its precisions, QAT, its recipes) as the first
    trials: the search then starts from the expert list and can only improve on it."""
    for candidate in candidates:
        params = space.seed_parameters(candidate)
        if params is not None:
            study.enqueue_trial(params, user_attrs={"fixed_candidate": candidate_record(candidate)})


class StopAfter:
    """Stop once the study holds `trials` finished trials (by any worker): complete, pruned, skipped or failed
    with an error; an interrupted trial does not count, its parameters run again."""

    def __init__(self, trials: int):
        self.trials = trials

    def __call__(self, study, trial) -> None:
        requeue_interrupted(study)
        if finished_count(study) >= self.trials:
            study.stop()


def finished_count(study) -> int:
    from optuna.trial import TrialState

    return sum(1 for trial in study.get_trials(deepcopy=False)
               if trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (trial.state == TrialState.FAIL and "error" in trial.user_attrs))


def requeue_interrupted(study) -> int:
    """Queue again the parameters of trials that stopped without a verdict (Ctrl-C, a killed process); returns
    how many were queued. A trial is queued once: the copy records `retry_of`."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {trial.user_attrs.get("retry_of") for trial in trials}
    queued = 0
    for trial in trials:
        if trial.state == TrialState.FAIL and "error" not in trial.user_attrs and trial.number not in retried:
            # A queued trial (build's candidate, a retry) stopped before its first suggestion has only fixed params.
            params = trial.params or trial.system_attrs.get("fixed_params")
            if not params:  # stopped before it chose anything: nothing to run again
                continue
            carried = {key: trial.user_attrs[key] for key in ("fixed_candidate",) if key in trial.user_attrs}
            study.enqueue_trial(params, user_attrs={**carried, "retry_of": trial.number})
            queued += 1
    return queued


class Objective:
    """One trial: suggest a candidate, skip or build it, and return its three objectives."""

    def __init__(self, session: BuildSession, target: Target, backend: Backend, plan: Plan, runner: ProfileRunner,
                 space: SearchSpace, latency_model: LatencyModel | None, built: dict[str, TriedCandidate]):
        self.session, self.target, self.backend, self.plan, self.runner = session, target, backend, plan, runner
        self.space, self.latency_model, self.built = space, latency_model, built
        self.architecture = architecture_of(session.bundle.backbone)

    def __call__(self, trial) -> tuple[float, float, float]:
        with released():  # a signal raised here fails this trial, which the next run queues again
            return self._run(trial)

    def _run(self, trial) -> tuple[float, float, float]:
        session = self.session
        seeded = trial.user_attrs.get("fixed_candidate")
        candidate = self.space.seed(trial, candidate_of({"candidate": seeded})) if seeded else self.space.suggest(trial)
        length = self.space.length(trial, session.sequence_length)
        record = candidate_record(candidate, length if len(self.space.lengths) > 1 else None)
        trial.set_user_attr("candidate", record)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        at = f" at sequence length {length}" if "sequence_length" in record else ""
        session.log.info(f"\n[bold]Trial {trial.number}[/] of {self.target.name}: {escape(candidate.label)}{at} "
                         f"({escape(candidate.recipe_text) or 'no passes'})")
        same = self._same_as_finished(trial.study, candidate, length)
        if same is not None:
            for key in ("result", "predicted_latency_ms"):
                if key in same.user_attrs:
                    trial.set_user_attr(key, same.user_attrs[key])
            _constrain(trial, same.user_attrs["constraints"])
            trial.set_user_attr("same_as", same.number)
            session.log.info(f"  same candidate as trial {same.number}: its measurements are reused.")
            return tuple(same.values)
        with session.at_length(length):
            return self._build(trial, candidate, length)

    def _build(self, trial, candidate: Candidate, length: int) -> tuple[float, float, float]:
        """Skip, stop or build the trial's candidate at the session's (the trial's) sequence length."""
        import optuna

        session, gates = self.session, self.plan.gates
        predicted = None
        if self.latency_model is not None:
            predicted = predict_candidate(candidate, self.latency_model, self.architecture, session.sequence_length,
                                          self.plan.threads, self.backend.executes_as)
            if predicted is not None:
                trial.set_user_attr("predicted_latency_ms", round(predicted[0], 4))
        if misses_budget(predicted, gates.max_latency_ms):
            reason = (f"predicted {predicted[0]:.3g} ms (±{predicted[1]:.0%}), over the {gates.max_latency_ms:g} ms "
                      "budget: skipped before any training")
            trial.set_user_attr("skipped", reason)
            _constrain(trial, UNBUILT)
            session.log.info(f"  [yellow]{escape(reason)}[/]")
            raise optuna.TrialPruned(reason)
        stop = HopelessFineTune(session, gates, self.session.options.search.prune_factor)
        verdict_key = digest(export_key(session, self.backend, self.target, candidate, gates), stop.factor, stop.allowance)
        if session.cache is not None and (verdict := session.cache.get("verdict", verdict_key)) is not None:
            trial.set_user_attr("pruned", verdict.meta["pruned"])
            trial.set_user_attr("checkpoints", verdict.meta["checkpoints"])
            _constrain(trial, UNBUILT)
            session.log.info(f"  [yellow]stopped early before (cached): {escape(verdict.meta['pruned'])}[/]")
            raise optuna.TrialPruned(verdict.meta["pruned"])
        session.models.fine_tune_callbacks = (stop.callback(),) if stop.enabled else ()
        started = time.perf_counter()
        try:
            tried = try_candidate(session, self.backend, self.target, self.plan, self.runner, candidate,
                                  session.workdir / f"{self.target.name}-trial-{trial.number}")
        except HopelessTrial as hopeless:
            trial.set_user_attr("pruned", str(hopeless))
            trial.set_user_attr("checkpoints", stop.checkpoints)
            _constrain(trial, UNBUILT)
            if session.cache is not None:  # the same candidate in a rerun stops at once
                session.cache.put("verdict", verdict_key, {}, {"pruned": str(hopeless),
                                                               "checkpoints": stop.checkpoints})
            session.log.info(f"  [yellow]stopped early: {escape(str(hopeless))}[/]")
            raise optuna.TrialPruned(str(hopeless)) from None
        except DeployKitError as error:
            trial.set_user_attr("error", str(error))
            session.log.info(f"  [red]trial failed: {escape(str(error))}[/]")
            raise
        finally:
            session.models.fine_tune_callbacks = ()
            session.models.release()
        if stop.checkpoints:
            trial.set_user_attr("checkpoints", stop.checkpoints)
        self.built[candidate_id(candidate, length)] = tried
        result = trial_result(tried, session)
        result["seconds"] = round(time.perf_counter() - started, 1)
        trial.set_user_attr("result", result)
        _constrain(trial, {"built": 0.0, **constraint_values(tried.checks)})
        return tuple(result[name] for name in OBJECTIVES)

    def _same_as_finished(self, study, candidate: Candidate, length: int):
        """A complete trial of the same candidate at the same length (TPE proposes repeats once the front settles)."""
        from optuna.trial import TrialState

        wanted = candidate_id(candidate, length)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            row = {"candidate": trial.user_attrs.get("candidate")}
            if row["candidate"] and candidate_id(candidate_of(row), length_of(row, length)) == wanted:
                return trial
        return None


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


def constraint_values(checks: list[dict]) -> dict[str, float]:
    """Optuna constraints (feasible when every value is <= 0): how far each gate is missed, 0 when passed."""
    return {check["name"]: 0.0 if check["passed"] else float(abs(check["value"] - check["limit"]) or 1.0)
            for check in checks}


def candidate_record(candidate: Candidate, length: int | None = None) -> dict:
    """A trial's candidate as stored in the study; `length` when the search varies the sequence length."""
    record = {"precision": candidate.precision, "label": candidate.label, "recipe": candidate.recipe_text,
              "passes": [[name, [list(item) for item in items]] for name, items in candidate.recipe]}
    if length is not None:
        record["sequence_length"] = length
    return record


def candidate_of(row: dict) -> Candidate:
    record = row["candidate"]
    return Candidate(record["precision"], tuple((name, tuple(tuple(item) for item in items))
                                                for name, items in record["passes"]))


def length_of(row: dict, default: int) -> int:
    """A trial's sequence length; `default` (the build's) when the search did not vary it."""
    return int(row["candidate"].get("sequence_length") or default)


def candidate_id(candidate: Candidate, length: int) -> str:
    return f"{candidate.precision}|{candidate.recipe_text}|{length}"


def trial_rows(study) -> list[dict]:
    """Every trial of the study (all workers), as search.json lists them."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        row = {"number": trial.number, "state": trial.state.name.lower(), "params": trial.params,
               **{key: attrs[key] for key in ("candidate", "result", "predicted_latency_ms", "skipped", "pruned",
                                               "error", "same_as", "retry_of", "worker", "checkpoints")
                  if key in attrs}}
        if "fixed_candidate" in attrs:
            row["fixed_candidate"] = True  # one of build's own candidates, queued first
        if trial.datetime_start and trial.datetime_complete:
            row["seconds"] = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
        rows.append(row)
    return rows


def _objectives(row: dict) -> tuple[float, ...]:
    return tuple(row["result"][name] for name in OBJECTIVES)


def choose(rows: list[dict], prefer: str) -> tuple[dict | None, list[dict]]:
    """The preferred point of the front of trials passing every gate; with none passing, the trial missing the
    fewest gates (fastest among those), as `build` ships it. Returns (chosen, front)."""
    measured = [row for row in rows if row["state"] == "complete" and "result" in row and "same_as" not in row]
    feasible = [row for row in measured if row["result"]["passed"]]
    if feasible:
        front = pareto_front(feasible, _objectives)
        return preferred(front, _objectives, prefer), front
    if not measured:
        return None, []
    misses = lambda row: (sum(not check["passed"] for check in row["result"]["checks"]), _objectives(row))  # noqa: E731
    return min(measured, key=misses), []


def search_summary(name: str, url: str, settings: SearchSettings, space: SearchSpace, rows: list[dict],
                   front: list[dict], chosen: dict, length: int) -> dict:
    """The report's `search` section: where the study lives, what it covered, its front and its choice."""
    return {
        "study": name,
        "storage": redacted(url),
        "trials": len(rows),
        "states": _state_counts(rows),
        "space": space.describe(),
        "objectives": list(OBJECTIVES),
        "prefer": settings.prefer,
        "chosen_trial": chosen["number"],
        "feasible": sum(1 for row in rows if row.get("result", {}).get("passed") and "same_as" not in row),
        "front": [{"trial": row["number"], "candidate": row["candidate"]["label"],
                   "recipe": row["candidate"]["recipe"], "sequence_length": length_of(row, length),
                   **{key: row["result"][key] for key in OBJECTIVES},
                   "predicted_latency_ms": row.get("predicted_latency_ms")} for row in front],
    }


def _state_counts(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        state = "skipped" if "skipped" in row else row["state"]
        counts[state] = counts.get(state, 0) + 1
    return counts


def _states(rows: list[dict]) -> str:
    return ", ".join(f"{count} {state}" for state, count in _state_counts(rows).items()) or "none"


def redacted(url: str) -> str:
    """A storage URL with any password hidden (it goes into reports)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]

