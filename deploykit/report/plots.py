"""The HTML report's figures, drawn by matplotlib from report.json alone and rendered to inline SVG.

Each figure exists only when its data does (a runner without per-run timings draws no latency distribution). The
SVG text is the same for the same report: ids come from a fixed salt per figure (unique in the page, so several
SVGs can sit inline in one document), no date is written, and text stays text (`svg.fonttype: none`), so no font
is embedded and nothing is fetched when the page opens.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

ARTIFACT_COLOUR, BASELINE_COLOUR, FRONT_COLOUR, MISSED_COLOUR, SHIPPED_COLOUR = (
    "#4c78a8", "#bbbbbb", "#e45756", "#999999", "#f2b701")


@dataclass(frozen=True)
class Figure:
    """One plot of the report: an id unique in its page, a title, a sentence saying how to read it, the SVG."""

    id: str
    title: str
    caption: str
    svg: str


def report_figures(report: dict, prefix: str) -> list[Figure]:
    """Every figure the report has data for; `prefix` keeps ids unique when several targets share a page."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    drawers = (("latency", _latency), ("candidates", _candidates), ("pareto", _pareto), ("ops", _ops),
               ("sensitivity", _sensitivity), ("fidelity", _fidelity))
    figures = []
    with pyplot.style.context("default"):
        for name, draw in drawers:
            drawn = draw(report)
            if drawn is not None:
                figure, title, caption = drawn
                identifier = f"{prefix}-{name}"
                figures.append(Figure(identifier, title, caption, _svg(figure, identifier)))
    return figures


def _svg(figure, salt: str) -> str:
    """The figure as an <svg> element (no XML prolog: it is embedded in HTML), then closed."""
    import matplotlib
    from matplotlib import pyplot

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    pyplot.close(figure)
    text = buffer.getvalue()
    return _scoped(text[text.index("<svg"):], salt)


def _scoped(svg: str, prefix: str) -> str:
    """Every id in the SVG, and every reference to one, prefixed: matplotlib numbers its groups per figure
    (`figure_1`, `axes_1`), and several figures share one page's id namespace."""
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', svg)
    return re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", svg)


def _figure_with_axes(columns: int = 1, width: float = 7.5, height: float = 3.4):
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, columns, figsize=(width, height), dpi=100, squeeze=False)
    return figure, list(axes[0])


def _latency(report: dict):
    """Histogram of every timed run, baseline and artifact on shared bins, p50 marked."""
    import numpy as np

    artifact = report["metrics"].get("latency_samples_ms")
    baseline = report["baseline"].get("latency_samples_ms")
    if not artifact:
        return None
    series = [("artifact", artifact, ARTIFACT_COLOUR)] + ([("fp32 baseline", baseline, BASELINE_COLOUR)]
                                                          if baseline else [])
    values = np.concatenate([np.asarray(samples, dtype=float) for _, samples, _ in series])
    bins = np.linspace(values.min(), values.max() if values.max() > values.min() else values.min() + 1e-3, 41)
    figure, (axis,) = _figure_with_axes()
    for name, samples, colour in series:
        p50 = float(np.median(samples))
        axis.hist(samples, bins=bins, color=colour, alpha=0.7, label=f"{name} (p50 {p50:.2f} ms)")
        axis.axvline(p50, color=colour, linestyle="--", linewidth=1)
    axis.set_xlabel("latency per run (ms)")
    axis.set_ylabel("runs")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    runs = len(artifact)
    return figure, "Latency distribution", f"Each of the {runs} timed batch-1 runs; dashed lines are the p50s."


def _quality_measure(report: dict) -> tuple[str, str]:
    """The quality measure a report's candidates are judged by: (key in a candidate, axis label)."""
    if report["model"]["task"] == "embedding":
        return "cosine_mean", "mean cosine vs original"
    if report["data"]["labels"]:
        return "accuracy_drop", "accuracy drop (points)"
    return "agreement", "agreement with original"


def _candidate_quality(candidate: dict, key: str) -> float | None:
    return candidate["accuracy_drop"] if key == "accuracy_drop" else candidate["fidelity"].get(key)


