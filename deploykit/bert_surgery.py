"""A physically smaller keras-hub BERT cut out of a bigger one.

Structural passes (layer/head/neuron pruning, layer-dropping distillation students,
vocabulary trimming) all reduce to the same operation: keep some layers, some
attention heads and FFN neurons per layer, some vocabulary rows, and copy the kept
weights into a new `BertBackbone` built with the smaller config. The result is an
ordinary keras-hub model, so every exporter and runtime sees a smaller dense
graph (faster everywhere, no sparse kernels needed).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from deploykit.errors import DeployKitError


@dataclass(frozen=True)
class Keep:
    """What survives, as indices into the original model (order is preserved)."""

    layers: tuple[int, ...]
    heads: tuple[tuple[int, ...], ...]  # per kept layer; keras-hub needs the same count in every layer
    neurons: tuple[tuple[int, ...], ...]  # FFN intermediate units per kept layer; same count in every layer
    tokens: tuple[int, ...] | None = None  # vocabulary ids, in the new vocabulary's order; None keeps all

    def __post_init__(self):
        if not self.layers:
            raise DeployKitError("a model needs at least one transformer layer; keep at least one.")
        if len(self.heads) != len(self.layers) or len(self.neurons) != len(self.layers):
            raise ValueError("heads and neurons must list one entry per kept layer")
        if len({len(h) for h in self.heads}) != 1 or len({len(n) for n in self.neurons}) != 1:
            raise ValueError("keras-hub BERT layers share one head count and one FFN width")
        if min(len(self.heads[0]), len(self.neurons[0])) < 1:
            raise DeployKitError("every layer needs at least one attention head and one FFN unit.")


def check_bert(backbone) -> None:
    """Fail with a clear message unless `backbone` is a keras-hub BertBackbone (what surgery understands)."""
    if type(backbone).__name__ != "BertBackbone":
        kind = "no keras-hub backbone" if backbone is None else type(backbone).__name__
        raise DeployKitError(
            f"structural passes need a keras-hub BertBackbone model, got {kind}; load a BERT checkpoint "
            "folder, a keras-hub preset or a .keras keras-hub BERT model."
        )


def keep_all(backbone) -> Keep:
    """Everything: the starting point that passes narrow down."""
    check_bert(backbone)
    layers = tuple(range(backbone.num_layers))
    return Keep(
        layers=layers,
        heads=tuple(tuple(range(backbone.num_heads)) for _ in layers),
        neurons=tuple(tuple(range(backbone.intermediate_dim)) for _ in layers),
    )


def reshaped_backbone(backbone, keep: Keep):
    """A new BertBackbone holding only the kept parts of `backbone`'s weights."""
    import keras_hub

    check_bert(backbone)
    config = backbone.get_config()
    config.update(
        num_layers=len(keep.layers),
        num_heads=len(keep.heads[0]),
        intermediate_dim=len(keep.neurons[0]),
        vocabulary_size=len(keep.tokens) if keep.tokens is not None else backbone.vocabulary_size,
    )
    key_dim = head_size(backbone)
    with _fixed_head_size(key_dim):  # keras-hub would derive hidden_dim // num_heads
        smaller = keras_hub.models.BertBackbone.from_config(config)
    old = {w.path: w for w in backbone.weights}
    for weight in smaller.weights:
        weight.assign(_kept_value(old, weight.path, keep))
    return smaller


def head_size(backbone) -> int:
    """Per-head width, read from the built layer (after head pruning it is no longer hidden // heads)."""
    return int(backbone.transformer_layers[0]._self_attention_layer._key_dim)


@contextmanager
def _fixed_head_size(key_dim: int) -> Iterator[None]:
    """While building: attention layers get `key_dim` whatever their head count."""
    import keras

    original = keras.layers.MultiHeadAttention.__init__

    def init(self, *args, **kwargs):
        if len(args) > 1:
            args = (args[0], key_dim, *args[2:])
        else:
            kwargs["key_dim"] = key_dim
        original(self, *args, **kwargs)

    keras.layers.MultiHeadAttention.__init__ = init
    try:
        yield
    finally:
        keras.layers.MultiHeadAttention.__init__ = original


_LAYER = re.compile(r"^transformer_layer_(\d+)/(.*)$")


def _kept_value(old: dict, path: str, keep: Keep) -> np.ndarray:
    match = _LAYER.match(path)
    if match is None:
        value = old[path].numpy()
        if path == "token_embedding/embeddings" and keep.tokens is not None:
            value = value[list(keep.tokens)]
        return value
    new_index, rest = int(match.group(1)), match.group(2)
    value = old[f"transformer_layer_{keep.layers[new_index]}/{rest}"].numpy()
    heads, neurons = list(keep.heads[new_index]), list(keep.neurons[new_index])
    if re.search(r"self_attention_layer/(query|key|value)/kernel$", rest):
        return value[:, heads, :]
    if re.search(r"self_attention_layer/(query|key|value)/bias$", rest):
        return value[heads, :]
    if rest.endswith("self_attention_layer/attention_output/kernel"):
        return value[heads, :, :]
    if rest == "feedforward_intermediate_dense/kernel":
        return value[:, neurons]
    if rest == "feedforward_intermediate_dense/bias":
        return value[neurons]
    if rest == "feedforward_output_dense/kernel":
        return value[neurons, :]
    return value


def parameter_count(backbone) -> int:
    return int(sum(np.prod(w.shape) for w in backbone.weights))
