"""What a search does, as options: trial budget, where the study lives, which Pareto point ships, early stopping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFERENCES = ("latency", "size", "quality")
# A fine-tune whose quality loss halfway through is more than this many times the gate's allowance rarely recovers:
# the second half of a distillation run lowers the loss by less than the first half did (diminishing returns).
DEFAULT_PRUNE_FACTOR = 2.0
DEFAULT_TRIALS = 20


@dataclass(frozen=True)
class SearchSettings:
    """An Optuna study per target over the space its precisions and passes declare."""

    trials: int = DEFAULT_TRIALS  # finished trials per study (resumed studies count what they hold)
    storage: str | None = None  # Optuna storage URL; None: sqlite:///OUT/search.db
    study: str = "deploykit"  # each target's study is <study>.<target>
    prefer: Literal["latency", "size", "quality"] = "latency"  # the Pareto point shipped among those passing gates
    prune_factor: float = DEFAULT_PRUNE_FACTOR  # stop a fine-tune this many times over the quality budget (0: never)
    passes: tuple[str, ...] | None = None  # passes to search; None: those in the target's recipes (+ qat if integer)
    startup_trials: int | None = None  # random trials before TPE models the front; None: a third of the budget, 3..10
