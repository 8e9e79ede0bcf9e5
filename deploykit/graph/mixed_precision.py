"""Mixed precision from one per-layer sensitivity analysis, whatever the backend.

A backend splits its quantized graph into groups (the ops that read one quantized
activation tensor, e.g. an attention block's query/key/value projections) and writes a
variant of the graph with any set of groups kept at its higher precision (float on
CPUs and GPUs, int16 activations on NPUs). This module ranks the groups by what keeping
each one costs in fidelity, on texts the build does not evaluate on, and keeps the most
sensitive ones, greedily, until the fidelity the gates ask for (plus a reserve) is met.
Both sides of each group are measured: the group alone at low precision, and everything
but the group at low precision; the ranking follows the second, since the greedy choice
starts from the fully quantized graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

MIXED = "mixed"  # the precision name: each backend's quantized graph with its most sensitive groups kept high

# Share of the gate's allowance kept in reserve when choosing on the selection texts: the gate is checked on other
# texts, and text unlike either moves fidelity further; half for what the selection shows, half for what it cannot
# (cosine gate 0.99 -> choose until 0.995).
DEFAULT_MIXED_RESERVE = 0.5
# A mix keeping more than half the groups at high precision costs about as much as the high precision itself.
DEFAULT_MIXED_MAX_SHARE = 0.5
# Calibration texts each variant runs on: 2 x groups + 1 variants (49 for a 6-layer BERT), so a few seconds each.
DEFAULT_MIXED_SAMPLES = 128


@dataclass(frozen=True)
class MixedSettings:
    """How precision "mixed" chooses: the reserve kept below the gate, the largest share kept high, the texts."""

    reserve: float = DEFAULT_MIXED_RESERVE
    max_share: float = DEFAULT_MIXED_MAX_SHARE
    samples: int = DEFAULT_MIXED_SAMPLES


@dataclass(frozen=True)
class PrecisionGroup:
    """Ops a backend keeps at high precision together: the consumers of one quantized activation tensor."""

    name: str  # readable, e.g. "block 2 · 3 MatMul (query/key/value)"
    ops: tuple[str, ...]  # the backend's node names
    activation_elements: int = 0  # elements of the activation tensor the group reads, for the byte shares


def group_name(index: int, softmaxes_before: int, ops: list[str]) -> str:
    """A group's label in reports: its position, how deep in the encoder (attention softmaxes passed), its ops."""
    return f"{index:02d} after softmax {softmaxes_before}: {'+'.join(sorted(ops))}"


@dataclass
class Sensitivity:
    """One group's measured effect on fidelity (higher is better for both numbers)."""

    group: PrecisionGroup
    alone_quantized: float | None  # fidelity when only this group is at low precision (None: not measured)
    kept_high: float  # fidelity when every group but this one is at low precision

    def as_dict(self, all_quantized: float) -> dict:
        return {"group": self.group.name, "ops": list(self.group.ops),
                "fidelity_alone_quantized": None if self.alone_quantized is None else round(self.alone_quantized, 6),
                "fidelity_kept_high": round(self.kept_high, 6),
                "gain_kept_high": round(self.kept_high - all_quantized, 6)}


@dataclass
class MixedChoice:
    """The analysis and the greedy choice it led to, for the report."""

    metric: str
    target_fidelity: float
    all_quantized: float
    ranking: list[Sensitivity]
    kept: list[PrecisionGroup] = field(default_factory=list)
    trail: list[float] = field(default_factory=list)  # fidelity after keeping each group in turn

    @property
    def reached(self) -> bool:
        return (self.trail[-1] if self.trail else self.all_quantized) >= self.target_fidelity

    def shares(self, groups: list[PrecisionGroup]) -> dict:
        """Share of the quantizable ops and of the activation bytes left at low precision vs kept high."""
        kept = {group.name for group in self.kept}
        ops = sum(len(group.ops) for group in groups)
        kept_ops = sum(len(group.ops) for group in groups if group.name in kept)
        elements = sum(group.activation_elements for group in groups)
        kept_elements = sum(group.activation_elements for group in groups if group.name in kept)
        return {"groups_kept_high": len(kept), "groups": len(groups),
                "ops_kept_high_share": round(kept_ops / ops, 4) if ops else 0.0,
                "activation_elements_kept_high_share": round(kept_elements / elements, 4) if elements else None}

    def as_dict(self, groups: list[PrecisionGroup]) -> dict:
        return {"metric": self.metric, "target": round(self.target_fidelity, 6),
                "fidelity_all_quantized": round(self.all_quantized, 6), "reached": self.reached,
                "kept_high": [group.name for group in self.kept], "fidelity_trail": [round(v, 6) for v in self.trail],
                **self.shares(groups),
                "ranking": [row.as_dict(self.all_quantized) for row in self.ranking]}


def predicted_cost(activations: dict, costs: dict[str, float], uniform: tuple[str, ...]) -> dict | None:
    """What a mixed artifact's activations cost on the target's hardware, from its cost table (`activation_cost`),
    against the same elements all at each of the `uniform` types: sum of elements x cost per element type.
    None when the table lacks a type the artifact or the comparison uses."""
    elements = {name: row["bytes"] // row["itemsize"] for name, row in activations.items() if name in costs}
    if not elements or any(name not in costs for name in uniform):
        return None
    total = sum(elements.values())
    mixed = sum(count * costs[name] for name, count in elements.items())
    return {"relative_cost": round(mixed / total, 4),
            **{f"vs_all_{name}": round(mixed / (total * costs[name]), 4) for name in uniform}}


FidelityOf = Callable[[frozenset[str]], float]  # names of the groups kept high -> fidelity on the selection texts


def rank_groups(groups: list[PrecisionGroup], fidelity_of: FidelityOf,
                complements: bool = True) -> tuple[float, list[Sensitivity]]:
    """Fidelity of the fully quantized graph, and every group's sensitivity, most sensitive first.

    `complements=False` skips the everything-but-one variants (the ranking follows the other side): for backends
    whose high precision runs on slow reference kernels on the build host, where they would dominate the build."""
    names = frozenset(group.name for group in groups)
    all_quantized = fidelity_of(frozenset())
    rows = [Sensitivity(group, alone_quantized=fidelity_of(names - {group.name}) if complements else None,
                        kept_high=fidelity_of(frozenset({group.name}))) for group in groups]
    order = sorted(range(len(rows)), key=lambda i: (-rows[i].kept_high, rows[i].alone_quantized or 0.0, i))
    return all_quantized, [rows[i] for i in order]


def choose_groups(all_quantized: float, ranking: list[Sensitivity], fidelity_of: FidelityOf, target: float,
                  max_share: float, metric: str) -> MixedChoice:
    """Keep groups high, most sensitive first, until `target` is met or `max_share` of the groups are kept."""
    choice = MixedChoice(metric, target, all_quantized, ranking)
    limit = int(max_share * len(ranking))
    for row in ranking:
        if choice.reached or len(choice.kept) >= limit:
            break
        choice.kept.append(row.group)
        choice.trail.append(fidelity_of(frozenset(group.name for group in choice.kept)))
    return choice
