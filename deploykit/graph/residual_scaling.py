"""Channel-scaled residual stream for integer-only graphs of BERT-family encoders.

A few channels of the residual stream of BERT-family models carry values 100-200x
larger than the rest (all-MiniLM-L6-v2: up to 223 next to ~1). With one int8 scale
per tensor the ordinary channels then keep 3-4 bits, and every LayerNorm input
(the residual sum) loses them. deploykit stores that stream divided per channel by
a power of two `k` (1 for ordinary channels, up to `max_scale` for the outliers),
with the same float results:

- the layers writing into the stream (attention output, FFN output) have their
  kernel columns and bias divided by `k`; the layers reading it (query, key, value,
  FFN input) have their kernel rows multiplied by `k`;
- each LayerNorm reads `x / k` and computes the true mean and variance with `k / N`
  and `k**2 / N` as the weights of a one-column FULLY_CONNECTED, and writes its
  output divided by `k` (gamma and beta rescaled), except the last, whose output
  leaves the stream unscaled.

`max_scale` bounds `k` so that `k**2 / N`, stored as int8 weights with one scale,
still resolves k = 1 next to the largest value (127 / 8**2 rounds within 1%).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from deploykit.graph.integer_graph import STREAM_SCALES, integer_layer_norm, simulated_rounding
from deploykit.models import ModelBundle

# 8 keeps k**2 / N resolvable next to k = 1 in one int8 scale (see above); 1 turns the scaling off.
DEFAULT_MAX_RESIDUAL_SCALE = 8.0


@dataclass(frozen=True)
class StreamLayers:
    """Where the residual stream is written, read and normalised in one encoder."""

    readers: list  # kernels whose rows take the stream (axis 0)
    writers: list  # kernels whose last axis (and bias) write into the stream
    norms: list  # (LayerNormalization, reads scaled input, writes scaled output)
    stream_norms: list  # LayerNorms whose input is the residual sum (measured for the scales)


def stream_layers(bundle: ModelBundle) -> StreamLayers | None:
    """The encoder's stream layers, or None when it is not a post-LN keras-hub BERT-style backbone."""
    backbone = bundle.backbone
    encoders = list(getattr(backbone, "transformer_layers", []) or [])
    embedding_norm = getattr(backbone, "embeddings_layer_norm", None)
    if not encoders or embedding_norm is None or any(getattr(e, "normalize_first", True) for e in encoders):
        return None
    try:
        readers, writers, norms, stream_norms = [], [], [(embedding_norm, False, True)], []
        for number, encoder in enumerate(encoders):
            attention = encoder._self_attention_layer
            # A factorized (LowRankDense) FFN reads the stream through `left` and writes it through `right`.
            readers += [attention._query_dense, attention._key_dense, attention._value_dense,
                        getattr(encoder._feedforward_intermediate_dense, "left", encoder._feedforward_intermediate_dense)]
            writers += [attention._output_dense,
                        getattr(encoder._feedforward_output_dense, "right", encoder._feedforward_output_dense)]
            last = number == len(encoders) - 1
            norms += [(encoder._self_attention_layer_norm, True, True), (encoder._feedforward_layer_norm, True, not last)]
            stream_norms += [encoder._self_attention_layer_norm, encoder._feedforward_layer_norm]
    except AttributeError:  # a keras-hub version with other internals: leave the stream as it is
        return None
    return StreamLayers(readers, writers, norms, stream_norms)


def find_scales(bundle: ModelBundle, sequence_length: int, calibration: list[dict],
                max_scale: float = DEFAULT_MAX_RESIDUAL_SCALE,
                batch_size: int = 16) -> np.ndarray | None:
    """Per-channel powers of two from the largest |value| each channel reaches at a LayerNorm input.

    A channel's scale is its maximum over the median channel's, rounded to a power of
    two and capped at `max_scale`. None when the model has no such stream or no
    channel stands out (every scale would be 1).
    """
    layers = stream_layers(bundle)
    if layers is None or max_scale < 2 or not calibration:
        return None
    watched = {id(norm) for norm in layers.stream_norms}
    maxima: dict[int, np.ndarray] = {}

    def observe(owner, site, values):
        if site == "input" and id(owner) in watched:
            channel_max = np.abs(np.asarray(values)).reshape(-1, values.shape[-1]).max(axis=0)
            maxima[id(owner)] = np.maximum(maxima.get(id(owner), 0.0), channel_max)
        return values

    with integer_layer_norm(), simulated_rounding(observe):
        model = bundle.deployment_model(sequence_length)
        inputs = {name: np.concatenate([sample[name] for sample in calibration]) for name in calibration[0]}
        for start in range(0, len(calibration), batch_size):
            model({name: values[start:start + batch_size] for name, values in inputs.items()}, training=False)
    channel_max = np.max(np.stack(list(maxima.values())), axis=0)
    ratio = channel_max / max(float(np.median(channel_max)), 1e-12)
    scales = np.clip(2.0 ** np.round(np.log2(np.maximum(ratio, 1.0))), 1.0, max_scale).astype(np.float32)
    return scales if (scales > 1).any() else None


@contextmanager
def scaled_residual_stream(bundle: ModelBundle, scales: np.ndarray) -> Iterator[None]:
    """Fold `scales` into the stream's weights and LayerNorms; the original weights come back on exit."""
    layers = stream_layers(bundle)
    if layers is None:
        yield
        return
    touched = [(layer.kernel, "rows") for layer in layers.readers] + [(layer.kernel, "columns") for layer in layers.writers]
    touched += [(layer.bias, "columns") for layer in layers.writers if layer.bias is not None]
    saved = [(variable, variable.numpy()) for variable, _ in touched]
    for variable, role in touched:
        value = variable.numpy()
        if role == "rows":
            value = value * scales.reshape((-1,) + (1,) * (value.ndim - 1))
        else:
            value = value / scales
        variable.assign(value)
    for norm, scaled_input, scaled_output in layers.norms:  # read by integer_layer_norm while tracing
        object.__setattr__(norm, STREAM_SCALES, (scales if scaled_input else None, scales if scaled_output else None))
    try:
        yield
    finally:
        for norm, _, _ in layers.norms:
            object.__delattr__(norm, STREAM_SCALES)
        for variable, value in saved:
            variable.assign(value)
