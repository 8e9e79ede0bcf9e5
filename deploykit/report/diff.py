"""What changed since the previous build of a target: the report's `previous` section, so a rebuild in CI shows
at a glance whether the shipped artifact, its size, its speed or its quality moved."""

from __future__ import annotations

from pathlib import Path

from deploykit.errors import DeployKitError
from deploykit.output_folder import is_deploykit_build
from deploykit.user_files import read_json

MAX_TEXT = 200  # characters of a text value (a sha256, a candidate's name) taken from the previous report
# Compared measures: name -> where report.json keeps it.
MEASURES = {
    "bytes": ("artifact", "bytes"),
    "latency_ms_p50": ("metrics", "latency_ms", "p50"),
    "cosine_mean": ("metrics", "fidelity", "cosine_mean"),
    "agreement": ("metrics", "fidelity", "agreement"),
    "accuracy": ("metrics", "accuracy"),
}


def read_previous(folder: Path) -> dict | None:
    """The report.json of the deploykit build now in `folder`, or None when there is none or it cannot be read (the
    build goes on: a missing comparison is no reason to fail)."""
    if not is_deploykit_build(folder):
        return None
    try:  # the folder may come from elsewhere (a downloaded CI artifact): read bounded, never a FIFO or a link
        return read_json(folder / "report.json", dict, untrusted=True)
    except DeployKitError:
        return None


def report_diff(previous: dict, current: dict) -> dict:
    """Each measure before and after with its change, and whether the shipped artifact's bytes changed. The previous
    report may come from elsewhere: each value is taken only in the type it must have (else None)."""
    changes = {}
    for name, keys in MEASURES.items():
        before, after = _lookup(previous, keys, _number), _lookup(current, keys, _number)
        if before is None and after is None:
            continue
        change = after - before if before is not None and after is not None else None
        changes[name] = {"before": before, "after": after,
                         "change": round(change, 6) if isinstance(change, float) else change}
    before_sha, after_sha = _lookup(previous, ("artifact", "sha256"), _text), _lookup(current, ("artifact", "sha256"), _text)
    return {
        "deploykit_version": _lookup(previous, ("deploykit_version",), _text),
        "candidate": {"before": _lookup(previous, ("artifact", "candidate"), _text),
                      "after": _lookup(current, ("artifact", "candidate"), _text)},
        "sha256": {"before": before_sha, "after": after_sha},
        "artifact_changed": before_sha != after_sha,
        "gates_passed": {"before": _lookup(previous, ("gates", "passed"), _flag),
                         "after": _lookup(current, ("gates", "passed"), _flag)},
        "changes": changes,
    }


def _lookup(report: dict, keys: tuple[str, ...], kind):
    """The value at `keys` when `kind` accepts it, else None (an older report lacks newer fields; one from elsewhere
    may hold anything)."""
    value = report
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if kind(value) else None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e300


def _text(value) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TEXT


def _flag(value) -> bool:
    return isinstance(value, bool)
