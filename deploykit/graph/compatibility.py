"""Which ops of an exported graph would fall back from the target's accelerator, and why.

An integer-only accelerator (phone NPU, Edge TPU) runs an op only when all its
tensors are integer, the op is in its op set and its tensors meet its shape limits;
anything else goes back to the CPU (or, on the Edge TPU, takes every later op with
it). Each rule below reads one field of the target YAML, so a new accelerator's
limits are data, not code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from deploykit.graph.graph_ops import GraphOp, GraphTensor

if TYPE_CHECKING:
    from deploykit.targets import Target

__all__ = ["Compatibility", "GraphOp", "GraphTensor", "check_compatibility"]


@dataclass
class Compatibility:
    """Ops that would fall back, counted by name, with each name's reasons."""

    fallback_ops: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, list[str]] = field(default_factory=dict)

    def add(self, op: GraphOp, reason: str) -> None:
        if reason not in self.reasons.setdefault(op.name, []):
            self.reasons[op.name].append(reason)

    def as_dict(self) -> dict:
        return {"fallback_ops": dict(sorted(self.fallback_ops.items())),
                "fallback_reasons": dict(sorted(self.reasons.items()))}


def _float_tensor(op: GraphOp, target: Target) -> str | None:
    if target.integer_only and any(t.dtype.startswith(("float", "bfloat")) for t in op.tensors):
        return "reads or writes a float tensor"
    return None


def _outside_op_set(op: GraphOp, target: Target) -> str | None:
    if target.supported_ops is not None and op.name not in target.supported_ops:
        return "not in the target's op set"
    if op.name in target.unsupported_ops:
        return "listed as unsupported by the target"
    return None


def _too_many_dimensions(op: GraphOp, target: Target) -> str | None:
    limit = target.max_tensor_dims
    if limit is None:
        return None
    widest = max((sum(1 for d in t.shape if d != 1) for t in op.tensors), default=0)
    if widest > limit:
        return f"a tensor has {widest} dimensions larger than 1 (the target allows {limit})"
    return None


def _dynamic_shape(op: GraphOp, target: Target) -> str | None:
    if target.static_shapes and any(d < 0 for t in op.tensors for d in t.shape):
        return "a tensor has a dynamic shape"
    return None


RULES: tuple[Callable[[GraphOp, Target], str | None], ...] = (
    _float_tensor, _outside_op_set, _too_many_dimensions, _dynamic_shape,
)


def check_compatibility(ops: list[GraphOp], target: Target) -> Compatibility:
    """Every op that breaks at least one of the target's rules, counted once per op."""
    result = Compatibility()
    for op in ops:
        reasons = [reason for rule in RULES if (reason := rule(op, target))]
        if reasons:
            result.fallback_ops[op.name] = result.fallback_ops.get(op.name, 0) + 1
            for reason in reasons:
                result.add(op, reason)
    return result
