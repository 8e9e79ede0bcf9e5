"""Passes: one compression technique per class, registered by subclassing.

A pass changes the Keras model before export. It is given a `PassContext` (the
model, the encoded training texts, what the original model outputs on them) and
returns what it did, for the plan and the report. Parameters are a dataclass of
defaults, so every knob is visible and overridable in one place.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
from pydantic import TypeAdapter, ValidationError

from deploykit.errors import DeployKitError
from deploykit.models import ModelBundle
from deploykit.progress import StepLog


@dataclass
class PassContext:
    """Everything a training-time pass may use."""

    bundle: ModelBundle  # the model as the previous passes left it
    sequence_length: int
    train_texts: list[str]  # texts the pass may learn from (never the evaluation split)
    train_inputs: dict[str, np.ndarray]  # train_texts encoded with the current bundle's tokenizer
    teacher_outputs: np.ndarray  # what the original model outputs on train_texts
    teacher: ModelBundle  # the original model (original token ids): what distillation learns from
    label_ids: np.ndarray | None  # output indices of train_inputs' labels (classifiers with labels)
    calibration: list[dict[str, np.ndarray]]  # batch-1 samples for activation ranges
    log: StepLog
    seed: int = 0


class Pass:
    """One compression technique; subclasses set `name` and a `Parameters` dataclass.

    `apply` either trains the context's model in place (returning no bundle) or
    returns a new, smaller bundle (`PassResult.bundle`); the original model is never
    changed by a structural pass. A parameter's search range, when it has one, is the
    field's `metadata["range"]`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Parameters: ClassVar[type]
    learns_from_original: ClassVar[bool] = False  # trains against the original model on the same token ids
    must_be_last: ClassVar[bool] = False  # simulates the exported graph, so nothing may change the model after it
    changes_token_ids: ClassVar[bool] = False  # the model reads other token ids than the original afterwards
    rebuilds_model: ClassVar[bool] = False  # returns a new keras-hub BERT cut out of the input (needs one)
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
        types = typing.get_type_hints(self.Parameters)
        self.parameters = self.Parameters(**{
            name: _typed(self.name, name, types[name], value) for name, value in parameters.items()})
        for spec in fields(self.Parameters):
            _check_parameter(self.name, spec, getattr(self.parameters, spec.name))

    def describe(self) -> dict:
        return {f.name: getattr(self.parameters, f.name) for f in fields(self.Parameters)}

    @classmethod
    def search_space(cls) -> dict[str, tuple]:
        """Parameters a planner may vary, with their ranges."""
        return {f.name: f.metadata["range"] for f in fields(cls.Parameters) if "range" in f.metadata}

    def apply(self, context: PassContext) -> "PassResult":
        raise NotImplementedError

    def export_context(self):
        """A context manager the export is traced in (None: the plain graph)."""
        return None

    def target_warnings(self, target) -> list[str]:
        """What this pass, with these parameters, will not gain on `target` (shown in the plan)."""
        return []


BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
          "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def knob(default: Any, *, search: tuple | None = None, choices: tuple | None = None, **bounds: float):
    """A pass parameter: its default, the values it accepts (`ge`/`gt`/`le`/`lt` bounds or `choices`,
    checked when the pass is made) and the range a planner may search (`search`)."""
    unknown = set(bounds) - set(BOUNDS)
    if unknown:
        raise TypeError(f"unknown bound {', '.join(sorted(unknown))}; use {', '.join(BOUNDS)}")
    metadata = {**bounds, **({"range": search} if search else {}), **({"choices": choices} if choices else {})}
    return field(default=default, metadata=metadata)


def _typed(pass_name: str, name: str, kind: Any, value: Any) -> Any:
    """`value` as the parameter's declared type (an int where an int is declared, never 2.5 or 'abc')."""
    try:
        return TypeAdapter(kind).validate_python(value, strict=kind is not float)
    except ValidationError:
        shown = _TYPE_NAMES.get(kind, str(kind))
        raise DeployKitError(f"{pass_name} parameter {name} must be {shown}, got {value!r}.") from None


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a word", bool: "true or false"}


