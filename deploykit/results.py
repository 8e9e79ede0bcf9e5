"""What a build returns for each target: where its folder is and what its report.json says.

Below the build and the report layers, which both hand these around.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GATE_MISSED_EXIT_CODE = 3  # a build finished but its artifact missed a gate
INCONCLUSIVE_EXIT_CODE = 5  # no gate missed, but one could not be decided on this machine (a noisy latency)


class View:
    """Attribute access over a report's nested dicts: `result.metrics.latency_ms.p50`."""

    def __init__(self, data: dict):
        self._data = data

    def __getattr__(self, name: str):
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(name) from None
        return View(value) if isinstance(value, dict) else value

    def __repr__(self) -> str:
        return f"View({self._data!r})"


@dataclass
class BuildResult:
    """One target's outcome: where its files are and what report.json says."""

    target: str
    folder: Path
    report: dict

    @property
    def passed(self) -> bool:
        return self.report["gates"]["passed"]

    @property
    def inconclusive(self) -> bool:
        """No gate missed but one undecided: the build exits with 5 (`INCONCLUSIVE_EXIT_CODE`)."""
        return bool(self.report["gates"].get("inconclusive"))

    @property
    def exit_code(self) -> int:
        """0 every gate passed, 3 a gate missed, 5 none missed but one could not be decided."""
        return 0 if self.passed else INCONCLUSIVE_EXIT_CODE if self.inconclusive else GATE_MISSED_EXIT_CODE

    @property
    def artifact(self) -> View:
        return View({**self.report["artifact"], "path": self.folder / self.report["artifact"]["path"]})

    @property
    def metrics(self) -> View:
        return View(self.report["metrics"])
