"""A target's search space: the precisions its backend produces there, and the passes that pay on it with the
ranges each pass declares for its parameters.

Which passes: those in the target's `recipes` (what its YAML says pays on that hardware),
plus quantization-aware training at int8 on integer-only targets, or the user's list.
Parameters the user fixed (`--recipe`, `--qat-steps`, a pass parameter) are not searched.
A trial is one candidate: a precision and a recipe, in the order `check_order` accepts,
at one sequence length: shorter lengths (lower token-length percentiles) are faster and
truncate more texts, which the quality objective measures against the original.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deploykit.errors import DeployKitError
from deploykit.latency_model import Architecture
from deploykit.passes.base import PASSES, pass_class
from deploykit.passes.recipe import check_order, parse_recipe, recipe
from deploykit.planner import Candidate
from deploykit.targets import Target


@dataclass(frozen=True)
class PassSpace:
    """One pass in the space: whether it can be left out, and its searched ranges."""

    name: str
    optional: bool
    ranges: dict[str, tuple]


@dataclass(frozen=True)
class SearchSpace:
    """Precisions and passes (in run order) of one target's study."""

    precisions: tuple[str, ...]
    passes: tuple[PassSpace, ...]
    fixed: dict  # pass name -> parameters the user set
    lengths: tuple[int, ...] = ()  # sequence lengths to try, the build's own first; one or none: not searched

    def length(self, trial, default: int) -> int:
        """The trial's sequence length (the build's own when lengths are not searched)."""
        if len(self.lengths) < 2:
            return default
        return trial.suggest_categorical("sequence_length", list(self.lengths))

    def suggest(self, trial) -> Candidate:
        """The trial's candidate; a pass simulating an export's rounding (qat, int4-qat) is offered only at the
        precisions it simulates."""
        precision = trial.suggest_categorical("precision", list(self.precisions))
        names, parameters = [], {}
        for space in self.passes:
            if not pass_class(space.name).pays_at(precision):
                continue
            if space.optional and not trial.suggest_categorical(f"{space.name}", [False, True]):
                continue
            values = dict(self.fixed.get(space.name, {}))
            for parameter, (low, high) in space.ranges.items():
                values[parameter] = _suggest(trial, f"{space.name}.{parameter}", low, high)
            names.append(space.name)
            parameters[space.name] = values
        return Candidate(precision, recipe(tuple(names), parameters))

    def seed(self, trial, candidate: Candidate) -> Candidate:
        """A fixed candidate (the target's own list) as a trial: its precision and which passes it uses are the
        trial's parameters (enqueued, so the sampler learns from them); its pass parameters are its own."""
        trial.suggest_categorical("precision", list(self.precisions))
        used = set(candidate.passes)
        for space in self.passes:
            if space.optional and pass_class(space.name).pays_at(candidate.precision):
                trial.suggest_categorical(space.name, [False, True])
        return Candidate(candidate.precision, tuple((name, items) for name, items in candidate.recipe if name in used))

    def seed_parameters(self, candidate: Candidate) -> dict | None:
        """The trial parameters that enqueue a fixed candidate, or None when it lies outside this space."""
        optional = {space.name for space in self.passes if space.optional}
        if candidate.precision not in self.precisions or not set(candidate.passes) <= {s.name for s in self.passes}:
            return None
        params = {"precision": candidate.precision}
        if len(self.lengths) > 1:
            params["sequence_length"] = self.lengths[0]  # build's candidates at build's length
        for space in self.passes:
            if space.name in optional and pass_class(space.name).pays_at(candidate.precision):
                params[space.name] = space.name in candidate.passes
        return params

    def describe(self) -> dict:
        return {"precisions": list(self.precisions), "sequence_lengths": list(self.lengths),
                "passes": {space.name: {"optional": space.optional, **{k: list(v) for k, v in space.ranges.items()}}
                           for space in self.passes}}


def _suggest(trial, name: str, low, high):
    """A value on a grid of 10-100 points, so labels stay readable and repeats are recognised: integers in round
    steps, shares in round hundredths; a range spanning more than a factor of 10 on a log scale."""
    log = low > 0 and high / low > 10
    if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool):
        step = 1 if log else 10 ** max(0, math.floor(math.log10(max(1, (high - low) / 20))))
        return trial.suggest_int(name, low, low + (high - low) // step * step, step=step, log=log)
    if log:
        return float(f"{trial.suggest_float(name, float(low), float(high), log=True):.3g}")
    step = 10.0 ** (math.floor(math.log10(high - low)) - 1)  # shares in [0, 1): steps of 0.01, hitting 0.25, 0.5
    return round(trial.suggest_float(name, float(low), float(high), step=step), 6)


def search_space(target: Target, precisions: list[str], architecture: Architecture | None, keras: bool,
                 passes: tuple[str, ...] | None, forced: tuple[str, ...] | None, fixed: dict,
                 lengths: tuple[int, ...] = (), backend_passes: tuple[str, ...] = ()) -> SearchSpace:
    """The space of one target. `forced` (--recipe) makes those passes always run; `passes` replaces the
    target's own list, which `backend_passes` (training for the backend's own rounding, e.g. int4-qat) join where
    they pay at one of the precisions; an ONNX input (no Keras graph) searches precisions only; `lengths` (the build's own
    first) are the sequence lengths to try, except on targets taking any length in a `sequence_range`."""
    lengths = () if target.sequence_range else tuple(dict.fromkeys(lengths))
    if not keras:
        return SearchSpace(tuple(precisions), (), {}, lengths)
    if forced is not None:
        names, optional = list(forced), False
    else:
        names, optional = list(passes) if passes is not None else _target_passes(target), True
        if passes is None:
            names += [name for name in backend_passes if any(pass_class(name).pays_at(p) for p in precisions)]
    for name in names:
        if name not in PASSES.names():
            raise DeployKitError(f"--search-passes: unknown pass {name!r}; known passes: {', '.join(PASSES.names())}.")
    names.sort(key=_run_order)
    check_order(tuple(names))
    spaces = []
    for name in names:
        chosen = fixed.get(name, {})
        ranges = {key: value for key, value in pass_class(name).search_ranges(architecture).items()
                  if key not in chosen and value[0] != value[1]}
        spaces.append(PassSpace(name, optional, ranges))
    return SearchSpace(tuple(precisions), tuple(spaces), {name: dict(fixed.get(name, {})) for name in names},
                       lengths)


def _target_passes(target: Target) -> list[str]:
    """The passes of the target's recipes, plus qat on integer-only targets."""
    names = {name for text in target.recipes for name in parse_recipe(text)[0]}
    if target.integer_only:
        names.add("qat")
    return sorted(names)


def _run_order(name: str) -> tuple[int, str]:
    """Passes learning from the original first, then those changing token ids, then the one that must be last."""
    cls = pass_class(name)
    return (2 if cls.must_be_last else 1 if cls.changes_token_ids else 0, name)

