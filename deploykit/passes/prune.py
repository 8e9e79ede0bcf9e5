"""Pruning (`prune`): remove whole attention heads, FFN units and layers, and/or zero weights.

The result is a physically smaller keras-hub BERT (fewer heads, narrower FFN,
fewer layers), so it is faster on every runtime without sparse kernels. What goes
is chosen by importance: `activation` (default) measures on the user's texts how
much each head and unit contributes to its layer's output, and how much the model's
output changes when a layer is skipped; `magnitude` uses weight norms only. The
pruned model is then fine-tuned against the original. Weight sparsity (unstructured
or 2:4, `passes/sparsity.py`) is applied during that fine-tune, for targets whose
runtime turns zeros into speed or size.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal

import numpy as np
from pydantic import model_validator

from deploykit.graph.bert_surgery import Keep, dense_kernel, keep_all, parameter_count, reshaped_backbone
from deploykit.errors import DeployKitError
from deploykit.passes.base import Pass, PassContext, PassResult
from deploykit.passes.parameters import parameter
from deploykit.passes.sparsity import encoder_kernels, measured_sparsity, prune_now, sparsity_callback
from deploykit.passes.training import FineTuneParameters, fine_tune_from_teacher


class PruneParameters(FineTuneParameters):
    heads: float = parameter(0.0, "Share of attention heads removed per layer.", ge=0, lt=1, search=(0.0, 0.75))
    neurons: float = parameter(0.0, "Share of FFN units removed per layer.", ge=0, lt=1, search=(0.0, 0.75))
    layers: int = parameter(0, "Whole layers removed (those whose skipping changes the output least).", ge=0,
                            search=(0, 12))
    importance: Literal["activation", "magnitude"] = parameter(
        "activation", "How heads and units are ranked: measured on the texts, or by weight magnitude (no data).")
    importance_samples: int = parameter(64, "Texts the activation importance is measured on.", ge=1)
    # Not searched: zeroed weights only pay where a target's kernels skip them (2:4 on sparse tensor cores).
    sparsity: float = parameter(0.0, "Share of encoder weights zeroed during the fine-tune.", ge=0, lt=1)
    pattern: Literal["unstructured", "2:4"] = parameter(
        "unstructured", "Weight-zeroing pattern: unstructured (cubic schedule) or 2:4 (2 of every 4 input weights).")
    mask_interval: int = parameter(50, "Steps between mask updates of the unstructured schedule.", ge=1)
    steps: int = parameter(800, "Fine-tune steps against the original (0: none).", ge=0, search=(200, 2000))

    @model_validator(mode="before")
    @classmethod
    def _two_of_four_is_half(cls, values: dict) -> dict:
        return {**values, "sparsity": 0.5} if isinstance(values, dict) and values.get("pattern") == "2:4" else values


class Prune(Pass):
    name = "prune"
    description = "remove the least important attention heads, FFN units and layers, then fine-tune on the teacher"
    Parameters = PruneParameters
    rebuilds_model = True
    learns_from_original = True

    def __init__(self, **parameters):
        super().__init__(**parameters)
        p = self.parameters
        if not (p.heads or p.neurons or p.layers or p.sparsity):
            raise DeployKitError("prune needs something to remove: set heads=, neurons= (shares), layers= (a count), "
                                 "sparsity= (a share of weights) or pattern=2:4.")

    def target_warnings(self, target) -> list[str]:
        p = self.parameters
        if p.sparsity and p.pattern not in target.sparsity:
            return [f"{target.name} lists sparsity {target.sparsity}: its runtime gains nothing from {p.pattern} "
                    "zeros (they cost accuracy only); prefer heads=/neurons=/layers="]
        return []

    def architecture_after(self, architecture):
        p = self.parameters  # unstructured or 2:4 sparsity zeroes weights; dense kernels time them all the same
        return architecture.changed(
            layers=architecture.layers - p.layers,
            heads=max(1, architecture.heads - round(architecture.heads * p.heads)),
            intermediate=max(1, architecture.intermediate - round(architecture.intermediate * p.neurons)))

    def apply(self, context: PassContext) -> PassResult:
        p = self.parameters
        backbone = context.bundle.backbone
        full = keep_all(backbone)
        depth = len(full.layers)
        if p.layers >= depth:
            raise DeployKitError(f"prune: the model has {depth} layers; remove fewer than that (layers={p.layers}).")
        samples = _batch(context.calibration[: p.importance_samples])
        with context.log.step("prune_importance", f"prune: scoring heads, FFN units and layers ({p.importance})"):
            if p.importance == "activation":
                head_scores, unit_scores = activation_importance(context.bundle, samples)
            else:
                head_scores, unit_scores = magnitude_importance(backbone)
            layers = tuple(sorted(_layers_to_keep(context, samples, depth - p.layers))) if p.layers else full.layers
        heads_kept = max(1, backbone.num_heads - round(backbone.num_heads * p.heads))
        units_kept = max(1, backbone.intermediate_dim - round(backbone.intermediate_dim * p.neurons))
        keep = Keep(
            layers=layers,
            heads=tuple(_top(head_scores[i], heads_kept) for i in layers),
            neurons=tuple(_top(unit_scores[i], units_kept) for i in layers),
        )
        pruned = context.bundle.with_backbone(reshaped_backbone(backbone, keep))
        effect = {
            "layers_before": depth, "layers_after": len(layers), "kept_layers": list(layers),
            "heads_before": backbone.num_heads, "heads_after": heads_kept,
            "ffn_width_before": backbone.intermediate_dim, "ffn_width_after": units_kept,
            "parameters_before": parameter_count(backbone), "parameters_after": parameter_count(pruned.backbone),
        }
        callbacks = []
        if p.sparsity:
            kernels = encoder_kernels(pruned.backbone)
            if p.steps:
                callbacks.append(sparsity_callback(kernels, p.sparsity, p.pattern, p.steps, p.mask_interval))
        effect.update(fine_tune_from_teacher(pruned, context, p, self.name, callbacks))
        if p.sparsity:
            prune_now(kernels, p.sparsity, p.pattern)  # exactly the final share, whatever the last mask update saw
            share = measured_sparsity(kernels)
            effect.update(pattern=p.pattern, weight_sparsity=round(share, 4))
            pruned.details["sparsity"] = {"pattern": p.pattern, "share": round(share, 4)}
        return PassResult(self.name, self.describe(), effect, bundle=pruned)


def _top(scores: np.ndarray, count: int) -> tuple[int, ...]:
    return tuple(sorted(np.argsort(-scores, kind="stable")[:count].tolist()))


def _batch(samples: list[dict]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([s[name] for s in samples]) for name in samples[0]}


def magnitude_importance(backbone) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer: each head's Q/K/V/output weight norm, each FFN unit's |in| * |out| weight norm."""
    heads, units = [], []
    for block in backbone.transformer_layers:
        attention = block._self_attention_layer
        score = sum(np.linalg.norm(d.kernel.numpy(), axis=(0, 2)) for d in
                    (attention._query_dense, attention._key_dense, attention._value_dense))
        heads.append(score + np.linalg.norm(attention._output_dense.kernel.numpy(), axis=(1, 2)))
        inner = np.linalg.norm(dense_kernel(block._feedforward_intermediate_dense), axis=0)
        units.append(inner * np.linalg.norm(dense_kernel(block._feedforward_output_dense), axis=1))
    return heads, units


