"""One target's part of a build: the values every step of it reads, passed as one argument."""

from __future__ import annotations

from dataclasses import dataclass

from deploykit.backends.base import Backend
from deploykit.pipeline.session import BuildSession
from deploykit.latency_model import LatencyModel
from deploykit.planner import Plan
from deploykit.profiling.base import ProfileRunner
from deploykit.targets import Target


@dataclass(frozen=True)
class TargetJob:
    """The session shared by all targets, and what is this target's own: its backend, plan, runner and latency
    model (None without a saved profile). Frozen: a step that needs another plan makes a new job."""

    session: BuildSession
    target: Target
    backend: Backend
    plan: Plan
    runner: ProfileRunner
    latency_model: LatencyModel | None = None
