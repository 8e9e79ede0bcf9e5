"""An exported graph's ops as plain data: what backends list and the compatibility check reads (a leaf module)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GraphTensor:
    dtype: str  # numpy dtype name
    shape: tuple[int, ...]  # -1 where the dimension is only known at run time


@dataclass(frozen=True)
class GraphOp:
    name: str  # the runtime's op name, e.g. FULLY_CONNECTED
    tensors: tuple[GraphTensor, ...]  # inputs and outputs