def _check_parameter(pass_name: str, spec, value: Any) -> None:
    """One line naming the pass, the parameter and what it accepts, for a value outside its declared bounds."""
    bounds = [(BOUNDS[name], limit) for name, limit in spec.metadata.items() if name in BOUNDS]
    if any(not holds(value, limit) for (_, holds), limit in bounds):
        accepted = " and ".join(f"{symbol} {limit:g}" for (symbol, _), limit in bounds)
        raise DeployKitError(f"{pass_name} parameter {spec.name} must be {accepted}, got {value!r}.")
    choices = spec.metadata.get("choices")
    if choices and value not in choices:
        raise DeployKitError(f"{pass_name} parameter {spec.name} must be one of {', '.join(choices)}, got {value!r}.")


def _register_builtin_passes() -> None:
    from deploykit.passes import distill, factorize, prune, qat, trim_vocab  # noqa: F401  (subclassing registers them)


def pass_class(name: str) -> type[Pass]:
    _register_builtin_passes()
    if name not in Pass.registry:
        raise DeployKitError(f"unknown pass {name!r}; known passes: {', '.join(sorted(Pass.registry))}.")
    return Pass.registry[name]


def get_pass(name: str, **parameters: Any) -> Pass:
    return pass_class(name)(**parameters)


@dataclass
class PassResult:
    """What a pass did, measured."""

    name: str
    parameters: dict
    effect: dict = field(default_factory=dict)
    bundle: ModelBundle | None = None  # the new model, for passes that change the architecture

    def as_dict(self) -> dict:
        return {"pass": self.name, "parameters": self.parameters, "effect": self.effect}


def parse_recipe(text: str) -> tuple[tuple[str, ...], dict[str, dict]]:
    """`"distill:layers=3,prune:heads=0.25,qat"` -> pass names in order and their parameters.

    A segment without `:` after a `name:key=value` continues that pass's parameters,
    so `prune:heads=0.25,neurons=0.5` sets two parameters of one pass.
    """
    _register_builtin_passes()
    names: list[str] = []
    parameters: dict[str, dict] = {}
    for segment in (part.strip() for part in text.split(",")):
        if not segment:
            continue
        head, _, rest = segment.partition(":")
        if "=" in head and names:  # key=value continuing the previous pass
            key, value = head.split("=", 1)
            parameters[names[-1]][key.strip()] = _value(value)
            continue
        name = head.strip()
        if name not in Pass.registry:
            raise DeployKitError(f"--recipe: unknown pass {name!r}; known passes: {', '.join(sorted(Pass.registry))}.")
        if name in names:
            raise DeployKitError(f"--recipe: pass {name!r} appears twice; give each pass once with all its parameters.")
        names.append(name)
        parameters[name] = {}
        if rest:
            key, equals, value = rest.partition("=")
            if not equals:
                raise DeployKitError(f"--recipe: write pass parameters as name:key=value, got {segment!r}.")
            parameters[name][key.strip()] = _value(value)
    if not names:
        raise DeployKitError("--recipe is empty; give passes like 'distill:layers=3,qat'.")
    check_order(tuple(names))
    for name in names:
        get_pass(name, **parameters[name])  # fail now on a bad parameter, not after an hour of training
    return tuple(names), parameters


def check_order(names: tuple[str, ...]) -> None:
    """Reject orders that cannot work: training against the original after the vocabulary changed, qat not last."""
    _register_builtin_passes()
    for index, name in enumerate(names):
        later = names[index + 1:]
        if Pass.registry[name].must_be_last and later:
            raise DeployKitError(f"recipe: {name!r} must be the last pass (it simulates the exported graph); "
                                 f"move {', '.join(later)} before it.")
        if Pass.registry[name].changes_token_ids and (
            learners := [n for n in later if Pass.registry[n].learns_from_original]
        ):
            raise DeployKitError(f"recipe: {', '.join(learners)} learns from the original model on its token ids, so "
                                 f"put it before {name}.")


def _value(text: str) -> Any:
    """A recipe value as int, float, bool or string."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text
