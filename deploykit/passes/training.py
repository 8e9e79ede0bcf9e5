"""Fine-tuning a changed model back towards the original with `keras.distillation.Distiller`.

Used by every pass that changes the architecture (distill, prune, factorize): the
original model is the teacher. Embedding models learn the teacher's output
direction (cosine feature distillation), so unlabelled text is enough; classifiers
learn the teacher's softened logits, plus the labels when the data has them.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from deploykit.models import ModelBundle
from deploykit.passes.base import PassContext
from deploykit.passes.parameters import PassParameters, parameter


class FineTuneParameters(PassParameters):
    """The knobs every architecture-changing pass shares; each pass sets its own defaults."""

    steps: int = parameter(800, "Fine-tune steps against the original (0: none, to see the damage alone).",
                           ge=0, search=(200, 2000))
    batch_size: int = parameter(16, "Texts per fine-tune step.", gt=0)
    learning_rate: float = parameter(1e-4, "Fine-tune learning rate.", gt=0)
    temperature: float = parameter(2.0, "Softening of the teacher's logits (classifiers).", gt=0)
    label_weight: float = parameter(0.5, "Share of the label loss when the data has labels; the rest is "
                                    "distillation.", ge=0, le=1)
    # The teacher labels perturbed copies on the fly, so a few thousand texts teach the student the
    # teacher's behaviour around them, not just at them (TinyBERT's lesson for small data).
    augment: float = parameter(0.5, "Share of each batch perturbed by token noise (the teacher labels the copies).",
                               ge=0, le=1)
    token_noise: float = parameter(0.15, "In a perturbed text, share of tokens replaced, half from the corpus and "
                                   "half from the whole vocabulary.", ge=0, le=1)
    # Frozen by default: updating only the rows the texts use would move them away from the rows of unseen
    # tokens, which the deployed model still meets.
    train_embeddings: bool = parameter(False, "Also train the token embeddings.")
    hidden_steps: int = parameter(0, "Steps matching each student layer's hidden states to the teacher layer at the "
                                  "same relative depth before the output distillation (TinyBERT; 0: off).",
                                  ge=0)
    attention_weight: float = parameter(0.0, "Weight, in the hidden-state phase, of the KL divergence between the "
                                        "matched layers' attention distributions and value relations (MiniLM; 0: off).",
                                        ge=0)


def fine_tune_from_teacher(student: ModelBundle, context: PassContext, p: FineTuneParameters, label: str,
                           callbacks: list | None = None) -> dict:
    """Train `student` in place against the original model; returns the losses and time for the report.
    `callbacks` (Keras callbacks) run in the output-distillation phase, e.g. a pruning schedule."""
    import keras

    effect: dict = {}
    started = time.perf_counter()
    keras.utils.set_random_seed(context.seed)
    with _frozen([] if p.train_embeddings else [student.backbone.token_embedding]):
        effect.update(_distill_in_phases(student, context, p, label, [*(callbacks or []), *context.callbacks]))
    effect.update(fine_tune_steps=p.steps, fine_tune_seconds=round(time.perf_counter() - started, 1))
    return effect


def _distill_in_phases(student: ModelBundle, context: PassContext, p: FineTuneParameters, label: str,
                       callbacks: list) -> dict:
    """Hidden-state matching (when asked), then output distillation."""
    from keras.distillation import FeatureDistillation, LogitsDistillation

    effect: dict = {}
    if p.hidden_steps > 0:
        teacher_layers = len(context.teacher.backbone.transformer_layers)
        student_layers = len(student.backbone.transformer_layers)
        matched = [round((j + 1) * teacher_layers / student_layers) - 1 for j in range(student_layers)]
        teacher = hidden_state_model(context.teacher, context.sequence_length, matched)
        pupil = hidden_state_model(student, context.sequence_length, list(range(student_layers)))
        losses = _fit(teacher, pupil, FeatureDistillation(loss="mse"), 0.0, context, p, p.hidden_steps,
                      f"{label} hidden states", has_labels=False)
        effect.update(hidden_layers_matched=matched, **_loss_summary(losses, "hidden_loss"))
    if p.steps > 0:
        has_labels = context.label_ids is not None and student.task == "classification"
        if student.task == "embedding":
            distillation, student_loss_weight = FeatureDistillation(loss="cosine_similarity"), 0.0
        else:
            distillation = LogitsDistillation(temperature=p.temperature)
            student_loss_weight = p.label_weight if has_labels else 0.0
        teacher = context.teacher.deployment_model(context.sequence_length)
        losses = _fit(teacher, student.deployment_model(context.sequence_length), distillation, student_loss_weight,
                      context, p, p.steps, label, has_labels, callbacks)
        effect.update(_loss_summary(losses, "loss"))
    return effect


def _fit(teacher, student, distillation, student_loss_weight: float, context: PassContext, p: FineTuneParameters,
         steps: int, label: str, has_labels: bool, callbacks: tuple = ()) -> list[float]:
    """One keras Distiller run of `steps` batches; returns the per-step losses."""
    from keras.distillation import Distiller

    with _trainable_kept(teacher):  # Distiller freezes the teacher: the original's layers, shared with later passes
        distiller = Distiller(teacher=teacher, student=student, distillation_losses=distillation,
                              student_loss_weight=student_loss_weight)
        return _fit_distiller(distiller, context, p, steps, label, has_labels, callbacks)


def _fit_distiller(distiller, context: PassContext, p: FineTuneParameters, steps: int, label: str, has_labels: bool,
                   callbacks: tuple) -> list[float]:
    import keras
    import tensorflow as tf

    # Distiller insists on a student loss; without labels its weight is 0 and it is never computed.
    distiller.compile(optimizer=keras.optimizers.Adam(p.learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    count = len(context.teacher_outputs)
    labels = context.label_ids if has_labels else np.zeros(count, np.int32)
    dataset = (
        tf.data.Dataset.from_tensor_slices((dict(context.train_inputs), labels.astype(np.int32)))
        .shuffle(count, seed=context.seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(min(p.batch_size, count), drop_remainder=True)
    )
    if p.augment > 0 and p.token_noise > 0:
        dataset = dataset.map(_token_noise(context, p))
    history = _loss_history_class()(context, label, steps)
    with context.log.step(f"{label}_train", f"{label}: {steps} distillation steps of {p.batch_size} on {count} texts"):
        with warnings.catch_warnings():  # Keras warns about the frozen teacher and the unused pooler; both expected
            warnings.simplefilter("ignore", UserWarning)
            distiller.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[history, *callbacks])
    return history.losses


@contextmanager
def _trainable_kept(model) -> Iterator[None]:
    """Each layer's `trainable` flag as it was before the block (outermost first: setting a flag recurses)."""
    flags = [(layer, layer.trainable) for layer in model._flatten_layers(include_self=True, recursive=True)]
    try:
        yield
    finally:
        for layer, trainable in flags:
            layer.trainable = trainable


