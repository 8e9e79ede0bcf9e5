"""Fidelity and accuracy measures used by validation."""

import numpy as np
import pytest

from deploykit.errors import DeployKitError
from deploykit.evaluate import (accuracy, class_names_of, classification_fidelity, embedding_fidelity, label_ids,
                                per_sample_fidelity)


def test_identical_embeddings_have_perfect_fidelity():
    vectors = np.random.default_rng(0).normal(size=(20, 8))
    fidelity = embedding_fidelity(vectors, vectors * 3.0)
    assert fidelity["cosine_mean"] == pytest.approx(1.0) and fidelity["agreement"] == 1.0


def test_noise_lowers_cosine_and_agreement():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8))
    fidelity = embedding_fidelity(vectors, vectors + rng.normal(scale=2.0, size=vectors.shape))
    assert fidelity["cosine_mean"] < 0.9 and fidelity["cosine_min"] < fidelity["cosine_mean"]
    assert fidelity["agreement"] < 1.0


def test_classification_agreement_and_accuracy():
    reference = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    candidate = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 1.0]])
    assert classification_fidelity(reference, candidate)["agreement"] == pytest.approx(2 / 3)
    assert accuracy(candidate, np.array([0, 1, 0])) == pytest.approx(2 / 3)


def test_string_labels_map_through_class_names_or_sorted_set():
    ids, how = label_ids(["b", "a", "b"], None, classes=2)
    assert ids.tolist() == [1, 0, 1] and "sorted" in how
    ids, how = label_ids(["b", "a"], ["b", "a"], classes=2)
    assert ids.tolist() == [0, 1] and "labels.txt" in how


def test_labels_beyond_the_model_outputs_are_rejected():
    with pytest.raises(DeployKitError, match="model has 2 outputs"):
        label_ids([0, 1, 2], None, classes=2)
    with pytest.raises(DeployKitError, match="not among"):
        label_ids(["x"], ["a", "b"], classes=2)


def test_per_sample_cosines_match_the_mean_the_gate_reads():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 8))
    noisy = vectors + rng.normal(scale=0.3, size=vectors.shape)

    cosines = per_sample_fidelity("embedding", vectors, noisy, None, [])["cosine"]

    assert len(cosines) == 30
    assert np.mean(cosines) == pytest.approx(embedding_fidelity(vectors, noisy)["cosine_mean"], abs=1e-5)


def test_confusion_counts_predictions_against_the_original_and_the_labels():
    reference = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    candidate = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 1.0]])

    confusion = per_sample_fidelity("classification", reference, candidate, np.array([0, 1, 1]), ["a", "b"])["confusion"]

    assert confusion["classes"] == ["a", "b"]
    assert confusion["vs_original"] == [[2, 0], [1, 0]]
    assert confusion["vs_labels"] == [[1, 0], [2, 0]]


def test_class_names_come_from_the_model_then_string_labels_then_indices():
    assert class_names_of(["neg", "pos"], ["negative", "positive"], 2) == ["negative", "positive"]
    assert class_names_of(["pos", "neg", "pos"], None, 3) == ["neg", "pos", "2"]
    assert class_names_of([1, 0], None, 2) == ["0", "1"]
