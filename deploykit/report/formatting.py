"""How reports print numbers: one place, so report.md and report.html show a value the same way."""

from __future__ import annotations


def number(value, digits: int = 3, suffix: str = "") -> str:
    """A float to `digits` decimals (other values as they are); '–' for a value that was not measured."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def megabytes(size: int | None) -> str:
    return "–" if size is None else f"{size / 1e6:.2f} MB"
