"""An Optuna study over a search space, with the gates as constraints: the strategy a build drives.

The build hands in a space and an `evaluate(candidate, length, trial) -> Evaluated`
callable; this module proposes candidates, records what the evaluator measured (or why it
left a candidate unbuilt), and picks the Pareto front. It imports nothing from the build.
Objectives are p50 latency, artifact size and quality loss, all minimised. Finished
trials, measurements and verdicts live in Optuna's storage, so a search resumes where it
stopped and several machines can work on one study.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Callable

from rich.markup import escape

from deploykit.errors import DeployKitError
from deploykit.interrupts import held, released
from deploykit.planner import Candidate
from deploykit.progress import StepLog
from deploykit.pareto_search.pareto import OBJECTIVES, pareto_front, preferred
from deploykit.pareto_search.settings import SearchSettings
from deploykit.pareto_search.space import SearchSpace

# Optuna's heartbeat: a trial whose process died (SIGKILL, a lost machine) is failed after the grace period and
# its parameters run again; 60 s keeps the storage traffic negligible next to minutes-long trials.
HEARTBEAT_S = 60
GRACE_S = 180
UNBUILT = {"built": 1.0}  # a skipped or stopped trial: infeasible, whatever it would have measured


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


def sampler_seed(seed: int, settings: SearchSettings) -> int:
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


class Stopped(Exception):
    """The evaluator left a trial's candidate unbuilt: `kind` "skipped" (before any training) or "pruned" (a
    fine-tune stopped early); `facts` are recorded with the trial. Such a trial is infeasible."""

    def __init__(self, kind: str, reason: str, facts: dict | None = None):
        super().__init__(reason)
        self.kind, self.reason, self.facts = kind, reason, facts or {}


@dataclass(frozen=True)
class Evaluated:
    """A built trial: its `result` (the objectives, "passed", the gate "checks") and facts to record beside it."""

    result: dict
    facts: dict


# candidate, sequence length, trial number -> Evaluated; raises Stopped, or DeployKitError when the build failed.
Evaluate = Callable[[Candidate, int, int], Evaluated]


class Objective:
    """One trial: suggest a candidate, have the caller's `evaluate` build it, and return its three objectives."""

    def __init__(self, space: SearchSpace, evaluate: Evaluate, default_length: int, label: str, log: StepLog):
        self.space, self.evaluate, self.default_length, self.label, self.log = space, evaluate, default_length, label, log

    def __call__(self, trial) -> tuple[float, float, float]:
        with released():  # a signal raised here fails this trial, which the next run queues again
            return self._run(trial)

    def _run(self, trial) -> tuple[float, float, float]:
        seeded = trial.user_attrs.get("fixed_candidate")
        candidate = self.space.seed(trial, candidate_of({"candidate": seeded})) if seeded else self.space.suggest(trial)
        length = self.space.length(trial, self.default_length)
        record = candidate_record(candidate, length if len(self.space.lengths) > 1 else None)
        trial.set_user_attr("candidate", record)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        at = f" at sequence length {length}" if "sequence_length" in record else ""
        self.log.info(f"\n[bold]Trial {trial.number}[/] of {self.label}: {escape(candidate.label)}{at} "
                      f"({escape(candidate.recipe_text) or 'no passes'})")
        same = self._same_as_finished(trial.study, candidate, length)
        if same is not None:
            for key in ("result", "predicted_latency_ms"):
                if key in same.user_attrs:
                    trial.set_user_attr(key, same.user_attrs[key])
            _constrain(trial, same.user_attrs["constraints"])
            trial.set_user_attr("same_as", same.number)
            self.log.info(f"  same candidate as trial {same.number}: its measurements are reused.")
            return tuple(same.values)
        return self._evaluate(trial, candidate, length)

    def _evaluate(self, trial, candidate: Candidate, length: int) -> tuple[float, float, float]:
        import optuna

        started = time.perf_counter()
        try:
            evaluated = self.evaluate(candidate, length, trial.number)
        except Stopped as stopped:
            for key, value in {**stopped.facts, stopped.kind: stopped.reason}.items():
                trial.set_user_attr(key, value)
            _constrain(trial, UNBUILT)
            raise optuna.TrialPruned(stopped.reason) from None
        except DeployKitError as error:
            trial.set_user_attr("error", str(error))
            self.log.info(f"  [red]trial failed: {escape(str(error))}[/]")
            raise
        for key, value in evaluated.facts.items():
            trial.set_user_attr(key, value)
        result = {**evaluated.result, "seconds": round(time.perf_counter() - started, 1)}
        trial.set_user_attr("result", result)
        _constrain(trial, {"built": 0.0, **constraint_values(result["checks"])})
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


def run_study(study, space: SearchSpace, evaluate: Evaluate, trials: int, default_length: int, label: str,
              log: StepLog) -> None:
    """Run trials until the study holds `trials` finished ones (by any worker)."""
    done = finished_count(study)
    if done < trials:
        with held():  # Ctrl-C stops a trial's work, never Optuna's recording of a state (see Objective.__call__)
            study.optimize(Objective(space, evaluate, default_length, label, log), n_trials=trials - done,
                           catch=(DeployKitError,), callbacks=[StopAfter(trials)], gc_after_trial=True)


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


def states_text(rows: list[dict]) -> str:
    return ", ".join(f"{count} {state}" for state, count in _state_counts(rows).items()) or "none"


def redacted(url: str) -> str:
    """A storage URL with any password hidden (it goes into reports)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]

