"""report.md: the build report for people, rendered from report.json's content."""

from __future__ import annotations

from deploykit.planner import step_details
from deploykit.report.speed import speed_method, speed_warnings
from deploykit.report.validation import fidelity_where
from deploykit.report.formatting import megabytes as _megabytes, number as _number


def gates_verdict(gates: dict) -> str:
    """'passed', 'INCONCLUSIVE' (no gate missed, one undecided) or 'FAILED'."""
    return "passed" if gates["passed"] else "INCONCLUSIVE" if gates.get("inconclusive") else "FAILED"


def render_markdown(report: dict) -> str:
    artifact, baseline, metrics = report["artifact"], report["baseline"], report["metrics"]
    fidelity, base_fidelity = metrics["fidelity"], baseline["fidelity"]
    model = report["model"]
    lines = [
        f"# deploykit build: {report['target']}",
        "",
        f"Model `{model['source']}` ({model['task']}, sequence length {model['sequence_length']}) → "
        f"`{artifact['path']}` ({artifact['format']}, {artifact['precision']}).",
        "",
        f"**Gates: {gates_verdict(report['gates'])}**",
        "",
        "| | baseline | artifact | ratio |",
        "|---|---|---|---|",
        f"| precision | {baseline['precision']} | {artifact['precision']} | |",
        f"| size | {_megabytes(baseline['bytes'])} | {_megabytes(artifact['bytes'])} | {_number(metrics['size_ratio_vs_baseline'], 3, '×')} |",
    ]
    for key in ("p50", "p90", "p99"):
        lines.append(
            f"| latency {key} | {_number(baseline['latency_ms'][key], 2, ' ms')} | "
            f"{_number(metrics['latency_ms'][key], 2, ' ms')} | "
            + (f"{_number(metrics['speedup_vs_baseline'], 2, '× faster')} |" if key == "p50" else "|")
        )
    lines += [
        f"| throughput | {_number(baseline['latency_ms']['throughput_per_s'], 1, '/s')} | {_number(metrics['latency_ms']['throughput_per_s'], 1, '/s')} | |",
        f"| peak RSS | {_number(baseline['peak_rss_mb'], 1, ' MB')} | {_number(metrics['peak_rss_mb'], 1, ' MB')} | |",
        f"| cosine vs original (mean / min) | {_number(base_fidelity['cosine_mean'], 4)} / {_number(base_fidelity['cosine_min'], 4)} | "
        f"{_number(fidelity['cosine_mean'], 4)} / {_number(fidelity['cosine_min'], 4)} | |",
        f"| agreement with original | {_number(base_fidelity['agreement'], 4)} | {_number(fidelity['agreement'], 4)} | |",
        *([f"| logit cosine vs original | {_number(base_fidelity.get('logit_cosine_mean'), 4)} | "
           f"{_number(fidelity['logit_cosine_mean'], 4)} | |"] if "logit_cosine_mean" in fidelity else []),
        f"| accuracy | {_number(baseline['accuracy'], 4)} | {_number(metrics['accuracy'], 4)} | |",
        "",
        f"Original Keras model accuracy: {_number(metrics['original_accuracy'], 4)}; "
        f"accuracy drop: {_number(metrics['accuracy_drop'], 2, ' points')}.",
        "",
        "## Gates",
        "",
    ]
    for check in report["gates"]["checks"]:
        verdict = ("pass" if check["passed"] else f"INCONCLUSIVE: {check['reason']}" if check.get("inconclusive")
                   else "FAIL")
        interval = check.get("interval")
        spread = f" ({_number(interval[0], 4)}–{_number(interval[1], 4)})" if interval else ""
        lines.append(f"- {check['name']}: {_number(check['value'], 4)}{spread} (limit {check['limit']}) — {verdict}")
    if not report["gates"]["checks"]:
        lines.append("- no gate applies (no labels and not an embedding model)")
    if report.get("candidates_not_tried"):
        lines += ["", f"Planned but not tried, since an earlier candidate was chosen: "
                      f"{', '.join(report['candidates_not_tried'])}."]
    if method := speed_method(report):
        lines += ["", method]
    if warnings := speed_warnings(report):
        lines += ["", "## Speed warnings", "", *(f"- **{line}**" for line in warnings)]
    lines += _previous_lines(report.get("previous"))
    fallback = report["compatibility"]["fallback_ops"]
    if fallback:
        reasons = report["compatibility"]["fallback_reasons"]
        lines += ["", "Ops that would fall back from the accelerator to the CPU:", ""]
        lines += [f"- {name} ×{count}: {'; '.join(reasons[name])}" for name, count in fallback.items()]
    if report.get("passes"):
        lines += ["", "## Compression passes of this artifact (in order)", ""]
        for record in report["passes"]:
            effect = record["effect"]
            changed = [f"{key[:-len('_before')]} {effect[key]} → {effect[key[:-len('_before')] + '_after']}"
                       for key in effect if key.endswith("_before") and key[:-len("_before")] + "_after" in effect]
            quality = record.get("quality_after") or {"fidelity": {}}
            measures = {"cosine": quality["fidelity"].get("cosine_mean"), "agreement": quality["fidelity"].get("agreement"),
                        "accuracy": quality.get("accuracy")}
            after = ", ".join(f"{name} {_number(value, 4)}" for name, value in measures.items() if value is not None)
            lines.append(f"- **{record['pass']}**: {', '.join(changed) or 'weights fine-tuned'}"
                         f"{'; Keras model after it: ' + after if after else ''}")
    compiled = report.get("device_compile")
    if compiled:
        lines += ["", "## Device compiler", "", f"**{compiled['compiler']}: {compiled['status']}** — {compiled['reason']}"]
        if compiled["files"]:
            lines += ["", "Files: " + ", ".join(f"`{name}`" for name in compiled["files"])]
        if compiled.get("command"):
            lines += ["", "```", compiled["command"], "```"]
    predicted_any = any(c.get("predicted_latency_ms_p50") is not None for c in report["candidates"])
    if "search" in report:
        lines += _search_lines(report["search"])
    elif len(report["candidates"]) > 1 or predicted_any:
        lines += ["", "## Candidates tried (fastest first; the first to pass every gate is kept, "
                  "else the one missing the fewest)", ""]
        for candidate in report["candidates"]:
            verdict = "passed" if candidate["passed"] else "missed a gate"
            predicted = candidate.get("predicted_latency_ms_p50")
            lines.append(f"- {candidate['candidate']}: p50 {_number(candidate['latency_ms_p50'], 2, ' ms')}"
                         f"{f' (predicted {predicted:.2f} ms)' if predicted is not None else ''}, "
                         f"cosine {_number(candidate['fidelity']['cosine_mean'], 4)}, "
                         f"accuracy drop {_number(candidate['accuracy_drop'], 2)} — {verdict}")
    lines += ["", "## Plan", ""]
    for number, step in enumerate(report["plan"], 1):
        lines.append(f"{number}. **{step['step']}**: {step_details(step)}")
    lines += _op_lines(metrics.get("op_profile"))
    measured = report["measured_on"]
    lines += ["", "## Where this was measured", "", measured["note"], ""]
    facts = measured.get("facts")
    if facts:
        runtime = metrics["runtime"]
        lines += [f"Device `{measured.get('device')}`: {facts.get('arch')} {facts.get('cpu')}, {facts.get('cores')} cores, "
                  f"{_number(facts.get('memory_mb'), 0, ' MB')} memory, {facts.get('os')} (kernel {facts.get('kernel')}); "
                  f"accelerators: {', '.join(facts.get('accelerators') or []) or 'none visible'}; runtime "
                  f"{runtime.get('name')} {runtime.get('version') or ''}.", ""]
    lines += [fidelity_where(report.get("fidelity_measured_on")), ""]
    lines += [
        f"Data: `{report['data']['source']}`, {report['data']['calibration_samples']} calibration and "
        f"{report['data']['evaluation_samples']} evaluation samples ({report['data']['evaluation_source']}).",
        "",
    ]
    return "\n".join(lines)


