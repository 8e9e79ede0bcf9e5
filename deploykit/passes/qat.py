"""Quantization-aware training (`qat`): fine-tune with int8 rounding simulated, so the
full-integer export keeps the original model's outputs.

Fake-quantization (`keras.quantizers.fake_quant_with_min_max_vars`, which the TFLite
converter reads as quantization parameters) is inserted at trace time, without
rebuilding the model: every Dense/EinsumDense kernel is rounded per tensor,
symmetric, to 8 bits; the outputs of those layers and the input and output of every
LayerNormalization (the residual sums, where BERT-family models keep their outlier
channels) are rounded to 8 bits with a range initialised from calibration and then
learned. The converter calibrates every tensor without a fake-quant node as in
post-training quantization, so the export is full-integer either way.

The fine-tune needs no labels: the student matches the original model's outputs
(cosine for embeddings, softened logits for classifiers), plus the labels when the
data has them.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from deploykit.models import bounded_attention_mask, integer_layer_norm
from deploykit.passes.base import Pass, PassContext, PassResult


@dataclass
class QatParameters:
    steps: int = 300  # optimizer steps; about 4 passes over 1,300 texts at batch 16
    batch_size: int = 16
    learning_rate: float = 2e-5  # the usual BERT fine-tuning rate; ranges learn at the same rate
    calibration_samples: int = 64  # samples that initialise the activation ranges
    temperature: float = 2.0  # softening of teacher logits (classifiers)
    label_weight: float = 0.5  # share of the label loss when labels exist; the rest is distillation


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

    def freeze(self) -> None:
        """Fix the learned ranges as constants, for tracing the export graph."""
        self.frozen = {key: (float(low.numpy()), float(high.numpy())) for key, (low, high) in self.variables.items()}

    def apply(self, key: tuple[int, str], values):
        """Fake-quantize `values` with the range for `key` (or record it while observing)."""
        from keras.quantizers import fake_quant_with_min_max_vars

        if self.frozen is not None:
            low, high = self.frozen[key]
        elif self.variables:
            low, high = self.variables[key]
        else:
            import tensorflow as tf

            if tf.executing_eagerly():  # symbolic shape inference passes through unrecorded
                self.observe(key, np.asarray(values))
            return values
        return fake_quant_with_min_max_vars(values, low, high, num_bits=8)


def _quantized_kernel(kernel):
    """Per-tensor symmetric int8 rounding of a kernel, as the converter stores it."""
    from keras import ops
    from keras.quantizers import fake_quant_with_min_max_vars

    bound = ops.stop_gradient(ops.max(ops.abs(kernel)))
    return fake_quant_with_min_max_vars(kernel, -bound, bound, num_bits=8, narrow_range=True)


@contextmanager
def fake_quantized(ranges: ActivationRanges) -> Iterator[None]:
    """Trace Dense, EinsumDense and LayerNormalization with int8 rounding simulated."""
    from keras import layers, ops

    def dense_call(self, inputs, training=None):
        outputs = ops.matmul(inputs, _quantized_kernel(self.kernel))
        return ranges.apply((id(self), "output"), _bias_and_activation(self, outputs))

    def einsum_dense_call(self, inputs, training=None):
        outputs = ops.einsum(self.equation, inputs, _quantized_kernel(self.kernel))
        return ranges.apply((id(self), "output"), _bias_and_activation(self, outputs))

    norm_call = layers.LayerNormalization.call  # integer_layer_norm's, when it is active

    def layer_norm_call(self, inputs):
        outputs = norm_call(self, ranges.apply((id(self), "input"), inputs))
        return ranges.apply((id(self), "output"), outputs)

    replaced = {layers.Dense: dense_call, layers.EinsumDense: einsum_dense_call,
                layers.LayerNormalization: layer_norm_call}
    originals = {cls: cls.call for cls in replaced}
    for cls, call in replaced.items():
        cls.call = call
    try:
        yield
    finally:
        for cls, call in originals.items():
            cls.call = call


def _bias_and_activation(layer, outputs):
    from keras import ops

    if layer.bias is not None:
        outputs = ops.add(outputs, layer.bias)
    return layer.activation(outputs) if layer.activation is not None else outputs


class QuantizationAwareTraining(Pass):
    name = "qat"
    description = "fine-tune with int8 fake-quantization (kernels per tensor, activation ranges learned)"
    Parameters = QatParameters

    def apply(self, context: PassContext) -> PassResult:
        """Train the bundle's weights in place; `result.effect` says how far outputs moved back."""
        import keras
        import tensorflow as tf

        p = self.parameters
        ranges = ActivationRanges()
        started = time.perf_counter()
        with self.tracing(ranges, context.masked_logit):
            model = context.bundle.deployment_model(context.sequence_length)
            with context.log.step("qat_calibrate", f"QAT: observing activation ranges on {p.calibration_samples} samples"):
                samples = context.calibration[: p.calibration_samples]
                batch = {name: np.concatenate([s[name] for s in samples]) for name in samples[0]}
                for start in range(0, len(samples), p.batch_size):
                    model({k: v[start:start + p.batch_size] for k, v in batch.items()}, training=False)
            range_variables = ranges.make_trainable()
            variables = list(model.trainable_variables) + range_variables
            optimizer = keras.optimizers.Adam(p.learning_rate)
            loss_of = _loss_function(context.bundle.task, p, context.label_ids is not None)

            @tf.function(reduce_retracing=True)
            def train_step(inputs, teacher, labels):
                with tf.GradientTape() as tape:
                    loss = loss_of(model(inputs, training=False), teacher, labels)
                gradients = tape.gradient(loss, variables)  # None for layers the output does not use
                optimizer.apply_gradients([(g, v) for g, v in zip(gradients, variables) if g is not None])
                return loss

            rng = np.random.default_rng(context.seed)
            count = len(context.teacher_outputs)
            labels = context.label_ids if context.label_ids is not None else np.zeros(count, np.int32)
            losses = []
            with context.log.step("qat_train", f"QAT: {p.steps} steps of {p.batch_size} on {count} texts"):
                for step in range(p.steps):
                    chosen = rng.choice(count, size=min(p.batch_size, count), replace=False)
                    inputs = {k: tf.constant(v[chosen]) for k, v in context.train_inputs.items()}
                    losses.append(float(train_step(inputs, tf.constant(context.teacher_outputs[chosen]),
                                                   tf.constant(labels[chosen].astype(np.int32)))))
                    if context.log.console is not None and (step + 1) % 50 == 0:
                        context.log.info(f"  QAT step {step + 1}/{p.steps}: loss {np.mean(losses[-50:]):.5f}")
        ranges.freeze()
        self.ranges = ranges
        window = max(1, min(20, len(losses) // 5))
        return PassResult(self.name, self.describe(), {
            "fake_quant_ranges": len(ranges.frozen),
            "loss_first": round(float(np.mean(losses[:window])), 6),
            "loss_last": round(float(np.mean(losses[-window:])), 6),
            "seconds": round(time.perf_counter() - started, 1),
        })

    @staticmethod
    @contextmanager
    def tracing(ranges: ActivationRanges, masked_logit: float | None) -> Iterator[None]:
        """The contexts under which the QAT graph is traced, for training and for export alike."""
        with ExitStack() as stack:
            if masked_logit is not None:
                stack.enter_context(bounded_attention_mask(masked_logit))
                stack.enter_context(integer_layer_norm())
            stack.enter_context(fake_quantized(ranges))
            yield

    def export_context(self, masked_logit: float | None):
        """Trace the trained model with its learned ranges fixed (call after `apply`)."""
        return self.tracing(self.ranges, masked_logit)


def _loss_function(task: str, p: QatParameters, has_labels: bool):
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
