"""The Pareto front of a study's trials, and the point a build ships from it.

Every objective is minimised: p50 latency (ms), artifact size (MB), quality loss (accuracy
points lost, or 1 - cosine, or 1 - agreement). A point is on the front when no other
point is at least as good on every objective and better on one.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

OBJECTIVES = ("latency_ms", "size_mb", "quality_loss")
PREFERENCE_ORDER = {  # the objective each preference ranks by first, then ties by the others
    "latency": (0, 2, 1),
    "size": (1, 2, 0),
    "quality": (2, 0, 1),
}

Point = TypeVar("Point")


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether `a` is no worse than `b` on every objective and better on at least one."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points: list[Point], values) -> list[Point]:
    """The points no other point dominates, in input order; `values(point)` gives its objective values.
    Points with identical values are all kept (they are different ways to the same trade-off)."""
    scored = [(point, tuple(values(point))) for point in points]
    return [point for point, score in scored if not any(dominates(other, score) for _, other in scored)]


def preferred(points: list[Point], values, prefer: str = "latency") -> Point:
    """The point best on the preferred objective, ties broken by the others (quality before size for latency)."""
    order = PREFERENCE_ORDER[prefer]
    return min(points, key=lambda point: tuple(tuple(values(point))[index] for index in order))
