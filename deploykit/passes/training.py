"""Fine-tuning a changed model back towards the original with `keras.distillation.Distiller`.

Used by every pass that changes the architecture (distill, prune, factorize): the
original model is the teacher. Embedding models learn the teacher's output
direction (cosine feature distillation), so unlabelled text is enough; classifiers
learn the teacher's softened logits, plus the labels when the data has them.
Optionally the student also learns the teacher's hidden states (TinyBERT) and its
last layer's self-attention (MiniLM).
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from deploykit.errors import DeployKitError
from deploykit.models import ModelBundle
from deploykit.passes.base import PassContext
from deploykit.passes.parameters import AugmentationParameters, TeacherLossParameters, parameter


class FineTuneParameters(TeacherLossParameters, AugmentationParameters):
    """The knobs every architecture-changing pass shares; each pass sets its own defaults."""

    steps: int = parameter(800, "Fine-tune steps against the original (0: none, to see the damage alone).",
                           ge=0, search=(200, 2000))
    batch_size: int = parameter(16, "Texts per fine-tune step.", gt=0)
    learning_rate: float = parameter(1e-4, "Fine-tune learning rate.", gt=0)
    # Frozen by default: updating only the rows the texts use would move them away from the rows of unseen
    # tokens, which the deployed model still meets.
    train_embeddings: bool = parameter(False, "Also train the token embeddings.")
    hidden_steps: int = parameter(0, "Steps matching each student layer's hidden states to the teacher layer at the "
                                  "same relative depth before the output distillation (TinyBERT; 0: off).",
                                  ge=0)
    # MiniLM's pairing, the last layer of each: it leaves the student's other layers free, and it measured better
    # than pairing every student layer with the teacher's at the same relative depth (MiniLM 6 -> 3, 200 + 400 steps,
    # weight 1: held-out cosine +0.0022 against +0.0011; weights 0.3 and 3 gave +0.0015 and +0.0008). Added to the
    # output distillation: in the hidden-state phase the same term at weight 1 cost 0.002 to 0.005. Off by default: at
    # the default steps it adds 0.002 (0.9046 -> 0.9067) for 1.2-1.5x the output phase's time (the last layer's input
    # is computed twice), and 500 more output steps without it gave +0.0015 with better nearest-neighbour agreement
    # (tools/bench/attention_distill.py).
    attention_weight: float = parameter(0.0, "Weight of the KL divergence between the last layers' self-attention "
                                        "distributions and value relations, added to the output distillation "
                                        "(MiniLM; 0: off). Needs as many heads as the original.", ge=0)


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
    """Hidden-state matching (when asked), then output distillation (with the attention term when asked)."""
    from keras.distillation import FeatureDistillation

    effect: dict = {}
    if p.attention_weight > 0 and p.steps > 0:
        _check_heads(context.teacher, student, label)  # before the hidden-state phase spends its time
    if p.hidden_steps > 0:
        teacher_layers = len(context.teacher.backbone.transformer_layers)
        student_layers = len(student.backbone.transformer_layers)
        matched = [round((j + 1) * teacher_layers / student_layers) - 1 for j in range(student_layers)]
        teacher = hidden_state_model(context.teacher, context.sequence_length, matched)
        pupil = hidden_state_model(student, context.sequence_length, list(range(student_layers)))
        losses = _fit(teacher, pupil, [FeatureDistillation(loss="mse")], [1.0], 0.0, context, p, p.hidden_steps,
                      f"{label} hidden states", has_labels=False)
        effect.update(hidden_layers_matched=matched, **_loss_summary(losses, "hidden_loss"))
    if p.steps > 0:
        has_labels = context.label_ids is not None and student.task == "classification"
        student_loss_weight = p.label_weight if has_labels else 0.0
        output_loss = "cosine_similarity" if student.task == "embedding" else "kl_divergence"
        if p.attention_weight > 0:
            teacher = with_attention_relations(context.teacher, context.sequence_length)
            pupil = with_attention_relations(student, context.sequence_length)
            distillations = [_output_distillation(student.task, p, (output_loss, None)),
                             FeatureDistillation(loss=(None, relation_divergence))]
            weights = [1.0, p.attention_weight]
            before = _attention_divergence(teacher, pupil, context)
        else:
            teacher = context.teacher.deployment_model(context.sequence_length)
            pupil = student.deployment_model(context.sequence_length)
            distillations, weights = [_output_distillation(student.task, p, output_loss)], [1.0]
        losses = _fit(teacher, pupil, distillations, weights, student_loss_weight, context, p, p.steps, label,
                      has_labels, callbacks)
        effect.update(_loss_summary(losses, "loss"))
        if p.attention_weight > 0:
            effect.update(attention_divergence_before=before,
                          attention_divergence_after=_attention_divergence(teacher, pupil, context))
    return effect


def _output_distillation(task: str, p: FineTuneParameters, loss):
    """Cosine feature distillation for embeddings, softened-logit distillation for classifiers."""
    from keras.distillation import FeatureDistillation, LogitsDistillation

    if task == "embedding":
        return FeatureDistillation(loss=loss)
    return LogitsDistillation(temperature=p.temperature, loss=loss)


def _fit(teacher, student, distillations: list, weights: list[float], student_loss_weight: float,
         context: PassContext, p: FineTuneParameters, steps: int, label: str, has_labels: bool,
         callbacks: tuple = ()) -> list[float]:
    """One keras Distiller run of `steps` batches; returns the per-step losses."""
    from keras.distillation import Distiller

    with _trainable_kept(teacher):  # Distiller freezes the teacher: the original's layers, shared with later passes
        distiller = Distiller(teacher=teacher, student=student, distillation_losses=distillations,
                              distillation_loss_weights=weights, student_loss_weight=student_loss_weight)
        return _fit_distiller(distiller, context, p, steps, label, has_labels, callbacks)


def _fit_distiller(distiller, context: PassContext, p: FineTuneParameters, steps: int, label: str, has_labels: bool,
                   callbacks: tuple) -> list[float]:
    import keras
    import tensorflow as tf

    # Distiller insists on a student loss; without labels its weight is 0 and it is never computed.
    label_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    count = len(context.teacher_outputs)
    labels = (context.label_ids if has_labels else np.zeros(count, np.int32)).astype(np.int32)
    if isinstance(distiller.student.output, tuple):  # output and attention relations: the labels score the output
        label_loss, labels = (label_loss, _no_loss), (labels, labels)
    distiller.compile(optimizer=keras.optimizers.Adam(p.learning_rate), loss=label_loss)
    dataset = (
        tf.data.Dataset.from_tensor_slices((dict(context.train_inputs), labels))
        .shuffle(count, seed=context.seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(min(p.batch_size, count), drop_remainder=True)
    )
    if p.augment > 0 and p.token_noise > 0:
        dataset = dataset.map(token_noise(context, p))
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


def with_attention_relations(bundle: ModelBundle, sequence_length: int):
    """The deployment model with a second output, its last layer's attention relations: (embedding or logits,
    [batch, 2 x heads, length, length]). A tuple, because Keras keeps the Distiller's losses as a tuple but turns a
    dict into its own tracked type, which then no longer matches the outputs' structure."""
    import keras

    deployment = bundle.deployment_model(sequence_length)
    relations = attention_relation_model(bundle, sequence_length, len(bundle.backbone.transformer_layers) - 1)
    return keras.Model(deployment.input, (deployment.output, relations(deployment.input)))


