"""Fidelity and accuracy measures used by validation."""

import numpy as np
import pytest

from deploykit.errors import DeployKitError
from deploykit.evaluate import accuracy, classification_fidelity, embedding_fidelity, label_ids


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
