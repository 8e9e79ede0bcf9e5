"""What sits on a backbone: pooling heads for embeddings, classifier heads, the trimmed-vocabulary token map.

Functional pieces the loaders and structural passes share, so a model rebuilt by a pass
computes exactly what the loaded one did.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from deploykit.graph.integer_graph import rounding_point


def embedding_forward(backbone, pooling: str, normalize: bool) -> Callable:
    """Backbone + pooling over the padding mask (+ L2 normalisation, as sentence-transformers does)."""
    import keras

    head = _pooling_head_class()(pooling, normalize, name="sentence_embedding")

    def forward(token_ids, padding_mask):
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        if "segment_ids" in input_names(backbone):
            inputs["segment_ids"] = keras.ops.zeros_like(token_ids)
        outputs = backbone(inputs)
        sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
        return head(sequence, padding_mask)

    return forward


def _pooling_head_class():
    """The pooling head as a Keras layer, so its tensors are real tensors where rounding is simulated."""
    import keras

    class PoolingHead(keras.layers.Layer):
        def __init__(self, pooling: str, normalize: bool, **kwargs):
            super().__init__(**kwargs)
            self.pooling, self.normalize = pooling, normalize

        def call(self, sequence, padding_mask):
            ops = keras.ops
            if self.pooling == "cls":
                pooled = sequence[:, 0, :]
            else:
                keep = ops.expand_dims(ops.greater(padding_mask, 0), -1)
                kept = rounding_point(self, "kept", ops.where(keep, sequence, ops.zeros_like(sequence)))
                pooled = rounding_point(self, "sum", ops.sum(kept, axis=1))
                if not self.normalize:  # the token count cancels under normalisation, so only divide when it matters
                    ones = ops.ones_like(sequence[..., :1])  # selected, not cast: CAST has no integer kernel
                    count = ops.sum(ops.where(keep, ones, ops.zeros_like(ones)), axis=1)
                    pooled = pooled / ops.maximum(count, 1.0)
            if not self.normalize:
                return pooled
            # x * rsqrt(sum x^2) rather than ops.normalize: every op here has integer kernels.
            squares = rounding_point(self, "squares", ops.multiply(pooled, pooled))
            total = rounding_point(self, "total", ops.sum(squares, axis=-1, keepdims=True))
            scale = rounding_point(self, "rsqrt", ops.rsqrt(ops.add(total, 1e-12)))
            return rounding_point(self, "output", ops.multiply(pooled, scale))

        def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
            return (sequence_shape[0], sequence_shape[-1])

    return PoolingHead


def classifier_forward(model) -> Callable:
    import keras

    def forward(token_ids, padding_mask):
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        if "segment_ids" in input_names(model):
            inputs["segment_ids"] = keras.ops.zeros_like(token_ids)
        return model(inputs)

    return forward


def token_map_layer(token_map: np.ndarray):
    """A layer mapping tokenizer ids to rows of a trimmed embedding table (one integer GATHER when exported)."""
    import keras

    class TokenMap(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(name="token_map", **kwargs)
            self.table = keras.ops.convert_to_tensor(token_map.astype(np.int32))

        def call(self, token_ids):
            return keras.ops.take(self.table, token_ids, axis=0)

    return TokenMap()


def classifier_on(model, backbone):
    """A new keras-hub classifier of `model`'s kind and config on `backbone`, with `model`'s head weights."""
    config = model.get_config()
    rebuilt = type(model)(
        backbone=backbone, num_classes=config["num_classes"], preprocessor=None,
        activation=config.get("activation", "linear"), dropout=config.get("dropout", 0.1),
    )
    rebuilt.output_dense.set_weights(model.output_dense.get_weights())
    return rebuilt


def input_names(model) -> set[str]:
    inputs = model.input
    if isinstance(inputs, dict):
        return set(inputs)
    return {getattr(t, "name", "").split(":")[0] for t in (inputs if isinstance(inputs, list) else [inputs])}

