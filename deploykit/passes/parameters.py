"""Pass parameters: one pydantic model per pass, each field with its default, what it accepts, why, and the
range a search may vary it over. The CLI (`deploykit passes`), recipe files and the planner read this one
declaration.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from deploykit.errors import DeployKitError

_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a word", bool: "true or false"}


def parameter(default: Any, description: str, *, search: tuple | None = None, **bounds: float) -> Any:
    """A pass parameter: default, description, accepted bounds (`ge`/`gt`/`le`/`lt`) and search range."""
    extra = {"search": list(search)} if search is not None else None
    return Field(default, description=description, json_schema_extra=extra, **bounds)


class PassParameters(BaseModel):
    """Base of every pass's parameters: unknown names and wrong types are errors, values never change."""

    # strict: a recipe's 2.5 is not silently an int, 'true' not a number (floats still take integers)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def parse(cls, pass_name: str, values: dict) -> "PassParameters":
        """Validate `values`, with one line naming the pass, the parameter and what it accepts."""
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise DeployKitError(f"pass {pass_name!r} has no parameter {', '.join(map(str, unknown))}; its parameters "
                                 f"are {', '.join(sorted(cls.model_fields))}.")
        try:
            return cls(**values)
        except ValidationError as error:
            problem = error.errors()[0]
            name = str(problem["loc"][0]) if problem["loc"] else "?"
            wrong_type = problem["type"].endswith(("_type", "_parsing")) or problem["type"] == "int_from_float"
            accepted = cls.accepted(name, bounds=not wrong_type) if name in cls.model_fields else problem["msg"]
            raise DeployKitError(f"{pass_name} parameter {name} must be {accepted}, got {values.get(name)!r}.") from None

    @classmethod
    def check_value(cls, pass_name: str, name: str, value: Any) -> None:
        """One parameter alone against its declaration (type and bounds), before the others are known."""
        from typing import Annotated

        from pydantic import TypeAdapter

        info = cls.model_fields[name]
        try:
            TypeAdapter(Annotated[info.annotation, info], config=ConfigDict(strict=True)).validate_python(value)
        except ValidationError as error:
            wrong_type = error.errors()[0]["type"].endswith(("_type", "_parsing"))
            raise DeployKitError(f"{pass_name} parameter {name} must be {cls.accepted(name, bounds=not wrong_type)}, "
                                 f"got {value!r}.") from None

    @classmethod
    def accepted(cls, name: str, bounds: bool = True) -> str:
        """What a field accepts, in words: 'one of a, b', '>= 0 and < 1' (with `bounds`), or its type."""
        info = cls.model_fields[name]
        choices = getattr(info.annotation, "__args__", None)
        if choices and all(isinstance(choice, str) for choice in choices):
            return f"one of {', '.join(choices)}"
        return (bounds and _bounds(info)) or _TYPE_NAMES.get(info.annotation, str(info.annotation))

    @classmethod
    def listed(cls) -> dict[str, FieldInfo]:
        """The parameters in the order a user reads them: the pass's own first, those shared through a base after."""
        def depth(name: str) -> int:
            return next(i for i, kind in enumerate(cls.__mro__) if name in kind.__dict__.get("__annotations__", {}))
        return dict(sorted(cls.model_fields.items(), key=lambda item: depth(item[0])))

    @classmethod
    def search_space(cls) -> dict[str, tuple]:
        """Parameters a search may vary, with their ranges."""
        return {name: tuple(info.json_schema_extra["search"]) for name, info in cls.model_fields.items()
                if isinstance(info.json_schema_extra, dict) and "search" in info.json_schema_extra}


def _bounds(info: FieldInfo) -> str:
    found = [(symbol, getattr(meta, key)) for meta in info.metadata for key, symbol in _BOUNDS
             if getattr(meta, key, None) is not None]
    return " and ".join(f"{symbol} {limit:g}" for symbol, limit in found)


class TeacherLossParameters(PassParameters):
    """How a fine-tune learns from the original model's outputs, for every pass that has one."""

    temperature: float = parameter(2.0, "Softening of the teacher's logits (classifiers).", gt=0)
    label_weight: float = parameter(0.5, "Share of the label loss when the data has labels; the rest is "
                                    "distillation.", ge=0, le=1)


class AugmentationParameters(PassParameters):
    """Token-noise augmentation: the original model labels perturbed copies of the texts on the fly, so a few
    thousand texts teach its behaviour around them, not just at them (TinyBERT's lesson for small data)."""

    augment: float = parameter(0.5, "Share of each batch perturbed by token noise (the teacher labels the copies).",
                               ge=0, le=1)
    token_noise: float = parameter(0.15, "In a perturbed text, share of tokens replaced, half from the corpus and "
                                   "half from the whole vocabulary.", ge=0, le=1)
