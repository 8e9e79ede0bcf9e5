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
from functools import cache
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
    for new_index, old_index in enumerate(keep.layers):  # factorized FFN layers stay factorized, at their rank
        for attribute in FFN_DENSE:
            source = getattr(backbone.transformer_layers[old_index], attribute)
            if isinstance(source, low_rank_dense_class()):
                factorize_dense(smaller.transformer_layers[new_index], attribute, source.rank)
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
    if rest in ("feedforward_intermediate_dense/kernel", "feedforward_intermediate_dense/right/kernel"):
        return value[:, neurons]
    if rest in ("feedforward_intermediate_dense/bias", "feedforward_intermediate_dense/right/bias"):
        return value[neurons]
    if rest in ("feedforward_output_dense/kernel", "feedforward_output_dense/left/kernel"):
        return value[neurons, :]
    return value


FFN_DENSE = ("_feedforward_intermediate_dense", "_feedforward_output_dense")


@cache
def low_rank_dense_class():
    """`LowRankDense`: x @ left @ right (+ bias, activation), the drop-in for a factorized Dense.

    Two ordinary Dense layers, so every exporter sees two FULLY_CONNECTED/MatMul ops
    and quantization-aware training and residual scaling treat them like any Dense
    (`left` reads the input, `right` writes the output).
    """
    import keras

    class LowRankDense(keras.layers.Layer):
        def __init__(self, rank: int, units: int, activation=None, **kwargs):
            super().__init__(**kwargs)
            self.rank, self.units = rank, units
            self.left = keras.layers.Dense(rank, use_bias=False, name="left", dtype=self.dtype_policy)
            self.right = keras.layers.Dense(units, activation=activation, name="right", dtype=self.dtype_policy)

        def build(self, input_shape):
            self.left.build(input_shape)
            self.right.build((*input_shape[:-1], self.rank))

        def call(self, inputs):
            return self.right(self.left(inputs))

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], self.units)

    return LowRankDense


def factorize_dense(block, attribute: str, rank: int) -> None:
    """Replace `block.<attribute>` (a Dense) by the rank-`rank` truncated SVD of its kernel, bias and activation kept."""
    import keras

    dense = getattr(block, attribute)
    units, inputs = int(dense.kernel.shape[1]), int(dense.kernel.shape[0])
    factorized = low_rank_dense_class()(rank, units, activation=dense.activation, name=dense.name,
                                        dtype=dense.dtype_policy)
    with keras.name_scope(block.name):  # weight paths as if built in place: transformer_layer_<i>/<name>/...
        factorized.build((None, inputs))
    u, singular, vt = np.linalg.svd(dense.kernel.numpy(), full_matrices=False)
    root = np.sqrt(singular[:rank])
    factorized.left.kernel.assign(u[:, :rank] * root)
    factorized.right.kernel.assign(root[:, None] * vt[:rank])
    factorized.right.bias.assign(dense.bias.numpy())
    # Swap without Keras's attribute tracking, and put the new layer where the old one was tracked.
    object.__setattr__(block, attribute, factorized)
    block._layers[[id(layer) for layer in block._layers].index(id(dense))] = factorized


def dense_kernel(layer) -> np.ndarray:
    """A Dense layer's kernel, or the product a factorized one stands for."""
    if hasattr(layer, "left"):
        return layer.left.kernel.numpy() @ layer.right.kernel.numpy()
    return layer.kernel.numpy()


def parameter_count(backbone) -> int:
    return int(sum(np.prod(w.shape) for w in backbone.weights))
