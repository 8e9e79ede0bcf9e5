"""Whether what ships is slower than what it replaces: the fp32 baseline timed on the same runner in the same run, or
a faster candidate that the build tried first and passed over because it missed a gate.

A compression that pays in size can cost speed (int4 weights dequantized on a CPU
without int4 kernels run slower than fp32); the report must say so instead of printing
a speed-up below one without comment. Ratios carry a bootstrap interval from the timed
runs, so "slower" is told apart from timing noise.
"""

from __future__ import annotations

from deploykit.profiling.stats import ratio_interval

# The interval's confidence: 95% is the usual level for "the difference is not noise".
CONFIDENCE = 0.95


def speed_findings(baseline_profile: dict, chosen, tried: list, paired: dict | None = None,
                   level: float = CONFIDENCE) -> dict:
    """The shipped artifact's speed-up over the baseline with its interval (from `paired`, the alternating rounds,
    when the runner ran them; else from the two separate timings), whether it is slower, and the candidates tried
    before it that were faster but missed a gate."""
    if paired is not None:
        speedup, interval = paired["speedup"], paired["interval"]
    else:
        speedup, interval = _compare(baseline_profile, chosen.measured.profile, level)
    displaced = []
    for candidate in tried:
        if candidate is chosen or candidate.passed:
            continue
        ratio, bounds = _compare(chosen.measured.profile, candidate.measured.profile, level)  # > 1: it was faster
        if ratio is not None and ratio > 1:
            displaced.append({"candidate": candidate.label, "latency_ms_p50": candidate.measured.profile["latency_ms"]["p50"],
                              "faster_by": round(ratio, 4), "interval": bounds,
                              "beyond_noise": bounds is None or bounds[0] > 1,
                              "missed": [check["name"] for check in candidate.checks if not check["passed"]]})
    slower = speedup is not None and speedup < 1
    return {"speedup_interval": interval, "level": level, "slower_than_baseline": slower,
            "slower_beyond_noise": slower and (interval is None or interval[1] < 1),
            "timing": "alternating rounds" if paired is not None else "separate runs", "paired": paired,
            "faster_candidates_displaced": displaced}


def _compare(reference: dict, other: dict, level: float) -> tuple[float | None, list[float] | None]:
    """reference p50 / other p50 (from the timed runs with an interval when both runners kept them)."""
    samples = reference.get("latency_samples_ms"), other.get("latency_samples_ms")
    if all(samples) and min(map(len, samples)) >= 2:
        ratio, low, high = ratio_interval(*samples, level=level)
        return round(ratio, 4), [round(low, 4), round(high, 4)]
    p50s = reference["latency_ms"]["p50"], other["latency_ms"]["p50"]
    return (round(p50s[0] / p50s[1], 4) if p50s[1] else None), None


def speed_warnings(report: dict) -> list[str]:
    """The findings in words, for report.md, report.html and the CLI (empty when nothing is slower and no timing
    had two peaks)."""
    metrics, speed = report["metrics"], report.get("speed") or {}
    lines = []
    if speed.get("slower_than_baseline"):
        interval = speed.get("speedup_interval")
        spread = f" (interval {interval[0]:.2f}–{interval[1]:.2f}×)" if interval else ""
        certainty = "" if speed.get("slower_beyond_noise") else ", within timing noise"
        lines.append(f"The shipped artifact is slower than the fp32 baseline on the same runner: "
                     f"{metrics['speedup_vs_baseline']:.2f}×{spread}{certainty}.")
    for name, latency in (("shipped artifact", metrics.get("latency_ms")),
                          ("fp32 baseline", (report.get("baseline") or {}).get("latency_ms"))):
        peaks = (latency or {}).get("two_peaks")
        if peaks:
            faster, slower = peaks["peaks_ms"]
            lines.append(f"The {name}'s timed runs have two peaks, around {faster:.3g} ms and {slower:.3g} ms "
                         f"({peaks['share_in_faster']:.0%} of runs in the faster): the machine or runtime switched "
                         "between two speeds while it was timed (another job, frequency scaling, a fallback), and its "
                         "p50 describes neither; rerun on a quiet machine.")
    for row in speed.get("faster_candidates_displaced", []):
        noise = "" if row["beyond_noise"] else ", within timing noise"
        lines.append(f"Candidate {row['candidate']} was {row['faster_by']:.2f}× faster ({row['latency_ms_p50']:.2f} ms "
                     f"p50{noise}) but missed {', '.join(row['missed']) or 'a gate'}.")
    return lines


def speed_method(report: dict) -> str | None:
    """How the speed-up was measured, in one sentence (None for reports from before paired timing)."""
    speed = report.get("speed") or {}
    paired = speed.get("paired")
    if paired:
        low, high = paired["interval"]
        text = (f"Speed-up {paired['speedup']:.2f}× ({low:.2f}–{high:.2f}, {paired['level']:.0%} bootstrap interval) "
                f"from {paired['rounds']} alternating rounds against the fp32 baseline on the same runner; the "
                f"per-round ratio varied by {paired['ratio_cv']:.1%} (coefficient of variation).")
        if paired.get("inconclusive"):
            text += (f" Inconclusive: another process held this machine's cores in {paired['contended_rounds']} of "
                     f"{paired['rounds_timed']} rounds (a worker thread waited for a core "
                     f"{paired['median_wait_share']:.0%} of the time), so this is the ratio on a busier machine, "
                     "not the artifact's; rerun on a quiet machine.")
        elif paired.get("contended_rounds"):
            text += (f" {paired['contended_rounds']} rounds in which another process held the cores were left "
                     "out.")
        if paired.get("drift"):
            text += " The ratio drifted between the first and the second half of the rounds: the machine's speed " \
                    "changed while it was timed (throttling, another job); rerun on a quiet machine to confirm."
        return text
    if speed.get("timing") == "separate runs":
        return ("Speed-up from the two artifacts timed one after the other (this runner cannot time them side by "
                "side): load that hit one run and not the other is in the ratio.")
    return None
