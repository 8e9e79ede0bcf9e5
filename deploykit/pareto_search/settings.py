"""What a search does, as options: trial budget, where the study lives, which Pareto point ships, early stopping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFERENCES = ("latency", "size", "quality")
# A fine-tune whose quality loss halfway through is this many times the gate's allowance is hopeless. Not less:
# measured on a MiniLM classifier (150-step fine-tunes), a light prune was 2.8x over its 1-point allowance at step 75
# while the same pass typically ends within it; half-trained 3-layer students were 24x over.
DEFAULT_PRUNE_FACTOR = 5.0
DEFAULT_TRIALS = 20
# Token-length percentiles tried as sequence lengths besides the build's own (p99 by default): p95 and p90 truncate
# one text in 20 and one in 10 at most, about as much as a quality gate of a point or two can absorb; lower
# percentiles would fail it by construction on most data.
DEFAULT_LENGTH_PERCENTILES = (90.0, 95.0)


@dataclass(frozen=True)
class SearchSettings:
    """An Optuna study per target over the space its precisions and passes declare."""

    trials: int = DEFAULT_TRIALS  # finished trials per study (resumed studies count what they hold)
    storage: str | None = None  # Optuna storage URL; None: sqlite:///OUT/search.db
    study: str = "deploykit"  # each target's study is <study>.<target>
    prefer: Literal["latency", "size", "quality"] = "latency"  # the Pareto point shipped among those passing gates
    prune_factor: float = DEFAULT_PRUNE_FACTOR  # stop a fine-tune this many times over the quality budget (0: never)
    passes: tuple[str, ...] | None = None  # passes to search; None: those in the target's recipes (+ qat if integer)
    length_percentiles: tuple[float, ...] = DEFAULT_LENGTH_PERCENTILES  # () or --sequence-length: build's length only
    startup_trials: int | None = None  # random trials before TPE models the front; None: a third of the budget, 3..10