@contextmanager
def _frozen(layers: list) -> Iterator[None]:
    """Layers left out of training for the duration, trainable again afterwards."""
    for layer in layers:
        layer.trainable = False
    try:
        yield
    finally:
        for layer in layers:
            layer.trainable = True


def _loss_summary(losses: list[float], name: str) -> dict:
    window = max(1, min(20, len(losses) // 5))
    return {f"{name}_first": round(float(np.mean(losses[:window])), 6),
            f"{name}_last": round(float(np.mean(losses[-window:])), 6)}


def hidden_state_model(bundle: ModelBundle, sequence_length: int, layers: list[int]):
    """Token ids and mask -> the given transformer layers' outputs, concatenated per token, zero at padding."""
    import keras

    backbone = bundle.backbone
    states = keras.Model(backbone.input, [backbone.transformer_layers[i].output for i in layers])
    token_ids = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((sequence_length,), dtype="int32", name="padding_mask")
    outputs = states({"token_ids": token_ids, "padding_mask": padding_mask,
                      "segment_ids": keras.ops.zeros_like(token_ids)})
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    keep = keras.ops.expand_dims(keras.ops.cast(padding_mask, "float32"), -1)
    return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask},
                       keras.ops.concatenate(outputs, axis=-1) * keep)


def _token_noise(context: PassContext, p: FineTuneParameters):
    """A tf.data map replacing, in a share of the batch, a share of the real tokens by tokens drawn from the
    corpus (by frequency) or the vocabulary. [CLS], [SEP] and padding stay; the teacher sees the same text."""
    import tensorflow as tf

    ids, mask = context.train_inputs["token_ids"], context.train_inputs["padding_mask"].astype(bool)
    ends = np.zeros_like(mask)
    ends[:, 0] = True
    ends[np.arange(len(mask)), mask.sum(axis=1) - 1] = True  # [CLS] first, [SEP] last real position
    corpus = ids[mask & ~ends].astype(np.int32)
    vocabulary = context.bundle.tokenizer.get_vocabulary()
    ordinary = np.array([i for i, token in enumerate(vocabulary) if not token.startswith("[")], np.int32)
    # As many vocabulary draws as corpus draws: half the replacements come from each.
    drawn = np.random.default_rng(context.seed).choice(ordinary, size=len(corpus))
    pool = tf.constant(np.concatenate([corpus, drawn]))
    generator = tf.random.Generator.from_seed(context.seed)

    def perturb(inputs, labels):
        token_ids, padding = inputs["token_ids"], inputs["padding_mask"]
        shape = tf.shape(token_ids)
        lengths = tf.reduce_sum(padding, axis=1, keepdims=True)
        positions = tf.range(shape[1])[None, :]
        inner = (positions > 0) & (positions < lengths - 1)
        chosen_rows = generator.uniform([shape[0], 1]) < p.augment
        replaced = inner & chosen_rows & (generator.uniform(tf.shape(token_ids)) < p.token_noise)
        drawn = tf.gather(pool, generator.uniform(tf.shape(token_ids), 0, tf.shape(pool)[0], dtype=tf.int32))
        return {**inputs, "token_ids": tf.where(replaced, drawn, token_ids)}, labels

    return perturb


def _loss_history_class():
    import keras

    class LossHistory(keras.callbacks.Callback):
        """Per-step losses (Keras reports a running mean; differences recover each step's value)."""

        def __init__(self, context: PassContext, label: str, steps: int):
            super().__init__()
            self.context, self.label, self.steps = context, label, steps
            self.losses: list[float] = []
            self._running = 0.0

        def on_train_batch_end(self, batch, logs=None):
            running = float((logs or {}).get("loss", 0.0))
            count = batch + 1
            self.losses.append(running * count - self._running * (count - 1))
            self._running = running
            if self.context.log.console is not None and count % 100 == 0:
                self.context.log.info(f"  {self.label} step {count}/{self.steps}: loss {np.mean(self.losses[-100:]):.5f}")

    return LossHistory

