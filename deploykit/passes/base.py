"""Passes: one compression technique per class, registered by subclassing.

A pass changes the Keras model before export. It is given a `PassContext` (the
model, the encoded training texts, what the original model outputs on them) and
returns what it did, for the plan and the report. Parameters are a dataclass of
defaults, so every knob is visible and overridable in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from deploykit.errors import DeployKitError
from deploykit.models import ModelBundle
from deploykit.progress import StepLog


@dataclass
class PassContext:
    """Everything a training-time pass may use."""

    bundle: ModelBundle
    sequence_length: int
    train_inputs: dict[str, np.ndarray]  # encoded texts the pass may train on (never the evaluation split)
    teacher_outputs: np.ndarray  # what the original model outputs on train_inputs
    label_ids: np.ndarray | None  # output indices of train_inputs' labels (classifiers with labels)
    calibration: list[dict[str, np.ndarray]]  # batch-1 samples for activation ranges
    log: StepLog
    seed: int = 0


class Pass:
    """One compression technique; subclasses set `name` and a `Parameters` dataclass."""

    name: ClassVar[str]
    description: ClassVar[str]
    Parameters: ClassVar[type]
    registry: ClassVar[dict[str, type["Pass"]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Pass.registry[cls.name] = cls

    def __init__(self, **parameters: Any):
        known = {f.name for f in fields(self.Parameters)}
        unknown = sorted(set(parameters) - known)
        if unknown:
            raise DeployKitError(
                f"pass {self.name!r} has no parameter {', '.join(unknown)}; its parameters are {', '.join(sorted(known))}."
            )
        self.parameters = self.Parameters(**parameters)

    def describe(self) -> dict:
        return {f.name: getattr(self.parameters, f.name) for f in fields(self.Parameters)}


def get_pass(name: str, **parameters: Any) -> Pass:
    from deploykit.passes import qat  # noqa: F401  (registers the built-in passes)

    if name not in Pass.registry:
        raise DeployKitError(f"unknown pass {name!r}; known passes: {', '.join(sorted(Pass.registry))}.")
    return Pass.registry[name](**parameters)


@dataclass
class PassResult:
    """What a pass did, measured."""

    name: str
    parameters: dict
    effect: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"pass": self.name, "parameters": self.parameters, "effect": self.effect}
