"""Builds: load the model and data once, then for each target try its candidates, export, validate, profile and
write the target folder with its report.

    session.py     the model, data split and the original's reference outputs; measuring artifacts
    derived.py     the models passes derive from the original, by recipe, and their traced graphs
    job.py         TargetJob: one target's session, backend, plan, runner and latency model
    candidates.py  one candidate: passes -> export -> op check -> measure -> gates
    output.py      a target folder: staging, device compiler, report, manifest, atomic swap
    search.py      a build that searches: drives deploykit.pareto_search with its own evaluator

BuildOptions and their checks are deploykit.options.

A build that misses a quality gate is complete: its folder is written and its result
says `passed=False` (the CLI exits with 3).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.markup import escape

from deploykit.backends.base import get_backend
from deploykit.options import BuildOptions, check_options, forced_recipe
from deploykit.pipeline.job import TargetJob
from deploykit.pipeline.output import build_target
from deploykit.pipeline.search import search_step, search_target
from deploykit.pipeline.session import DEFAULT_MODEL, BuildSession, prepare_session
from deploykit.errors import DeployKitError
from deploykit.output_folder import check_output
from deploykit.planner import candidate_precisions, check_reads_onnx, plan_target
from deploykit.latency_model import load_latency_model
from deploykit.profiling.base import get_runner
from deploykit.profiling.devices import device_runner
from deploykit.profiling.profiles import build_measurements, profiles_folder, save_profile
from deploykit.pareto_search.settings import SearchSettings
from deploykit.progress import StepLog
from deploykit.results import BuildResult, View
from deploykit.target_loader import resolve_targets


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
            runner = runner_for(target, options)
            if onnx_input:
                check_reads_onnx(target, backend)
            if "int4-weights" in candidate_precisions(target, backend, options.precision):
                backend.check_int4(options.int4)
        except DeployKitError as error:
            if targets.strip() != "all":
                raise
            log.info(f"[yellow]Skipping {target.name}:[/] {escape(str(error))}")
            continue
        resolved.append((target, backend, runner))
    if not resolved:
        raise DeployKitError(f"none of the targets in {targets!r} can be built; see the messages above.")
    check_output(options.out, [target.name for target, _, _ in resolved], options.force)
    out_existed = options.out.exists()
    try:
        with tempfile.TemporaryDirectory(prefix="deploykit-build-") as workdir:
            session = prepare_session(model, data, eval_data, options, log, Path(workdir), task, tokenizer)
            log.info(escape(
                f"Model: {session.bundle.source} ({session.bundle.task}); data: {len(session.split.calibration)} "
                f"calibration, {len(session.split.evaluation)} evaluation samples; sequence length "
                f"{session.sequence_length} ({session.sequence_length_reason})."
            ))
            profiles = profiles_folder(options.profiles)
            jobs = []
            for target, backend, runner in resolved:  # every target's settings, before any export
                model = load_latency_model(profiles, target.name, runner.device_name) if profiles else None
                plan = plan_target(target, backend, runner, session.bundle, session.sequence_length,
                                   session.sequence_length_reason, len(session.split.calibration),
                                   len(session.split.evaluation), options, model,
                                   search_step(session, target, backend) if options.search is not None else None)
                jobs.append(TargetJob(session, target, backend, plan, runner, model))
            session.reference()  # labels meet the model's classes here, before the first export
            run = search_target if options.search is not None else build_target
            results = [run(job) for job in jobs]
    except BaseException:
        if not out_existed and options.out.is_dir() and not any(options.out.iterdir()):
            options.out.rmdir()
        raise
    if options.save_profile is not None:
        for result in results:
            saved = save_profile(options.save_profile, result.target, result.report["measured_on"],
                                 result.report["metrics"]["runtime"], build_measurements(result.report))
            log.info(escape(f"Profile of {result.report['measured_on']['device']} saved: {saved}"))
    return results


def runner_for(target, options: BuildOptions):
    """Where a target's artifacts are timed: `--device`, else `--runner`, else the target's `profiling:`."""
    if options.device is None:
        return get_runner(options.runner or target.profiling)
    if options.runner is not None:
        raise DeployKitError("--runner and --device both say where to profile; give one of them.")
    return device_runner(options.device, target, options.devices_file, options.trust_new_host,
                         options.benchmark_binary)


def build(
    model: str | Path | None = None,
    target: str = "intel-cpu",
    data: str | Path | None = None,
    **kwargs,
) -> BuildResult:
    """Build one target: `dk.build("./my-bert", target="intel-cpu", data="reviews.jsonl")`.

    Keyword arguments: `eval_data`, `task`, `tokenizer`, `options` (a BuildOptions),
    `log` (a StepLog), or any BuildOptions field (e.g. `precision="fp16"`, `out="dist"`).
    `recipe` also takes the CLI's text, a recipe file or a report.json: `recipe="distill:layers=3,trim-vocab"`.
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


def search(
    model: str | Path | None = None,
    targets: str = "intel-cpu",
    data: str | Path | None = None,
    trials: int = SearchSettings.trials,
    **kwargs,
) -> list[BuildResult]:
    """Search each target's settings and ship its preferred Pareto point:
    `dk.search("./my-bert", "arm-cpu,intel-cpu", "reviews.jsonl", trials=20, max_accuracy_drop=1.0)`.

    Keyword arguments: any SearchSettings field (`storage`, `study`, `prefer`, `prune_factor`, `passes`,
    `startup_trials`), any BuildOptions field, or build_targets' (`eval_data`, `task`, `tokenizer`, `log`).
    """
    chosen = {key: kwargs.pop(key) for key in list(kwargs) if key in SearchSettings.__dataclass_fields__}
    fields = BuildOptions.__dataclass_fields__
    option_values = {key: kwargs.pop(key) for key in list(kwargs) if key in fields}
    if "out" in option_values:
        option_values["out"] = Path(option_values["out"])
    options = BuildOptions(**option_values, search=SearchSettings(trials=trials, **chosen))
    return build_targets(model, targets, data, options=options, **kwargs)


__all__ = ["BuildOptions", "BuildResult", "BuildSession", "DEFAULT_MODEL", "View", "build", "build_targets", "search",
           "check_options", "forced_recipe", "prepare_session"]
