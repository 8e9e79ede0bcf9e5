"""report.html: the build report as one self-contained page (inline CSS and SVG figures, nothing fetched when it
opens), for one target or every target of an output folder side by side."""

from __future__ import annotations

from pathlib import Path

from deploykit.atomic_files import write_atomically
from deploykit.report.speed import speed_warnings
from deploykit.report.validation import fidelity_where
from deploykit.report.formatting import megabytes, number
from deploykit.report.plots import report_figures

TEMPLATE = "report.html.j2"


def render_html(reports: list[dict]) -> str:
    """The page for these targets' reports (in the order given); the same reports give the same text."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
    from markupsafe import Markup

    environment = Environment(loader=PackageLoader("deploykit.report", "templates"),
                              autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    environment.filters.update(number=number, megabytes=megabytes, signed=_signed)
    targets = [{"report": report, "anchor": f"target-{index}", "speed_warnings": speed_warnings(report),
                "fidelity_where": fidelity_where(report.get("fidelity_measured_on")).replace("**", ""),
                "figures": [{"id": figure.id, "title": figure.title, "caption": figure.caption,
                             "svg": Markup(figure.svg)} for figure in report_figures(report, f"target-{index}")]}
               for index, report in enumerate(reports)]
    return environment.get_template(TEMPLATE).render(targets=targets)


def write_html(path: Path, reports: list[dict]) -> Path:
    """Write the page to `path` atomically: a reader sees the old page or the new one, never half of one."""
    return write_atomically(path, render_html(reports))


def _signed(value, digits: int = 3, suffix: str = "") -> str:
    """A change with its sign (+0.120 ms, −1.50 MB); '–' when either side was not measured."""
    if value is None:
        return "–"
    text = f"{abs(value):.{digits}f}{suffix}" if isinstance(value, float) else f"{abs(value)}{suffix}"
    return ("+" if value > 0 else "−" if value < 0 else "±") + text
