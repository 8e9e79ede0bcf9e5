"""Tracing for integer-only hardware: the Keras internals deploykit patches while a graph is traced.

Each patch is a context manager that swaps one Keras or keras-hub internal for the
duration of a trace and puts it back afterwards (Keras and keras-hub are pinned in
pyproject.toml for that reason): a bounded attention mask instead of -1e9, LayerNorm
written with integer-capable ops, and rounding points where QAT simulates int8.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from deploykit import runtime_env  # noqa: F401  (sets the Keras backend before keras is imported)
from deploykit.errors import DeployKitError

# Padded attention positions get this logit in integer-only graphs: exp(-30) relative to the largest real score
# is negligible, and one int8 scale can still resolve the real scores (Keras's -1e9 cannot share a scale).
DEFAULT_MASKED_LOGIT = -30.0


@contextmanager
def integer_graph(masked_logit: float) -> Iterator[None]:
    """Trace for integer-only hardware: bounded attention mask and integer-capable LayerNorm."""
    with bounded_attention_mask(masked_logit), integer_layer_norm():
        yield


@contextmanager
def bounded_attention_mask(masked_logit: float) -> Iterator[None]:
    """Trace attention with `masked_logit` written into padded positions instead of -1e9.

    Integer-only graphs quantize the pre-softmax scores with one scale per tensor;
    a -1e9 there makes every real score round to the same integer. A bounded value
    still gives padded positions a weight of about exp(masked_logit - max score)
    relative to the largest real score, negligible for values like -30.
    """
    from keras.src.layers.activations import softmax

    original = getattr(softmax, "_large_negative_number", None)
    if original is None:
        raise DeployKitError(
            "this Keras version does not expose the attention mask value deploykit bounds; "
            "install the Keras version pinned by deploykit."
        )
    softmax._large_negative_number = lambda dtype: masked_logit
    try:
        yield
    finally:
        softmax._large_negative_number = original


_ROUNDING_HOOKS: list[Callable] = []
# Attribute a LayerNormalization carries while the residual stream is scaled (set with object.__setattr__, past
# Keras's attribute tracking): (k its input is divided by, k its output is divided by); see residual_scaling.py
STREAM_SCALES = "_deploykit_stream_scales"


def rounding_point(owner: object, site: str, values):
    """A tensor an integer graph stores in 8 bits; quantization-aware training simulates the rounding here.

    Identity unless a hook is installed with `simulated_rounding` (see passes/qat.py).
    """
    return _ROUNDING_HOOKS[-1](owner, site, values) if _ROUNDING_HOOKS else values


@contextmanager
def simulated_rounding(hook: Callable) -> Iterator[None]:
    """Install `hook(owner, site, values) -> values` at every `rounding_point`."""
    _ROUNDING_HOOKS.append(hook)
    try:
        yield
    finally:
        _ROUNDING_HOOKS.remove(hook)


@contextmanager
def integer_layer_norm() -> Iterator[None]:
    """Trace LayerNormalization as mean, SUB, MUL, RSQRT: the same numbers, integer-capable ops.

    Keras's own formulation lowers `x - mean` to a NEG that the TFLite quantizer
    leaves in float, one per LayerNorm (13 in MiniLM), each a fallback to the CPU on
    an integer-only accelerator.
    """
    import keras
    from keras.src.layers.normalization.layer_normalization import LayerNormalization

    original = LayerNormalization.call

    def call(self, inputs):
        axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        if getattr(self, "rms_scaling", False) or [a % len(inputs.shape) for a in axes] != [len(inputs.shape) - 1]:
            return original(self, inputs)
        ops = keras.ops
        scale_in, scale_out = getattr(self, STREAM_SCALES, (None, None))
        inputs = rounding_point(self, "input", inputs)
        width = inputs.shape[-1]
        if scale_in is None:
            mean = ops.mean(inputs, axis=-1, keepdims=True)
            centered = ops.subtract(inputs, rounding_point(self, "mean", mean))
        else:  # inputs hold x / k: weighted sums give x's statistics, centring happens in the scaled basis
            mean = rounding_point(self, "mean", _weighted_sum(self, "mean", inputs, scale_in / width))
            centered = ops.subtract(inputs, rounding_point(self, "mean_scaled", ops.multiply(mean, 1.0 / scale_in)))
        centered = rounding_point(self, "centered", centered)
        squares = rounding_point(self, "squares", ops.multiply(centered, centered))
        if scale_in is None:
            variance = ops.mean(squares, axis=-1, keepdims=True)
        else:
            variance = _weighted_sum(self, "variance", squares, scale_in**2 / width)
        variance = rounding_point(self, "variance", variance)
        scale = rounding_point(self, "rsqrt", ops.rsqrt(rounding_point(self, "variance_eps", ops.add(variance, self.epsilon))))
        outputs = rounding_point(self, "normalized", ops.multiply(centered, scale))
        gamma = self.gamma if self.gamma is not None else ops.ones((width,))
        beta = self.beta
        if scale_in is not None:
            gamma = gamma * scale_in
        if scale_out is not None:
            gamma = gamma / scale_out
            beta = beta / scale_out if beta is not None else None
        if self.gamma is not None or scale_in is not None or scale_out is not None:
            outputs = rounding_point(self, "scaled", ops.multiply(outputs, gamma))
        if beta is not None:
            outputs = ops.add(outputs, beta)
        return ops.cast(outputs, self.compute_dtype)

    LayerNormalization.call = call
    try:
        yield
    finally:
        LayerNormalization.call = original


def _weighted_sum(layer, site: str, values, weights: np.ndarray, spread: float = 16.0):
    """sum(values * weights) over the last axis: a FULLY_CONNECTED with one column per weight band, then SUM.

    int8 kernels get one scale per output column, so a column holds weights within a
    factor `spread` of its largest (16: the smallest keeps 3% precision); wider
    weights are split across columns whose outputs are summed.
    """
    import keras

    ops = keras.ops
    columns = []
    remaining = weights > 0
    while remaining.any():
        band = remaining & (weights * spread > weights[remaining].max())
        columns.append(np.where(band, weights, 0.0))
        remaining &= ~band
    parts = ops.matmul(values, np.stack(columns, axis=1).astype(np.float32))
    if len(columns) == 1:
        return parts
    return ops.sum(rounding_point(layer, f"{site}_bands", parts), axis=-1, keepdims=True)