def _candidates(report: dict):
    """Every candidate tried: latency against size and against quality, the shipped one starred."""
    candidates = [c for c in report["candidates"] if c.get("latency_ms_p50") is not None]
    if not candidates:
        return None
    key, label = _quality_measure(report)
    shipped = report["artifact"].get("candidate")
    figure, axes = _figure_with_axes(2, width=9.5)
    for axis, (value_of, y_label) in zip(axes, (
            (lambda c: c["bytes"] / 1e6, "artifact size (MB)"),
            (lambda c: _candidate_quality(c, key), label))):
        for candidate in candidates:
            value = value_of(candidate)
            if value is None:
                continue
            x = candidate["latency_ms_p50"]
            if candidate["candidate"] == shipped:
                axis.scatter([x], [value], marker="*", s=220, c=SHIPPED_COLOUR, edgecolors="black", zorder=4)
            else:
                axis.scatter([x], [value], marker="o" if candidate["passed"] else "x", s=40,
                             c=ARTIFACT_COLOUR if candidate["passed"] else MISSED_COLOUR, zorder=3)
            axis.annotate(candidate["candidate"], (x, value), fontsize=7, xytext=(4, 4), textcoords="offset points")
        axis.set_xlabel("p50 latency (ms)")
        axis.set_ylabel(y_label)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure, "Candidates tried", ("Each candidate the build measured: ★ shipped, ● passed every gate, "
                                        "× missed a gate.")


