"""A candidate: one way to build a target, as the planner proposes it and the build tries it."""

from __future__ import annotations

from dataclasses import dataclass

from deploykit.passes.recipe import Recipe


@dataclass(frozen=True)
class Candidate:
    """One way to build a target: training-time passes (in order, with their parameters), then export.

    `int4_embeddings`: at precision int4-weights, the embedding tables at int4 too, whatever the
    build's `--int4-embeddings` says (a size budget tries it on its own).
    """

    precision: str
    recipe: Recipe = ()
    int4_embeddings: bool = False

    @property
    def passes(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.recipe)

    @property
    def label(self) -> str:
        """`trim-vocab:keep=reachable + int4-weights (int4 embeddings)`: the passes, with the parameters a pass
        names as telling its variants apart (`Pass.labelled_parameters`) where they differ from the default."""
        from deploykit.passes.base import pass_class

        names = []
        for name, items in self.recipe:
            kind = pass_class(name)
            shown = [f"{key}={value}" for key, value in items if key in kind.labelled_parameters
                     and value != kind.Parameters.model_fields[key].default]
            names.append(name + (":" + ",".join(shown) if shown else ""))
        return " + ".join([*names, self.precision]) + (" (int4 embeddings)" if self.int4_embeddings else "")

    @property
    def recipe_text(self) -> str:
        """The recipe as --recipe takes it, parameters included: `distill:layers=3,ffn_width=1.0,qat:steps=600`."""
        return ",".join(name + (":" + ",".join(f"{k}={v}" for k, v in items) if items else "")
                        for name, items in self.recipe)
