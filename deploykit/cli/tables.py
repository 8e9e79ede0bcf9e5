"""The tables `build`, `search` and `report` print: the summary per target and a search's Pareto front."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table


def front_table(target: str, search: dict) -> Table:
    """A search's Pareto front (trials passing every gate), fastest first, the shipped point marked."""
    states = ", ".join(f"{count} {state}" for state, count in search["states"].items())
    table = Table(title=f"{target}: Pareto front of {search['feasible']} trials passing the gates ({states})")
    for column in ("trial", "candidate", "recipe", "length", "p50 ms", "predicted ms", "size MB", "quality loss"):
        table.add_column(column)
    for row in sorted(search["front"], key=lambda row: row["latency_ms"]):
        shipped = row["trial"] == search["chosen_trial"]
        table.add_row(f"{row['trial']}{' ★' if shipped else ''}", escape(row["candidate"]), escape(row["recipe"] or "–"),
                      str(row.get("sequence_length") or "–"),
                      f"{row['latency_ms']:.3f}", _optional(row["predicted_latency_ms"], 3), f"{row['size_mb']:.2f}",
                      f"{row['quality_loss']:.4g}", style="bold" if shipped else None)
    return table


def summary_table(reports: list[dict]) -> Table:
    table = Table(title="fp32 baseline vs deploykit artifact (same runtime, same run)")
    for column in ("target", "artifact", "size MB (fp32 → art.)", "p50 ms (fp32 → art.)", "speed-up",
                   "cosine mean", "agreement", "accuracy drop", "gates"):
        table.add_column(column)
    for report in reports:
        baseline, metrics, artifact = report["baseline"], report["metrics"], report["artifact"]
        fidelity = metrics["fidelity"]
        table.add_row(
            escape(str(report["target"])),
            escape(f"{artifact['format']} {artifact['precision']}"),
            f"{baseline['bytes'] / 1e6:.1f} → {artifact['bytes'] / 1e6:.1f}",
            f"{baseline['latency_ms']['p50']:.2f} → {metrics['latency_ms']['p50']:.2f}",
            _speedup(report),
            _optional(fidelity["cosine_mean"]),
            _optional(fidelity["agreement"]),
            _optional(metrics["accuracy_drop"], 2),
            "[green]pass[/]" if report["gates"]["passed"] else "[yellow]inconclusive[/]"
            if report["gates"].get("inconclusive") else "[red]FAIL[/]",
        )
    return table


def _speedup(report: dict) -> str:
    """The speed-up with its interval; in red, marked, when the artifact is slower than the baseline or than a
    candidate it displaced (reports from before the flag have no `speed`)."""
    speed = report.get("speed") or {}
    interval = speed.get("speedup_interval")
    text = f"{report['metrics']['speedup_vs_baseline']:.2f}×" + (f" ({interval[0]:.2f}–{interval[1]:.2f})"
                                                                  if interval else "")
    if speed.get("slower_than_baseline"):
        return f"[red]{text} slower[/]"
    if speed.get("faster_candidates_displaced"):
        return f"[yellow]{text} (a faster candidate missed a gate)[/]"
    if (speed.get("paired") or {}).get("inconclusive"):
        return f"[yellow]{text} (machine busy: inconclusive)[/]"
    return text


def _optional(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