def attention_relation_model(bundle: ModelBundle, sequence_length: int, layer: int):
    """Token ids and mask -> a transformer layer's per-head attention distributions, then its per-head value
    relations softmax(V Vᵀ / √d) (MiniLM), shape [batch, 2 x heads, length, length]. Each row is a distribution
    over the real tokens; rows of padded tokens are zero, so they add nothing to a loss."""
    import keras

    backbone = bundle.backbone
    block = backbone.transformer_layers[layer]
    below = backbone.transformer_layers[layer - 1].output if layer > 0 else backbone.embeddings_dropout.output
    states = keras.Model(backbone.input, below)  # the layer's input, without running the layer itself
    token_ids = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((sequence_length,), dtype="int32", name="padding_mask")
    hidden = states({"token_ids": token_ids, "padding_mask": padding_mask,
                     "segment_ids": keras.ops.zeros_like(token_ids)})
    relations = _relations_layer_class()(block._self_attention_layer)(hidden, padding_mask)
    return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, relations)


def _relations_layer_class():
    import keras

    ops = keras.ops

    class AttentionRelations(keras.layers.Layer):
        """Wraps a layer's MultiHeadAttention (shared weights) to return what it attends to, not what it outputs."""

        def __init__(self, attention, **kwargs):
            super().__init__(**kwargs)
            self.attention = attention

        def call(self, hidden, padding_mask):
            real = ops.cast(padding_mask, "bool")
            keys = ops.repeat(ops.expand_dims(real, 1), ops.shape(hidden)[1], axis=1)  # [batch, query, key]
            _, probabilities = self.attention(query=hidden, value=hidden, attention_mask=keys,
                                              return_attention_scores=True)
            values = ops.transpose(self.attention._value_dense(hidden), (0, 2, 1, 3))  # [batch, head, token, width]
            scores = ops.matmul(values, ops.transpose(values, (0, 1, 3, 2))) / float(values.shape[-1]) ** 0.5
            value_relations = ops.softmax(ops.where(keys[:, None], scores, -1e9), axis=-1)
            queries = ops.cast(real, probabilities.dtype)[:, None, :, None]
            return ops.concatenate([probabilities, value_relations], axis=1) * queries

    return AttentionRelations


def relation_divergence(teacher, student):
    """KL(teacher || student) per row of `attention_relation_model`'s output, averaged over the real rows
    (a row sums to 1 for a real token, 0 for padding; padded keys hold exactly 0 in both)."""
    import keras

    ops = keras.ops
    per_row = ops.sum(teacher * (ops.log(teacher + 1e-12) - ops.log(student + 1e-12)), axis=-1)
    return ops.sum(per_row) / ops.maximum(ops.sum(teacher), 1.0)


def _attention_divergence(teacher, student, context: PassContext, count: int = 256) -> float:
    """relation_divergence on the first `count` training texts, unperturbed: the attention term's progress on its own
    (the phase's loss mixes it with the output distillation). 256 texts give a stable mean in seconds."""
    inputs = {name: values[:count] for name, values in context.train_inputs.items()}
    relations = [model.predict(inputs, batch_size=32, verbose=0)[1] for model in (teacher, student)]
    return round(float(relation_divergence(*relations)), 6)


def _check_heads(teacher: ModelBundle, student: ModelBundle, label: str) -> None:
    """Attention is compared head by head, so the student needs the original's heads."""
    heads = [bundle.backbone.transformer_layers[-1]._self_attention_layer._num_heads for bundle in (teacher, student)]
    if heads[0] != heads[1]:
        raise DeployKitError(f"{label}: attention distillation compares attention head by head, but the student has "
                             f"{heads[1]} heads per layer and the original {heads[0]}; set attention_weight=0 for "
                             "a pass that removes heads.")


def _no_loss(labels, relations):
    """The relations have no labels."""
    return 0.0


def token_noise(context: PassContext, p: AugmentationParameters):
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

