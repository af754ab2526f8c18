"""Classification metrics on (labels, probabilities): the one implementation every stage uses."""

from __future__ import annotations

import math

import numpy as np


def macro_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """One-vs-rest ROC AUC averaged over classes that have both positives and negatives.

    Binary problems give the plain AUC of the positive class. NaN when no class qualifies
    (a validation split of one class).
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    num_classes = probabilities.shape[1]
    if num_classes == 2:
        if len(np.unique(labels)) < 2:
            return math.nan
        return float(roc_auc_score(labels, probabilities[:, 1]))
    scores = []
    for c in range(num_classes):
        positive = labels == c
        if positive.any() and (~positive).any():
            scores.append(roc_auc_score(positive, probabilities[:, c]))
    return float(np.mean(scores)) if scores else math.nan


def per_class_recall(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> list[float]:
    out = []
    for c in range(num_classes):
        positive = labels == c
        out.append(float((predicted[positive] == c).mean()) if positive.any() else math.nan)
    return out


def epoch_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float | list[float]]:
    predicted = probabilities.argmax(axis=1)
    return {
        "accuracy": float((predicted == labels).mean()) if len(labels) else math.nan,
        "auc": macro_auc(labels, probabilities),
        "recall": per_class_recall(labels, predicted, probabilities.shape[1]),
    }
