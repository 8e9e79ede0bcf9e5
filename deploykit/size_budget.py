"""Size budgets (`--max-size-mb`): what the planner knows of a candidate's size before anything runs, and the
candidates it adds on its own when the target's precisions alone cannot reach the budget.

Three facts decide it. A weight takes at least `MIN_BYTES_PER_WEIGHT[precision]` bytes,
so a candidate whose weights alone exceed the budget is skipped before any export. Each
size-reducing pass removes a known part of the weights at most: a vocabulary trim the
token embedding rows, a distilled student the transformer layers it drops. So a
candidate's floor, the weights its passes cannot remove, is known too. And when the
target's own candidates may miss the budget, the planner tries, after them, a ladder of
candidates that trade more quality for size, in the order of their expected cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deploykit.candidate import Candidate
from deploykit.errors import DeployKitError
from deploykit.passes.base import get_pass, pass_class
from deploykit.passes.recipe import recipe

if TYPE_CHECKING:
    from deploykit.models import ModelBundle

# The fewest bytes one weight takes in an artifact of each precision (scales, graph metadata and any layer a backend
# keeps wider come on top, so a real artifact is never smaller).
MIN_BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "a16w8": 1.0,
                        "dynamic-int8": 1.0, "mixed": 1.0, "int4-weights": 0.5}

# Under a size budget every candidate the planner chooses starts with this: it drops only the vocabulary rows the
# tokenizer can never produce, so it changes no output and costs seconds, and its saving is known before it runs.
REACHABLE_VOCABULARY = recipe(("trim-vocab",), {"trim-vocab": {"keep": "reachable"}})[0]


@dataclass(frozen=True)
class ParameterCounts:
    """Where a model's weights are, so the planner can bound what each size-reducing pass leaves."""

    total: int
    token_embedding: int = 0  # vocabulary rows x hidden width
    per_layer: int = 0  # one transformer layer
    layers: int = 0
    unreachable: int = 0  # the weights of vocabulary rows no text can reach (what keep=reachable drops)

    @classmethod
    def of(cls, bundle: "ModelBundle", unreachable: int = 0) -> "ParameterCounts | None":
        total = bundle.details.get("parameters")
        if not total:
            return None
        backbone = bundle.backbone if bundle.onnx_source is None else None
        if backbone is None or not hasattr(backbone, "transformer_layers"):
            return cls(int(total))
        layers = backbone.transformer_layers
        return cls(int(total), int(math.prod(backbone.token_embedding.embeddings.shape)),
                   max(layer.count_params() for layer in layers), len(layers), unreachable)

    def floor(self, candidate: Candidate) -> int | None:
        """The fewest weights the candidate's model can have: all but what its passes can remove at most. None when
        a pass removes an amount not known before it runs (pruning, factorization, a narrower distilled FFN)."""
        weights = self.total
        for name, items in candidate.recipe:
            parameters = dict(items)
            if name == "trim-vocab":
                weights -= self.unreachable if parameters.get("keep") == "reachable" else self.token_embedding
            elif name == "distill" and self.layers:
                student = get_pass(name, **parameters).parameters
                if student.ffn_width < 1:
                    return None
                weights -= (self.layers - min(self.layers, student.layers or -(-self.layers // 2))) * self.per_layer
            elif pass_class(name).rebuilds_model:
                return None
        return weights


@dataclass
class SizeCheck:
    """The candidates that can fit the size budget, and the plan step naming those that cannot."""

    kept: list[Candidate]
    step: dict


def with_reachable_vocabulary(candidates: list[Candidate], bundle: "ModelBundle") -> tuple[list[Candidate], dict | None]:
    """The candidates with the lossless vocabulary trim first (those without a trim-vocab of their own), and what
    it saves; unchanged, and None, when the model has no row to drop or cannot be rebuilt."""
    from deploykit.passes.trim_vocab import unreachable_rows

    rows, parameters = unreachable_rows(bundle)
    if not rows:
        return candidates, None
    text = (f"trim-vocab:keep=reachable first: drops the {rows:,} vocabulary rows ({parameters:,} weights) the "
            "tokenizer can never produce, changing no output")
    return [candidate if "trim-vocab" in candidate.passes else
            Candidate(candidate.precision, (REACHABLE_VOCABULARY, *candidate.recipe), candidate.int4_embeddings)
            for candidate in candidates], {"parameters": parameters, "text": text}


def size_ladder(candidates: list[Candidate], bundle: "ModelBundle", int4_embeddings: bool,
                pass_parameters: dict) -> list[Candidate]:
    """What the planner adds under a size budget, after the target's own candidates and in the order of their
    expected quality cost, each adding to the one before: int4 embedding tables (at int4-weights, unless the build
    already asks for them), a vocabulary cut to the tokens of the training texts (lossy for words the texts never
    use; the accuracy gate decides), then a distilled student of half the depth. All at the narrowest precision the
    target runs; a model that cannot be rebuilt gets the first only."""
    precision = min((candidate.precision for candidate in candidates), key=lambda p: MIN_BYTES_PER_WEIGHT.get(p, 4.0))
    embeddings = precision == "int4-weights" and not int4_embeddings
    ladder = [Candidate(precision, (), True)] if embeddings else []
    try:
        bundle.check_rebuildable()
    except DeployKitError:
        return _new(ladder, candidates)
    for names in (("trim-vocab",), ("distill", "trim-vocab")):
        ladder.append(Candidate(precision, recipe(names, pass_parameters), embeddings))
    return _new(ladder, candidates)


def _new(ladder: list[Candidate], candidates: list[Candidate]) -> list[Candidate]:
    return [candidate for candidate in ladder if candidate not in candidates]


def skip_too_large(candidates: list[Candidate], counts: ParameterCounts, max_size_mb: float) -> SizeCheck:
    """Drop the candidates whose floor of weights, at their precision's narrowest width, exceeds `max_size_mb`.

    Candidates whose passes remove an amount of weights not known before they run are kept. If every candidate
    would be skipped, the smallest is still built, so the report shows the measured miss.
    """
    def lower_bound_mb(candidate: Candidate) -> float | None:
        weights, width = counts.floor(candidate), MIN_BYTES_PER_WEIGHT.get(candidate.precision)
        return None if weights is None or width is None else weights * width / 1e6

    bounds = {candidate.label: lower_bound_mb(candidate) for candidate in candidates}
    skipped = [c for c in candidates if bounds[c.label] is not None and bounds[c.label] > max_size_mb]
    if skipped and len(skipped) == len(candidates):
        skipped.remove(min(skipped, key=lambda c: bounds[c.label]))
    step = {"step": "size_budget", "max_size_mb": max_size_mb, "parameters": counts.total,
            "skipped": [f"{c.label}: at least {bounds[c.label]:.1f} MB ({counts.floor(c):,} weights its passes "
                        f"cannot remove, at {c.precision})" for c in skipped]}
    return SizeCheck([c for c in candidates if c not in skipped], step)
