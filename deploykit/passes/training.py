"""Fine-tuning a changed model back towards the original with `keras.distillation.Distiller`.

Used by every pass that changes the architecture (distill, prune, factorize): the
original model is the teacher. Embedding models learn the teacher's output
direction (cosine feature distillation), so unlabelled text is enough; classifiers
learn the teacher's softened logits, plus the labels when the data has them.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from deploykit.errors import DeployKitError
from deploykit.models import ModelBundle
from deploykit.passes.base import PassContext


@dataclass
class FineTuneParameters:
    """The knobs every architecture-changing pass shares; each pass sets its own defaults."""

    steps: int = field(default=800, metadata={"range": (0, 5000)})  # 0: no fine-tune (see the damage alone)
    batch_size: int = 16
    learning_rate: float = field(default=1e-4, metadata={"range": (1e-5, 5e-4)})
    temperature: float = 2.0  # softening of teacher logits (classifiers)
    label_weight: float = 0.5  # share of the label loss when labels exist; the rest is distillation

    def check(self, pass_name: str) -> None:
        for name in ("batch_size", "learning_rate", "temperature"):
            if getattr(self, name) <= 0:
                raise DeployKitError(f"{pass_name} parameter {name} must be positive, got {getattr(self, name)}.")
        if self.steps < 0:
            raise DeployKitError(f"{pass_name} parameter steps must be >= 0, got {self.steps}.")
        if not 0 <= self.label_weight <= 1:
            raise DeployKitError(f"{pass_name} parameter label_weight must be in [0, 1], got {self.label_weight}.")


def fine_tune_from_teacher(student: ModelBundle, context: PassContext, p: FineTuneParameters, label: str) -> dict:
    """Train `student` in place against the original model; returns the losses and time for the report."""
    import keras
    import tensorflow as tf
    from keras.distillation import Distiller, FeatureDistillation, LogitsDistillation

    if p.steps == 0:
        return {"fine_tune_steps": 0}
    started = time.perf_counter()
    keras.utils.set_random_seed(context.seed)
    has_labels = context.label_ids is not None and student.task == "classification"
    if student.task == "embedding":
        losses, student_loss_weight = FeatureDistillation(loss="cosine_similarity"), 0.0
    else:
        losses = LogitsDistillation(temperature=p.temperature)
        student_loss_weight = p.label_weight if has_labels else 0.0
    distiller = Distiller(
        teacher=context.teacher_model,
        student=student.deployment_model(context.sequence_length),
        distillation_losses=losses,
        student_loss_weight=student_loss_weight,
    )
    # Distiller insists on a student loss; without labels its weight is 0 and it is never computed.
    distiller.compile(
        optimizer=keras.optimizers.Adam(p.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    count = len(context.teacher_outputs)
    labels = context.label_ids if has_labels else np.zeros(count, np.int32)
    dataset = (
        tf.data.Dataset.from_tensor_slices((dict(context.train_inputs), labels.astype(np.int32)))
        .shuffle(count, seed=context.seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(min(p.batch_size, count), drop_remainder=True)
    )
    history = _loss_history_class()(context, label, p.steps)
    with context.log.step(f"{label}_train", f"{label}: {p.steps} distillation steps of {p.batch_size} on {count} texts"):
        with warnings.catch_warnings():  # Keras warns about the frozen teacher and the unused pooler; both expected
            warnings.simplefilter("ignore", UserWarning)
            distiller.fit(dataset, epochs=1, steps_per_epoch=p.steps, verbose=0, callbacks=[history])
    window = max(1, min(20, len(history.losses) // 5))
    return {
        "fine_tune_steps": p.steps,
        "loss_first": round(float(np.mean(history.losses[:window])), 6),
        "loss_last": round(float(np.mean(history.losses[-window:])), 6),
        "fine_tune_seconds": round(time.perf_counter() - started, 1),
    }


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

