"""The search's picture: every measured trial by latency against quality loss and against size, the gates'
feasible points and the Pareto front highlighted, the shipped point starred (matplotlib, rendered to PNG)."""

from __future__ import annotations

from pathlib import Path


def plot_front(rows: list[dict], front: list[dict], chosen: dict, path: Path, title: str) -> Path:
    """Write the two-panel Pareto plot to `path` (PNG, no timestamp in its metadata: the same trials give the
    same bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    measured = [row for row in rows if "result" in row and "same_as" not in row]
    on_front = {row["number"] for row in front}
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    for axis, (key, label) in zip(axes, (("quality_loss", "quality loss (lower is better)"),
                                         ("size_mb", "artifact size (MB)"))):
        groups = (
            ("missed a gate", "#bbbbbb", "x", [r for r in measured if not r["result"]["passed"]]),
            ("passed the gates", "#4c78a8", "o",
             [r for r in measured if r["result"]["passed"] and r["number"] not in on_front]),
            ("Pareto front", "#e45756", "o", [r for r in measured if r["number"] in on_front]),
        )
        for name, colour, marker, group in groups:
            if group:
                axis.scatter([r["result"]["latency_ms"] for r in group], [r["result"][key] for r in group],
                             c=colour, marker=marker, label=name, s=40, zorder=3)
        line = sorted(front, key=lambda r: r["result"]["latency_ms"])
        if len(line) > 1:
            axis.plot([r["result"]["latency_ms"] for r in line], [r["result"][key] for r in line], c="#e45756",
                      lw=1, alpha=0.5, zorder=2)
        axis.scatter([chosen["result"]["latency_ms"]], [chosen["result"][key]], marker="*", s=260, c="#f2b701",
                     edgecolors="black", label=f"shipped (trial {chosen['number']})", zorder=4)
        for row in measured:
            axis.annotate(str(row["number"]), (row["result"]["latency_ms"], row["result"][key]), fontsize=7,
                          xytext=(3, 3), textcoords="offset points")
        axis.set_xlabel("p50 latency (ms)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": None})
    pyplot.close(figure)
    return path
