"""A target's output: try its candidates, then assemble the folder (artifact, tokenizer, device compiler output,
report.json, report.md, report.html, manifest.json) in staging and swap it into place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rich.markup import escape

from deploykit.pipeline.candidates import TriedCandidate, dynamic_sequence, try_candidate
from deploykit.pipeline.job import TargetJob
from deploykit.pipeline.session import BuildSession
from deploykit.compilers.base import CompileRequest, get_compiler
from deploykit.output_folder import new_staging, replace_folder
from deploykit.report.assemble import assemble_report
from deploykit.report.diff import read_previous, report_diff
from deploykit.report.html import write_html
from deploykit.report.manifest import write_manifest
from deploykit.report.markdown import render_markdown
from deploykit.results import BuildResult
from deploykit.targets import Target


def build_target(job: TargetJob) -> BuildResult:
    """Try the plan's candidates in order (keeping the first that passes every gate) and write the target folder."""
    session, target, plan = job.session, job.target, job.plan
    log = session.log
    log.info(f"\n[bold]Plan for {escape(target.name)}[/] ({escape(target.device)}):")
    for line in plan.lines():
        log.info(f"  {escape(line)}")
    timings_before = dict(log.seconds)
    tried = []
    for number, candidate in enumerate(plan.candidates):  # fastest first
        chosen = try_candidate(job, candidate, session.workdir / f"{target.name}-{number}")
        tried.append(chosen)
        if chosen.passed or chosen.inconclusive:  # a slower candidate would not decide the latency any better
            break
    else:  # every candidate missed: ship the one missing the fewest gates (the fastest of those)
        chosen = min(tried, key=lambda candidate: sum(not check["passed"] for check in candidate.checks))
    untried = [candidate.label for candidate in plan.candidates[len(tried):]]
    return write_target(job, chosen, tried, timings_before, untried=untried)


def write_target(job: TargetJob, chosen: TriedCandidate, tried: list[TriedCandidate], timings_before: dict,
                 extra: dict[str, Path] | None = None, search: dict | None = None,
                 untried: list[str] = ()) -> BuildResult:
    """Assemble OUT/<target> around the chosen candidate (staging, device compile, report, manifest, swap).

    `extra` files (name -> path) are shipped beside the report, e.g. a search's Pareto plot;
    `search` is the search's summary for the report; `untried`: the planned candidates never built, because an
    earlier one passed every gate.
    """
    session, target, backend, plan, runner = job.session, job.target, job.backend, job.plan, job.runner
    log = session.log
    out = session.options.out
    previous = read_previous(out / target.name)  # before the new build takes its place
    staging = new_staging(out, target.name)
    try:
        chosen.copy_to(staging)
        for name, path in (extra or {}).items():
            shutil.copy2(path, staging / name)
        baseline = session.baseline(backend, target, runner, plan.threads)
        paired = _paired_timing(job, chosen, baseline)
        device_compile = _device_compile(session, target, chosen, staging)
        reference = session.reference()
        report = assemble_report(
            target=target, plan=plan, bundle=session.bundle, split=session.split, folder=staging,
            chosen=chosen, tried=tried, baseline=baseline, original_accuracy=reference.accuracy,
            label_mapping=reference.label_mapping, timings=_timings_since(timings_before, log.seconds),
            measured_on=runner.describe(target, chosen.measured.profile["threads"]),
            integer_graph=chosen.integer_graph, device_compile=device_compile, paired=paired,
        )
        if search is not None:
            report["search"] = search
        report["candidates_not_tried"] = list(untried)
        report["options"] = dict(session.options.command) or None
        report["previous"] = report_diff(previous, report) if previous is not None else None
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (staging / "report.md").write_text(render_markdown(report))
        write_html(staging / "report.html", [report])
        write_manifest(staging)
        final = out / target.name
        replace_folder(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return BuildResult(target.name, final, report)


def _paired_timing(job: TargetJob, chosen: TriedCandidate, baseline) -> dict | None:
    """The shipped artifact against the fp32 baseline in alternating rounds on the same runner (None where the
    runner cannot load both at once): the report's speed-up, which load on the machine then hits on both sides.
    Both take the chosen candidate's inputs (a trimmed vocabulary's ids are ids of the original's too)."""
    session, backend, runner, plan = job.session, job.backend, job.runner, job.plan
    artifact = chosen.measured.artifact
    inputs = session.models.encoded("evaluation", chosen.candidate.recipe)
    sample = {name: values[:1] for name, values in inputs.items()}
    settings = session.options.profile
    with session.log.step("paired_timing", f"Timing {chosen.label} against the fp32 baseline side by side "
                                           f"(alternating rounds of {settings.paired.runs} runs each)"):
        return runner.profile_pair(backend.name, artifact.path, artifact.runtime_config, baseline.artifact.path,
                                   baseline.artifact.runtime_config, sample, plan.threads, settings)


def _device_compile(session: BuildSession, target: Target, chosen: TriedCandidate, folder: Path) -> dict | None:
    """Run the target's device toolchain on the shipped artifact, or record why it could not run here."""
    if target.compiler is None:
        return None
    compiler = get_compiler(target.compiler)
    sparse = any(record["pass"] == "prune" and record["parameters"].get("pattern") == "2:4"
                 and record["parameters"].get("sparsity", 0) > 0 for record in chosen.passes)
    request = CompileRequest(
        artifact=chosen.measured.artifact, folder=folder, sequence_length=session.sequence_length,
        input_names=tuple(session.models.encoded("evaluation")), sparse_weights=sparse,
        log=session.log, sequence_range=target.sequence_range if dynamic_sequence(target, session) else None,
    )
    verb = "Running" if compiler.missing() is None else "Preparing (toolchain missing)"
    with session.log.step("device_compile", f"{verb} {compiler.name} for {target.name}"):
        result = compiler.compile(request)
    colour = {"compiled": "green", "not run": "yellow", "failed": "red"}[result.status]
    session.log.info(f"[{colour}]{compiler.name}: {result.status}[/] — {escape(result.reason)}")
    return result.as_dict(folder)


def _timings_since(before: dict, now: dict) -> dict:
    """Seconds spent per step since `before`: this target's share of a shared StepLog."""
    spent = {key: round(value - before.get(key, 0.0), 2) for key, value in now.items()}
    return {key: value for key, value in spent.items() if value > 0}
