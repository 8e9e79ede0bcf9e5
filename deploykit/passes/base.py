"""Passes: one compression technique per class, registered by subclassing.

A pass changes the Keras model before export. It is given a `PassContext` (the
model, the encoded training texts, what the original model outputs on them) and
returns what it did, for the plan and the report. Its parameters are a pydantic
model (`passes/parameters.py`), so every knob is declared, described and checked in
one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from deploykit.backends.base import ExportOptions, Int4Settings
from deploykit.models import ModelBundle
from deploykit.passes.parameters import PassParameters
from deploykit.progress import StepLog
from deploykit.registry import Registry

if TYPE_CHECKING:
    from deploykit.latency_model import Architecture


@dataclass
class PassContext:
    """Everything a training-time pass may use."""

    bundle: ModelBundle  # the model as the previous passes left it
    sequence_length: int
    train_texts: list[str]  # texts the pass may learn from (never the evaluation split)
    train_inputs: dict[str, np.ndarray]  # train_texts encoded with the current bundle's tokenizer
    teacher_outputs: np.ndarray | None  # what the original model outputs on train_texts (None: the pass never reads it)
    teacher: ModelBundle  # the original model (original token ids): what distillation learns from
    label_ids: np.ndarray | None  # output indices of train_inputs' labels (classifiers with labels)
    calibration: list[dict[str, np.ndarray]]  # batch-1 samples for activation ranges
    log: StepLog
    seed: int = 0
    callbacks: tuple = ()  # Keras callbacks every fine-tune runs too (a search's early stop of hopeless trials)
    int4: Int4Settings = Int4Settings()  # how an int4-weights export will group and store the weights


class Pass:
    """One compression technique; subclasses set `name`, `description` and a `Parameters` model.

    `apply` either trains the context's model in place (returning no bundle) or
    returns a new, smaller bundle (`PassResult.bundle`); the original model is never
    changed by a structural pass.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Parameters: ClassVar[type[PassParameters]]
    learns_from_original: ClassVar[bool] = False  # trains against the original model on the same token ids
    must_be_last: ClassVar[bool] = False  # simulates the exported graph, so nothing may change the model after it
    simulates: ClassVar[tuple[str, ...]] = ()  # the precisions whose rounding it trains for (only those pay)
    for_backends: ClassVar[tuple[str, ...]] = ()  # the backends whose rounding that is (empty: any)
    changes_token_ids: ClassVar[bool] = False  # the model reads other token ids than the original afterwards
    rebuilds_model: ClassVar[bool] = False  # returns a new keras-hub BERT cut out of the input (needs one)
    reads_teacher_outputs: ClassVar[bool] = True  # False: the build skips running the original on the training texts
    labelled_parameters: ClassVar[tuple[str, ...]] = ()  # shown in a candidate's label when not at their default

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        PASSES.add(cls)

    def __init__(self, **parameters: Any):
        self.parameters = self.Parameters.parse(self.name, parameters)

    def describe(self) -> dict:
        values = self.parameters.model_dump()
        return {name: values[name] for name in self.Parameters.listed()}

    def apply(self, context: PassContext) -> "PassResult":
        raise NotImplementedError

    def run(self, context: PassContext) -> "PassResult":
        """`apply` with Keras' random state seeded from the context first.

        Layers a pass builds draw their seeds from the global random state when they are
        made (a student's dropout), before any training code could seed it; unseeded, whatever
        drew random numbers earlier decided what the student learnt (the same distillation
        ended at loss 0.119 at one commit and 0.635 at a later one).
        """
        import keras

        keras.utils.set_random_seed(context.seed)
        return self.apply(context)

    def export_context(self):
        """A context manager the export is traced in (None: the plain graph)."""
        return None

    @classmethod
    def pays_at(cls, precision: str) -> bool:
        """Whether it can pay at the precision: a pass training for an export's rounding pays only there."""
        return not cls.simulates or precision in cls.simulates

    def export_options(self, options: ExportOptions) -> ExportOptions:
        """How the export must run for what this pass trained towards (by default: as the build asks)."""
        return options

    def architecture_after(self, architecture: Architecture) -> Architecture | None:
        """The encoder's shape after this pass, for the latency model; None when only running the pass tells."""
        return None if self.rebuilds_model else architecture

    @classmethod
    def search_ranges(cls, architecture: Architecture | None) -> dict[str, tuple]:
        """The parameters a search varies on this model: the declared ranges, a `layers` range kept within the
        model's depth (a count of layers to keep or remove can never reach it)."""
        ranges = cls.Parameters.search_space()
        if architecture is not None and "layers" in ranges:
            low, high = ranges["layers"]
            ranges["layers"] = (low, max(low, min(high, architecture.layers - 1)))
        return ranges

    def target_warnings(self, target) -> list[str]:
        """What this pass, with these parameters, will not gain on `target` (shown in the plan)."""
        return []


PASSES: Registry[Pass] = Registry("pass", "deploykit.passes", "deploykit.passes")


def pass_class(name: str) -> type[Pass]:
    return PASSES.get(name)


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
