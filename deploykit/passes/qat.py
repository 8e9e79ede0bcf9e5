"""Quantization-aware training (`qat`): fine-tune with int8 rounding simulated, so the
full-integer export keeps the original model's outputs.

Fake-quantization (`keras.quantizers.fake_quant_with_min_max_vars`, which the TFLite
converter reads as quantization parameters) is inserted at trace time, without
rebuilding the model, on every tensor the integer graph stores: Dense/EinsumDense
outputs, LayerNormalization inputs (the residual sums, where BERT-family models
keep their outlier channels) and internals, attention scores, softmax and context,
the pooling head. Each range is initialised from calibration and then learned.
Kernels are rounded per output channel during training, as the converter will
round them. The converter calibrates any tensor left without a fake-quant node,
so the export is full-integer either way.

The fine-tune needs no labels: the student matches the original model's outputs
(cosine for embeddings, softened logits for classifiers), plus the labels when the
data has them.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from deploykit.graph.integer_graph import simulated_rounding
from deploykit.passes.base import Pass, PassContext, PassResult
from deploykit.passes.parameters import TeacherLossParameters, parameter
from deploykit.targets.schema import INTEGER_PRECISIONS


class QatParameters(TeacherLossParameters):
    steps: int = parameter(600, "Optimizer steps (MiniLM at 48 tokens, batch 16: about 5 minutes on 2 cores).", gt=0,
                           search=(100, 1000))
    batch_size: int = parameter(16, "Texts per step.", gt=0)
    learning_rate: float = parameter(1e-4, "Learning rate of the weights: a few times the usual BERT fine-tuning "
                                     "rate, as the run is short.", gt=0)
    range_learning_rate: float = parameter(1e-3, "Learning rate of the activation ranges, in the activations' "
                                           "own units.", gt=0)
    calibration_samples: int = parameter(64, "Samples that initialise the activation ranges.", gt=0)


class ActivationRanges:
    """Per-layer activation ranges: observed on calibration data, then trainable variables."""

    def __init__(self):
        self.observed: dict[tuple[int, str], list[float]] = {}
        self.variables: dict[tuple[int, str], tuple] = {}
        self.frozen: dict[tuple[int, str], tuple[float, float]] | None = None

    def observe(self, key: tuple[int, str], values) -> None:
        low, high = float(np.min(values)), float(np.max(values))
        seen = self.observed.setdefault(key, [low, high])
        seen[0], seen[1] = min(seen[0], low), max(seen[1], high)

    def make_trainable(self) -> list:
        import keras

        for key, (low, high) in self.observed.items():
            self.variables[key] = (
                keras.Variable(min(low, 0.0), dtype="float32", name="qat_min"),
                keras.Variable(max(high, 1e-6), dtype="float32", name="qat_max"),
            )
        return [v for pair in self.variables.values() for v in pair]

    @staticmethod
    def softmax(probabilities):
        """Softmax outputs: int8 kernels fix their range to [0, 1) in steps of 1/256."""
        from keras.quantizers import fake_quant_with_min_max_vars

        return fake_quant_with_min_max_vars(probabilities, 0.0, 255.0 / 256.0, num_bits=8)

    def freeze(self) -> None:
        """Fix the learned ranges as constants, for tracing the export graph."""
        self.frozen = {key: (float(low.numpy()), float(high.numpy())) for key, (low, high) in self.variables.items()}

    def bounds(self, key: tuple[int, str]):
        """The (low, high) range for `key`: constants once frozen, variables while training, None while observing."""
        if self.frozen is not None:
            return self.frozen[key]
        return self.variables.get(key)

    def apply(self, key: tuple[int, str], values):
        """Fake-quantize `values` with the range for `key` (or record it while observing)."""
        from keras.quantizers import fake_quant_with_min_max_vars

        bounds = self.bounds(key)
        if bounds is None:
            import tensorflow as tf

            if tf.executing_eagerly():  # symbolic shape inference passes through unrecorded
                self.observe(key, np.asarray(values))
            return values
        return fake_quant_with_min_max_vars(values, bounds[0], bounds[1], num_bits=8)


def _rounded_kernel(kernel, reduced_axes: tuple[int, ...], exporting: bool):
    """Kernel rounding as the converter does it: int8, symmetric, one scale per output channel.

    Training rounds with a straight-through gradient; the export graph keeps the float
    kernel, since the converter applies this very rounding (per-channel fake-quant
    nodes do not convert with TF 2.21's converter, per-tensor ones cost accuracy).
    """
    from keras import ops

    if exporting:
        return kernel
    scale = ops.maximum(ops.max(ops.abs(kernel), axis=reduced_axes, keepdims=True), 1e-12) / 127.0
    rounded = ops.round(kernel / scale) * scale
    return kernel + ops.stop_gradient(rounded - kernel)


def einsum_input_axes(equation: str) -> tuple[int, ...]:
    """Axes of an EinsumDense kernel that are summed over (the rest are output channels)."""
    inputs, output = equation.split("->")
    kernel_spec = inputs.split(",")[1]
    return tuple(i for i, letter in enumerate(kernel_spec) if letter not in output)


@contextmanager
def fake_quantized(ranges: ActivationRanges) -> Iterator[None]:
    """Trace the model with int8 rounding simulated wherever the integer graph stores a tensor.

    Dense/EinsumDense (kernel, output before and after the activation), LayerNormalization
    (input, i.e. the residual sum, and output), attention (scaled query, scores, softmax,
    context), and every `rounding_point` deploykit's own integer-capable ops declare.
    """
    from keras import layers, ops
    from keras.src.layers.activations import softmax as softmax_module

    def round_at(owner, site, values):
        return ranges.apply((id(owner), site), values)

    def dense_call(self, inputs, training=None):
        kernel = _rounded_kernel(self.kernel, (0,), ranges.frozen is not None)
        return _dense(self, ops.matmul(inputs, kernel), round_at)

    def einsum_dense_call(self, inputs, training=None):
        kernel = _rounded_kernel(self.kernel, einsum_input_axes(self.equation), ranges.frozen is not None)
        return _dense(self, ops.einsum(self.equation, inputs, kernel), round_at)

    norm_call = layers.LayerNormalization.call  # integer_layer_norm's, when it is active

    def layer_norm_call(self, inputs):  # its input and internals are rounding points of integer_layer_norm
        return round_at(self, "output", norm_call(self, inputs))

    def compute_attention(self, query, key, value, attention_mask=None, training=None,
                          return_attention_scores=False, use_causal_mask=False):
        if use_causal_mask or len(query.shape) != 4:
            return attention_call(self, query, key, value, attention_mask, training, return_attention_scores,
                                  use_causal_mask)
        query = round_at(self, "query", ops.multiply(query, ops.cast(self._inverse_sqrt_key_dim, query.dtype)))
        scores = round_at(self, "scores", ops.einsum(self._dot_product_equation, key, query))
        if attention_mask is not None:  # as keras.layers.Softmax does, but padded keys get the range's floor
            while len(attention_mask.shape) < len(scores.shape):
                attention_mask = ops.expand_dims(attention_mask, axis=-len(self._attention_axes) * 2 - 1)
            bounds = ranges.bounds((id(self), "scores"))
            if bounds is None:  # observing: the mask value must not widen the scores' range
                scores = ops.where(attention_mask, scores, softmax_module._large_negative_number(scores.dtype))
            else:  # the lowest score int8 can hold: weight ~exp(floor - max) for padding, at no cost in resolution
                scores = round_at(self, "scores", ops.where(attention_mask, scores, bounds[0]))
        probabilities = ranges.softmax(ops.softmax(scores, axis=-1))
        if attention_mask is not None:
            probabilities = ranges.softmax(ops.where(attention_mask, probabilities, 0.0))
        context = round_at(self, "context", ops.einsum(self._combine_equation, probabilities, value))
        return context, probabilities

    attention_call = layers.MultiHeadAttention._compute_attention
    replaced = {(layers.Dense, "call"): dense_call, (layers.EinsumDense, "call"): einsum_dense_call,
                (layers.LayerNormalization, "call"): layer_norm_call,
                (layers.MultiHeadAttention, "_compute_attention"): compute_attention}
    originals = {(cls, name): getattr(cls, name) for cls, name in replaced}
    for (cls, name), method in replaced.items():
        setattr(cls, name, method)
    try:
        with simulated_rounding(round_at):
            yield
    finally:
        for (cls, name), method in originals.items():
            setattr(cls, name, method)


def _dense(layer, outputs, round_at):
    from keras import ops

    if layer.bias is not None:
        outputs = ops.add(outputs, layer.bias)
    if layer.activation is not None and layer.activation is not _linear():
        outputs = layer.activation(round_at(layer, "pre_activation", outputs))
    return round_at(layer, "output", outputs)


def _linear():
    from keras import activations

    return activations.linear


class QuantizationAwareTraining(Pass):
    name = "qat"
    description = "fine-tune with int8 rounding simulated (kernels per output channel, activation ranges learned)"
    Parameters = QatParameters
    must_be_last = True
    simulates = INTEGER_PRECISIONS

    def apply(self, context: PassContext) -> PassResult:
        """Train the bundle's weights in place; `result.effect` says how far outputs moved back."""
        import keras
        import tensorflow as tf

        p = self.parameters
        ranges = ActivationRanges()
        started = time.perf_counter()
        with fake_quantized(ranges):
            model = context.bundle.deployment_model(context.sequence_length)
            with context.log.step("qat_calibrate", f"QAT: observing activation ranges on {p.calibration_samples} samples"):
                samples = context.calibration[: p.calibration_samples]
                batch = {name: np.concatenate([s[name] for s in samples]) for name in samples[0]}
                for start in range(0, len(samples), p.batch_size):
                    model({k: v[start:start + p.batch_size] for k, v in batch.items()}, training=False)
            range_variables = ranges.make_trainable()
            weights = list(model.trainable_variables)
            variables = weights + range_variables
            optimizers = (keras.optimizers.Adam(p.learning_rate), keras.optimizers.Adam(p.range_learning_rate))
            loss_of = distillation_loss(context.bundle.task, p, context.label_ids is not None)

            @tf.function(reduce_retracing=True)
            def train_step(inputs, teacher, labels):
                with tf.GradientTape() as tape:
                    loss = loss_of(model(inputs, training=False), teacher, labels)
                gradients = tape.gradient(loss, variables)  # None for layers the output does not use
                weight_pairs = [(g, v) for g, v in zip(gradients[:len(weights)], weights) if g is not None]
                range_pairs = [(g, v) for g, v in zip(gradients[len(weights):], range_variables) if g is not None]
                optimizers[0].apply_gradients(weight_pairs)
                optimizers[1].apply_gradients(range_pairs)
                return loss

            losses = run_training_steps(context, train_step, p.steps, p.batch_size, "qat_train", "QAT")
        ranges.freeze()
        self.ranges = ranges
        return PassResult(self.name, self.describe(), {
            "fake_quant_ranges": len(ranges.frozen), **loss_summary(losses),
            "seconds": round(time.perf_counter() - started, 1),
        })

    def export_context(self):
        """Trace the trained model with its learned ranges fixed (after `apply`, in the same graph context)."""
        return fake_quantized(self.ranges)


def run_training_steps(context: PassContext, train_step, steps: int, batch_size: int, step_name: str,
                       label: str) -> list[float]:
    """`steps` calls of `train_step(inputs, teacher outputs, label ids)` on seeded random batches of the training
    texts; the losses, logged every 50 steps."""
    import tensorflow as tf

    rng = np.random.default_rng(context.seed)
    count = len(context.teacher_outputs)
    labels = context.label_ids if context.label_ids is not None else np.zeros(count, np.int32)
    losses = []
    with context.log.step(step_name, f"{label}: {steps} steps of {batch_size} on {count} texts"):
        for step in range(steps):
            chosen = rng.choice(count, size=min(batch_size, count), replace=False)
            inputs = {k: tf.constant(v[chosen]) for k, v in context.train_inputs.items()}
            losses.append(float(train_step(inputs, tf.constant(context.teacher_outputs[chosen]),
                                           tf.constant(labels[chosen].astype(np.int32)))))
            if context.log.console is not None and (step + 1) % 50 == 0:
                context.log.info(f"  {label} step {step + 1}/{steps}: loss {np.mean(losses[-50:]):.5f}")
    return losses


def loss_summary(losses: list[float]) -> dict:
    """The mean loss over the first and the last steps (a window of up to 20)."""
    window = max(1, min(20, len(losses) // 5))
    return {"loss_first": round(float(np.mean(losses[:window])), 6),
            "loss_last": round(float(np.mean(losses[-window:])), 6)}


def distillation_loss(task: str, p: TeacherLossParameters, has_labels: bool):
    """Against the original's outputs: 1 - cosine for embeddings; softened-logit KL (plus the labels) otherwise."""
    import keras
    from keras import ops

    if task == "embedding":
        def loss(outputs, teacher, labels):
            return 1.0 + ops.mean(keras.losses.cosine_similarity(teacher, outputs))  # Keras returns -cosine
        return loss

    def loss(outputs, teacher, labels):
        soft_teacher = ops.softmax(teacher / p.temperature)
        distill = keras.losses.kl_divergence(soft_teacher, ops.softmax(outputs / p.temperature))
        distill = ops.mean(distill) * p.temperature**2
        if not has_labels:
            return distill
        hard = ops.mean(keras.losses.sparse_categorical_crossentropy(labels, outputs, from_logits=True))
        return p.label_weight * hard + (1 - p.label_weight) * distill
    return loss
