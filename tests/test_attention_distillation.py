"""Attention distillation (MiniLM): the relations a student learns from, the loss on them, and the passes using it."""

from dataclasses import replace

import numpy as np
import pytest

from deploykit.errors import DeployKitError
from deploykit.models import ModelBundle
from deploykit.models.heads import classifier_forward, embedding_forward
from deploykit.passes.base import PassContext, get_pass
from deploykit.passes.training import attention_relation_model, relation_divergence
from deploykit.progress import StepLog

WORDS = "team match goal score coach league player win season bread soup cheese recipe bake taste garlic dinner".split()
VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(WORDS)]
TEXTS = ["team goal win season", "bread soup garlic", "coach league player match",
         "cheese recipe bake dinner taste"] * 8
LENGTH = 12
HEADS = 4


def _bundle(seed: int = 0, task: str = "embedding") -> ModelBundle:
    """A 2-layer, 4-head BERT with random weights, an embedding model or a two-class classifier."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCABULARY), num_layers=2, num_heads=HEADS, hidden_dim=32, intermediate_dim=64,
        max_sequence_length=32,
    )
    for block in backbone.transformer_layers:  # random BERT weights attend almost uniformly; sharpen them
        attention = block._self_attention_layer
        for dense in (attention._query_dense, attention._key_dense, attention._value_dense):
            dense.kernel.assign(dense.kernel * 12.0)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCABULARY, lowercase=True)
    if task == "classification":
        classifier = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
        return ModelBundle(forward=classifier_forward(classifier), tokenizer=tokenizer, task="classification",
                           max_sequence_length=32, source="tiny", class_names=["a", "b"], backbone=backbone,
                           task_model=classifier)
    return ModelBundle(
        forward=embedding_forward(backbone, "mean", True), tokenizer=tokenizer, task="embedding",
        max_sequence_length=32, source="tiny", backbone=backbone, details={"pooling": "mean", "normalize": True},
    )


def _context(bundle: ModelBundle, labels: np.ndarray | None = None) -> PassContext:
    inputs = bundle.encode(TEXTS, LENGTH)
    return PassContext(
        bundle=bundle, sequence_length=LENGTH, train_texts=TEXTS, train_inputs=inputs,
        teacher_outputs=bundle.predict(inputs), teacher=bundle, label_ids=labels, calibration=[], log=StepLog(),
    )


def _relations(bundle: ModelBundle, layer: int = 1) -> tuple[np.ndarray, np.ndarray]:
    inputs = bundle.encode(TEXTS[:4], LENGTH)
    return attention_relation_model(bundle, LENGTH, layer).predict(inputs, verbose=0), inputs["padding_mask"]


def test_relations_are_distributions_over_the_real_tokens_and_zero_at_padding():
    relations, mask = _relations(_bundle())
    assert relations.shape == (4, 2 * HEADS, LENGTH, LENGTH)  # attention, then value relations, per head
    real = mask.astype(bool)
    rows = relations.sum(axis=-1)  # [text, head, query]
    np.testing.assert_allclose(rows.transpose(0, 2, 1)[real], 1.0, atol=1e-5)
    assert (rows.transpose(0, 2, 1)[~real] == 0).all()
    assert (relations.transpose(0, 3, 1, 2)[~real] == 0).all()  # no weight on a padded key


def test_attention_relations_are_what_the_layer_itself_computes():
    import keras

    bundle = _bundle()
    relations, mask = _relations(bundle, layer=1)
    backbone = bundle.backbone
    inputs = bundle.encode(TEXTS[:4], LENGTH)
    below = keras.Model(backbone.input, backbone.transformer_layers[0].output)(
        {**inputs, "segment_ids": np.zeros_like(inputs["token_ids"])})
    _, scores = backbone.transformer_layers[1](below, padding_mask=inputs["padding_mask"],
                                               return_attention_scores=True)
    real = mask.astype(bool)[:, None, :, None]
    np.testing.assert_allclose(relations[:, :HEADS], np.asarray(scores) * real, atol=1e-5)


def test_divergence_is_zero_against_itself_and_positive_against_another_model():
    teacher, _ = _relations(_bundle(seed=0))
    student, _ = _relations(_bundle(seed=1))
    assert float(relation_divergence(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)
    assert float(relation_divergence(teacher, student)) > 0.01


def test_divergence_is_an_average_over_real_rows_whatever_the_padding():
    teacher, _ = _relations(_bundle(seed=0))
    student, _ = _relations(_bundle(seed=1))
    padded = [np.pad(r, ((0, 0), (0, 0), (0, 4), (0, 4))) for r in (teacher, student)]  # 4 more padded positions
    assert float(relation_divergence(*padded)) == pytest.approx(float(relation_divergence(teacher, student)), rel=1e-5)


def test_distill_with_attention_weight_reports_its_divergence_and_a_falling_loss():
    result = get_pass("distill", layers=1, steps=30, hidden_steps=0, batch_size=8, learning_rate=1e-3,
                      attention_weight=1.0).apply(_context(_bundle()))
    effect = result.effect
    assert effect["attention_divergence_before"] > 0 and np.isfinite(effect["attention_divergence_after"])
    assert effect["loss_last"] < effect["loss_first"]


def test_attention_weight_brings_the_students_attention_closer_to_the_teachers():
    teacher = _bundle()
    inputs = teacher.encode(TEXTS, LENGTH)
    target = attention_relation_model(teacher, LENGTH, 1).predict(inputs, verbose=0)
    divergences = []
    for weight in (0.0, 10.0):
        student = get_pass("distill", layers=1, steps=30, hidden_steps=0, batch_size=8, learning_rate=1e-3,
                           attention_weight=weight).apply(_context(teacher)).bundle
        relations = attention_relation_model(student, LENGTH, 0).predict(inputs, verbose=0)
        divergences.append(float(relation_divergence(target, relations)))
    without, with_attention = divergences
    assert with_attention < 0.5 * without


def test_distill_without_attention_weight_reports_no_attention_divergence():
    result = get_pass("distill", layers=1, steps=2, hidden_steps=0, batch_size=8).apply(_context(_bundle()))
    assert "attention_divergence_after" not in result.effect


def test_classifier_with_labels_trains_with_the_attention_term():
    teacher = _bundle(task="classification")
    labels = np.arange(len(TEXTS)) % 2
    result = get_pass("distill", layers=1, steps=4, hidden_steps=0, batch_size=8, label_weight=0.5,
                      attention_weight=1.0).apply(_context(teacher, labels))
    assert np.isfinite(result.effect["loss_last"]) and np.isfinite(result.effect["attention_divergence_after"])


def test_attention_distillation_after_removing_heads_is_a_one_line_error():
    bundle = _bundle()
    context = replace(_context(bundle), calibration=[{name: values[i:i + 1] for name, values in
                                                      bundle.encode(TEXTS[:4], LENGTH).items()} for i in range(4)])
    with pytest.raises(DeployKitError, match="student has 2 heads per layer and the original 4"):
        get_pass("prune", heads=0.5, steps=2, attention_weight=1.0).apply(context)
