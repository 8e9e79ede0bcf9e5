"""How close an artifact is to the original: fidelity of outputs and accuracy against labels."""

from __future__ import annotations

import numpy as np

from deploykit.backends.base import Inputs, LoadedModel
from deploykit.errors import DeployKitError


def run_examples(runner: LoadedModel, inputs: Inputs) -> np.ndarray:
    """Run each row of a batch through a batch-1 artifact; stack the outputs."""
    count = len(next(iter(inputs.values())))
    rows = [runner({name: values[i:i + 1] for name, values in inputs.items()})[0] for i in range(count)]
    return np.stack(rows).astype(np.float32)


def embedding_fidelity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Cosine similarity per example (mean, min) and nearest-neighbour agreement.

    Agreement: for each example, is its nearest other example (by cosine) the same
    under both models? It checks that retrieval built on the embeddings still works.
    """
    reference_unit = _unit(reference)
    candidate_unit = _unit(candidate)
    cosine = np.sum(reference_unit * candidate_unit, axis=1)
    agreement = None
    if len(reference) >= 2:
        agreement = float(np.mean(_nearest(reference_unit) == _nearest(candidate_unit)))
    return {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()), "agreement": agreement}


def example_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of each example's output under both models."""
    return np.sum(_unit(reference) * _unit(candidate), axis=1)


def confusion_matrix(expected: np.ndarray, predicted: np.ndarray, classes: int) -> list[list[int]]:
    """Counts of examples by expected class (rows) and predicted class (columns)."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(expected), np.asarray(predicted)), 1)
    return counts.tolist()


def per_sample_fidelity(task: str, reference: np.ndarray, candidate: np.ndarray, label_ids: np.ndarray | None,
                        class_names: list[str]) -> dict:
    """How fidelity spreads over the evaluation samples, for the report's plots (the means hide a few bad ones):
    each example's cosine for embeddings (5 digits), confusion matrices for classifiers (the artifact's predictions
    against the original's and, with labels, against the labels)."""
    if task == "embedding":
        return {"cosine": [round(float(value), 5) for value in example_cosines(reference, candidate)]}
    predicted = candidate.argmax(-1)
    classes = candidate.shape[-1]
    return {"confusion": {
        "classes": class_names,
        "vs_original": confusion_matrix(reference.argmax(-1), predicted, classes),
        "vs_labels": confusion_matrix(label_ids, predicted, classes) if label_ids is not None else None,
    }}


def class_names_of(labels: list[str | int] | None, class_names: list[str] | None, classes: int) -> list[str]:
    """Each output class's name for tables and plots: the model's class names, else the sorted string labels (as
    `label_ids` maps them), else the index; classes the names do not cover are named by their index."""
    names = list(class_names or [])
    if not names and labels is not None and not all(isinstance(label, int) for label in labels):
        names = sorted({str(label) for label in labels})
    return (names + [str(index) for index in range(len(names), classes)])[:classes]


def classification_fidelity(reference_logits: np.ndarray, candidate_logits: np.ndarray) -> dict:
    """Agreement of predicted classes, and the mean cosine of the logit vectors (how far the scores moved,
    before any prediction flips). `cosine_mean` stays the embedding measure, so it is None here."""
    agreement = float(np.mean(reference_logits.argmax(-1) == candidate_logits.argmax(-1)))
    logit_cosine = float(np.sum(_unit(reference_logits) * _unit(candidate_logits), axis=1).mean())
    return {"cosine_mean": None, "cosine_min": None, "agreement": agreement, "logit_cosine_mean": logit_cosine}


def accuracy(logits: np.ndarray, label_ids: np.ndarray) -> float:
    """Fraction of examples whose top class is the label."""
    return float(np.mean(logits.argmax(-1) == label_ids))


def label_ids(labels: list[str | int], class_names: list[str] | None, classes: int) -> tuple[np.ndarray, str]:
    """Map dataset labels to output indices; says which mapping it used.

    Integer labels are indices. String labels map through the model's class names
    (labels.txt beside the model) or, without them, through the sorted label set.
    """
    if all(isinstance(label, int) for label in labels):
        ids, mapping = np.asarray(labels), "integer labels are class indices"
    else:
        names = class_names or sorted({str(label) for label in labels})
        mapping = "labels.txt beside the model" if class_names else "sorted label names"
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted({str(label) for label in labels} - set(index))
        if unknown:
            raise DeployKitError(f"labels {unknown[:5]} are not among the model's class names {names[:10]}; fix labels.txt or the data.")
        ids = np.asarray([index[str(label)] for label in labels])
    if ids.min() < 0 or ids.max() >= classes:
        raise DeployKitError(
            f"labels map to class indices {ids.min()}..{ids.max()} but the model has {classes} outputs; "
            "check the label column (or put the class names in labels.txt beside the model)."
        )
    return ids, mapping


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.reshape(len(vectors), -1).astype(np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _nearest(unit: np.ndarray) -> np.ndarray:
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)