def _pareto(report: dict):
    """The search's Pareto front: latency against quality loss and against size, the shipped trial starred."""
    search = report.get("search")
    if not search or not search.get("front"):
        return None
    front = sorted(search["front"], key=lambda row: row["latency_ms"])
    figure, axes = _figure_with_axes(2, width=9.5)
    for axis, (key, label) in zip(axes, (("quality_loss", "quality loss (lower is better)"),
                                         ("size_mb", "artifact size (MB)"))):
        latencies = [row["latency_ms"] for row in front]
        axis.plot(latencies, [row[key] for row in front], c=FRONT_COLOUR, lw=1, alpha=0.5, zorder=2)
        axis.scatter(latencies, [row[key] for row in front], c=FRONT_COLOUR, s=40, zorder=3)
        for row in front:
            if row["trial"] == search["chosen_trial"]:
                axis.scatter([row["latency_ms"]], [row[key]], marker="*", s=220, c=SHIPPED_COLOUR,
                             edgecolors="black", zorder=4)
            axis.annotate(str(row["trial"]), (row["latency_ms"], row[key]), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")
        axis.set_xlabel("p50 latency (ms)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure, "Search: Pareto front", (f"The {len(front)} trials no other trial beats on every objective, "
                                            f"by trial number; ★ shipped (trial {search['chosen_trial']}).")


def _ops(report: dict, rows: int = 12):
    """Time per inference by op type, artifact beside baseline, from the runtime's own profiler."""
    artifact = (report["metrics"].get("op_profile") or {}).get("by_type")
    if not artifact:
        return None
    baseline = {row["type"]: row["ms"] for row in (report["baseline"].get("op_profile") or {}).get("by_type") or []}
    shown = artifact[:rows][::-1]  # slowest at the top
    figure, (axis,) = _figure_with_axes(height=0.9 + 0.28 * len(shown))
    positions = range(len(shown))
    height = 0.4 if baseline else 0.7
    axis.barh([p + (height / 2 if baseline else 0) for p in positions], [row["ms"] for row in shown],
              height=height, color=ARTIFACT_COLOUR, label="artifact")
    if baseline:
        axis.barh([p - height / 2 for p in positions], [baseline.get(row["type"], 0.0) for row in shown],
                  height=height, color=BASELINE_COLOUR, label="fp32 baseline")
        axis.legend(fontsize=8)
    axis.set_yticks(list(positions), [row["type"] for row in shown], fontsize=8)
    axis.set_xlabel("ms per inference")
    axis.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    source = report["metrics"]["op_profile"].get("source", "the runtime's profiler")
    return figure, "Time by op type", f"The {len(shown)} slowest op types of the artifact ({source})."


def _sensitivity(report: dict):
    """Mixed precision: each group's fidelity when it alone is kept high, the kept groups highlighted."""
    mixed = report["artifact"].get("mixed_precision")
    if not mixed or not mixed.get("ranking"):
        return None
    ranking = mixed["ranking"][::-1]  # most sensitive at the top
    kept = set(mixed.get("kept_high") or [])
    figure, (axis,) = _figure_with_axes(height=1.2 + 0.22 * len(ranking))
    axis.barh(range(len(ranking)), [row["fidelity_kept_high"] for row in ranking],
              color=[FRONT_COLOUR if row["group"] in kept else ARTIFACT_COLOUR for row in ranking])
    axis.axvline(mixed["fidelity_all_quantized"], color="black", linestyle="--", linewidth=1,
                 label=f"all quantized ({mixed['fidelity_all_quantized']:.4f})")
    axis.axvline(mixed["target"], color=SHIPPED_COLOUR, linewidth=1.5, label=f"target ({mixed['target']:.4f})")
    values = [row["fidelity_kept_high"] for row in ranking] + [mixed["fidelity_all_quantized"], mixed["target"]]
    span = max(values) - min(values) or 1e-3
    axis.set_xlim(min(values) - 0.1 * span, max(values) + 0.1 * span)
    axis.set_yticks(range(len(ranking)), [row["group"] for row in ranking], fontsize=7)
    axis.set_xlabel(f"{mixed['metric']} with only this group kept high")
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    return figure, "Per-layer sensitivity", (f"Red: the {len(kept)} groups kept in high precision; the rest run "
                                             "at low precision.")


def _fidelity(report: dict):
    per_sample = report["metrics"].get("per_sample") or {}
    if per_sample.get("cosine"):
        return _cosine_histogram(per_sample["cosine"])
    if per_sample.get("confusion"):
        return _confusion(per_sample["confusion"])
    return None


def _cosine_histogram(cosines: list[float]):
    """How the artifact's cosine to the original spreads over the evaluation samples."""
    import numpy as np

    values = np.asarray(cosines, dtype=float)
    figure, (axis,) = _figure_with_axes()
    axis.hist(values, bins=40, color=ARTIFACT_COLOUR)
    axis.axvline(float(values.mean()), color="black", linestyle="--", linewidth=1,
                 label=f"mean {values.mean():.4f}")
    axis.axvline(float(values.min()), color=FRONT_COLOUR, linestyle=":", linewidth=1, label=f"min {values.min():.4f}")
    axis.set_xlabel("cosine similarity to the original's embedding")
    axis.set_ylabel("samples")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure, "Fidelity per sample", f"Cosine of each of the {len(values)} evaluation samples."


def _confusion(confusion: dict):
    """The artifact's predictions against the original's and, with labels, against the labels."""
    import numpy as np

    panels = [("original model's prediction", confusion["vs_original"])]
    if confusion.get("vs_labels") is not None:
        panels.append(("label", confusion["vs_labels"]))
    names = confusion["classes"]
    size = min(3.2 + 0.35 * len(names), 7.0)
    figure, axes = _figure_with_axes(len(panels), width=size * len(panels) + 0.5, height=size)
    for axis, (rows_are, matrix) in zip(axes, panels):
        counts = np.asarray(matrix)
        axis.pcolormesh(counts, cmap="Blues", edgecolors="white", linewidth=0.5)  # vector cells, not an image
        axis.set_aspect("equal")
        axis.invert_yaxis()  # the first class on top, as a table reads
        if len(names) <= 20:
            for (row, column), count in np.ndenumerate(counts):
                axis.text(column + 0.5, row + 0.5, str(count), ha="center", va="center", fontsize=8,
                          color="white" if count > counts.max() / 2 else "black")
        ticks = [index + 0.5 for index in range(len(names))]
        axis.set_xticks(ticks, names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center",
                        fontsize=8)
        axis.set_yticks(ticks, names, fontsize=8)
        axis.set_xlabel("artifact's prediction")
        axis.set_ylabel(rows_are)
    figure.tight_layout()
    return figure, "Predictions per class", "Counts of evaluation samples; off-diagonal cells are changed predictions."