def _previous_lines(previous: dict | None) -> list[str]:
    """What changed since the build this one replaced."""
    if not previous:
        return []
    sha = previous["sha256"]
    verdict = (f"**changed** (sha256 {(sha['before'] or '–')[:12]} → {(sha['after'] or '–')[:12]})"
               if previous["artifact_changed"] else f"unchanged (same sha256 {(sha['after'] or '–')[:12]})")
    candidate = previous["candidate"]
    lines = ["", "## Changes since the previous build", "",
             f"Artifact {verdict}; candidate {candidate['before'] or '–'} → {candidate['after'] or '–'}.", "",
             "| | previous | now | change |", "|---|---|---|---|"]
    formats = {"bytes": ("size (MB)", 3, 1e6), "latency_ms_p50": ("latency p50 (ms)", 3, 1),
               "cosine_mean": ("cosine mean", 5, 1), "agreement": ("agreement", 4, 1), "accuracy": ("accuracy", 4, 1)}
    for key, change in previous["changes"].items():
        name, digits, scale = formats[key]
        before, after, delta = (None if value is None else value / scale
                                for value in (change["before"], change["after"], change["change"]))
        signed = "–" if delta is None else f"{delta:+.{digits}f}"
        lines.append(f"| {name} | {_number(before, digits)} | {_number(after, digits)} | {signed} |")
    return lines


def _search_lines(search: dict) -> list[str]:
    """The search's Pareto front as a table, and what the study covered."""
    states = ", ".join(f"{count} {state}" for state, count in search["states"].items())
    lines = ["", f"## Search: Pareto front of {search['feasible']} trials passing every gate", "",
             f"Study `{search['study']}` in `{search['storage']}`: {search['trials']} trials ({states}); "
             f"shipped trial {search['chosen_trial']}, the best on {search['prefer']}. Every trial is in search.json; "
             "the plot is pareto.png.", "",
             "| trial | candidate | recipe | length | p50 ms | predicted ms | size MB | quality loss |",
             "|---|---|---|---|---|---|---|---|"]
    for row in sorted(search["front"], key=lambda row: row["latency_ms"]):
        mark = " (shipped)" if row["trial"] == search["chosen_trial"] else ""
        lines.append(f"| {row['trial']}{mark} | {row['candidate']} | {row['recipe'] or '–'} | "
                     f"{row.get('sequence_length') or '–'} | "
                     f"{row['latency_ms']:.3f} | {_number(row['predicted_latency_ms'], 3)} | {row['size_mb']:.2f} | "
                     f"{row['quality_loss']:.4g} |")
    return lines


def _op_lines(op_profile: dict | None, rows: int = 10) -> list[str]:
    """The op types that took the most time, from the runtime's own profiler."""
    if not op_profile or not op_profile.get("by_type"):
        return []
    total = sum(row["ms"] for row in op_profile["by_type"]) or 1.0
    lines = ["", f"## Time by op type ({op_profile['source']}, {op_profile['runs']} runs)", "",
             "| op type | ops | ms per inference | share |", "|---|---|---|---|"]
    lines += [f"| {row['type']} | {row['count']} | {row['ms']:.3f} | {row['ms'] / total:.0%} |"
              for row in op_profile["by_type"][:rows]]
    lines += ["", "Slowest ops: " + "; ".join(f"`{row['name']}` ({row['type']}) {row['ms']:.3f} ms"
                                               for row in op_profile["top"][:5]) + "."]
    return lines

