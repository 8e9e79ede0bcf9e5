"""report.md of a decoder build: what shipped, what it costs in fidelity, what it gains in speed and size."""

from __future__ import annotations


def _ratio(entry: dict) -> str:
    speedup = entry.get("speedup")
    if not speedup:
        return ""
    low, high = speedup["range"]
    return f"{speedup['median']:.2f}× ({low:.2f}–{high:.2f})"


def markdown_report(report: dict) -> str:
    model = report["model"]
    lines = [
        f"# {model['architecture']} decoder for {report['target']}",
        "",
        f"- Source: `{model['source']}` ({model.get('format', '')}, {model['parameters']:,} parameters)"
        + (f"; already quantized: {model.get('file_type')}" if model.get("already_quantized") else ""),
    ]
    if report["passed"]:
        lines += _shipped_lines(report)
    else:
        lines += ["", "**No weight precision passed the gates; nothing was shipped.** Loosen a gate "
                  "(--max-perplexity-ratio, --min-top1-agreement) or choose the precision with --weights."]
    lines += ["", "## Candidates tried, in order", "", "| weights | MB | perplexity ratio | top-1 | gates failed |",
              "|---|---|---|---|---|"]
    for tried in report["candidates"]:
        f = tried["fidelity"]
        lines.append(f"| {tried['weights']} | {tried['bytes'] / 1e6:.1f} | {f['perplexity_ratio']:.4f} | "
                     f"{f['top1_agreement']:.4f} | {'; '.join(tried['gates_failed']) or 'none'} |")
    if report["passed"]:
        lines += _timing_lines(report["timing"])
    compiled = report.get("device_compile")
    if compiled:
        lines += ["", f"Device compile: {compiled['compiler']}, {compiled['status']}: {compiled['reason']}"
                  + (f" (`{compiled['command']}`)" if compiled.get("command") else "")]
    return "\n".join(lines) + "\n"


def _shipped_lines(report: dict) -> list[str]:
    artifact, fidelity = report["artifact"], report["fidelity"]
    lines = [
        f"- Artifact: `{artifact['file']}`, {artifact['bytes'] / 1e6:.1f} MB, weights {artifact['weights']}",
        f"- How: {artifact['method']}",
        f"- Cache: {artifact['cache_length']} tokens"
        + (f"; prefill in chunks of {artifact['prefill_length']}" if artifact.get("prefill_length") else ""),
        "",
        "## Fidelity (the exported artifact against the original, on held-out text)",
        "",
        f"Measured on {fidelity['measured_on']}, against {fidelity['against']}; {fidelity['texts']} texts, "
        f"{fidelity['positions']} predicted positions, from {fidelity['data']}.",
        "",
        "| metric | value | gate |",
        "|---|---|---|",
        f"| perplexity ratio | {fidelity['perplexity_ratio']:.4f} ({fidelity['perplexity']:.2f} vs "
        f"{fidelity['original_perplexity']:.2f}) | ≤ {report['gates']['max_perplexity_ratio']:g} |",
        f"| top-1 agreement | {fidelity['top1_agreement']:.4f} | ≥ {report['gates']['min_top1_agreement']:g} |",
        f"| mean KL (nats) | {fidelity['mean_kl']:.5f} | reported |",
    ]
    if fidelity.get("greedy_match") is not None:
        gate = report["gates"]["min_greedy_match"]
        divergence = ", ".join("none" if d is None else str(d) for d in fidelity["first_divergence"])
        lines.append(f"| greedy match, first {fidelity['greedy_tokens']} tokens | {fidelity['greedy_match']:.3f} "
                     f"(first difference per prompt: {divergence}) | {'≥ %g' % gate if gate is not None else 'reported'} |")
        margins = fidelity.get("divergence_margins") or []
        if margins:
            lines += ["", "Where a greedy continuation first differs, the original's own logits there separate its token "
                      "from the artifact's by " + ", ".join(f"{m:.2f}" for m in margins) + " (a margin well under 1 "
                      "is a near tie that the artifact's rounding flipped; after it the continuations part ways)."]
    return lines


def _timing_lines(timing: dict) -> list[str]:
    lines = ["", f"## Speed ({timing['rounds']} alternating rounds against the runtime's float32 export)", ""]
    where = timing.get("measured_on")
    if where:
        place = ("this machine" if where.get("runner") == "local" else
                 f"the device {where.get('device')} over {where.get('runner')} ({where.get('address')}: "
                 f"{where.get('host')}, {where.get('cores')} cores)")
        lines += [f"Timed on {place} with {where.get('runtime')}, {where.get('threads')} threads.", ""]
    lines += ["| metric | artifact (median) | float32 (median) | speed-up (range over rounds) |", "|---|---|---|---|"]
    artifacts = timing["artifacts"]
    for key, entry in artifacts["artifact"].items():
        base = artifacts.get("fp32", {}).get(key)
        unit = "ms" if key.startswith("ttft") else "tok/s"
        lines.append(f"| {key} | {entry['median']:.1f} {unit} | "
                     f"{'' if base is None else '%.1f %s' % (base['median'], unit)} | {_ratio(entry)} |")
    memory = timing.get("memory", {})
    if "artifact" in memory:
        base = memory.get("fp32")
        row = memory["artifact"]
        lines += ["", f"Peak memory of a process running it ({row['prompt_tokens']}-token prompt, "
                  f"{row['decode_steps']} decode steps): {row['peak_rss_mb']:.0f} MB, of which {row['model_mb']:.0f} MB "
                  "after the runtime was imported"
                  + (f"; float32: {base['peak_rss_mb']:.0f} MB ({base['model_mb']:.0f} MB)." if base else ".")]
    return lines