def activation_importance(bundle, samples: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer, measured on real texts: the mean norm of each head's share of the attention output
    (context @ its output weights) and of each FFN unit's share of the FFN output (|activation| * |out row|)."""
    blocks = bundle.backbone.transformer_layers
    heads = [np.zeros(b._self_attention_layer._num_heads) for b in blocks]
    units = [np.zeros(b.intermediate_dim) for b in blocks]
    mask = samples["padding_mask"].astype(bool)
    with _recording(blocks) as recorded:
        bundle.deployment_model(samples["token_ids"].shape[1])(samples, training=False)
    for index, block in enumerate(blocks):
        context = recorded["context"][index][mask]  # [tokens, heads, head_size], padding left out
        output_kernel = block._self_attention_layer._output_dense.kernel.numpy()  # [heads, head_size, hidden]
        shares = np.einsum("thd,hdo->tho", context, output_kernel)
        heads[index] = np.linalg.norm(shares, axis=-1).mean(axis=0)
        activations = np.abs(recorded["ffn"][index][mask]).mean(axis=0)
        units[index] = activations * np.linalg.norm(dense_kernel(block._feedforward_output_dense), axis=1)
    return heads, units


@contextmanager
def _recording(blocks) -> Iterator[dict]:
    """Run eagerly with each layer's attention context and FFN activations recorded."""
    recorded: dict[str, dict[int, np.ndarray]] = {"context": {}, "ffn": {}}
    patched = []
    for index, block in enumerate(blocks):
        attention, dense = block._self_attention_layer, block._feedforward_intermediate_dense

        def compute_attention(*args, _index=index, _original=attention._compute_attention, **kwargs):
            output, scores = _original(*args, **kwargs)
            recorded["context"][_index] = np.asarray(output)
            return output, scores

        def call(inputs, *args, _index=index, _original=dense.call, **kwargs):
            output = _original(inputs, *args, **kwargs)
            recorded["ffn"][_index] = np.asarray(output)
            return output

        object.__setattr__(attention, "_compute_attention", compute_attention)
        object.__setattr__(dense, "call", call)
        patched += [(attention, "_compute_attention"), (dense, "call")]
    try:
        yield recorded
    finally:
        for owner, attribute in patched:
            object.__delattr__(owner, attribute)


def _layers_to_keep(context: PassContext, samples: dict, count: int) -> list[int]:
    """Greedily skip the layer whose removal changes the model's outputs least, until `count` remain."""
    bundle = context.bundle
    full = keep_all(bundle.backbone)
    reference = _outputs(bundle, samples)
    kept = list(full.layers)
    while len(kept) > count:
        changes = []
        for layer in kept:
            trial = [i for i in kept if i != layer]
            keep = Keep(tuple(trial), tuple(full.heads[i] for i in trial), tuple(full.neurons[i] for i in trial))
            outputs = _outputs(bundle.with_backbone(reshaped_backbone(bundle.backbone, keep)), samples)
            changes.append(_mean_cosine(reference, outputs))
        kept.remove(kept[int(np.argmax(changes))])
    return kept


def _outputs(bundle, samples: dict) -> np.ndarray:
    return np.asarray(bundle.deployment_model(samples["token_ids"].shape[1])(samples, training=False))


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return float((a * b).sum(axis=-1).mean())
