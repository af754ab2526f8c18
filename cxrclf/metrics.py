"""Classification metrics on (labels, probabilities), in numpy: the one implementation.

Every function here matches scikit-learn on the same predictions (the tests check it) but
is fast enough to run thousands of times inside a bootstrap.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["NAN", "auc_score", "binary_rates", "classification_metrics", "confusion", "epoch_metrics", "macro_auc", "per_class_recall", "positive_metrics"]

NAN = math.nan


def auc_score(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney rank statistic (ties get average ranks); NaN if one class."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    from scipy.stats import rankdata

    ranks = rankdata(score)  # average ranks over ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """One-vs-rest ROC AUC averaged over classes with positives and negatives (binary: class 1)."""
    labels = np.asarray(labels)
    if probabilities.shape[1] == 2:
        return auc_score(labels == 1, probabilities[:, 1])
    scores = [auc_score(labels == c, probabilities[:, c]) for c in range(probabilities.shape[1])]
    scores = [s for s in scores if not math.isnan(s)]
    return float(np.mean(scores)) if scores else NAN


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    return np.bincount(np.asarray(labels) * num_classes + np.asarray(predicted), minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else NAN


def binary_rates(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "precision": precision,
        "recall": recall,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def per_class_recall(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> list[float]:
    matrix = confusion(labels, predicted, num_classes)
    return [_ratio(matrix[c, c], matrix[c].sum()) for c in range(num_classes)]


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, predicted: np.ndarray | None = None) -> dict:
    """Accuracy; per class (one-vs-rest) precision, recall, specificity, F1, AUC and support;
    their macro and support-weighted averages; the confusion matrix."""
    labels = np.asarray(labels)
    num_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1) if predicted is None else np.asarray(predicted)
    matrix = confusion(labels, predicted, num_classes)
    total = matrix.sum()
    per_class = []
    for c in range(num_classes):
        tp = int(matrix[c, c])
        fn = int(matrix[c].sum() - tp)
        fp = int(matrix[:, c].sum() - tp)
        tn = int(total - tp - fn - fp)
        rates = binary_rates(tp, fp, tn, fn)
        rates.pop("accuracy")
        rates["auc"] = auc_score(labels == c, probabilities[:, c])
        rates["support"] = int(matrix[c].sum())
        per_class.append(rates)
    keys = ("precision", "recall", "specificity", "f1", "auc")
    supports = np.array([m["support"] for m in per_class], dtype=float)

    def average(key: str, weights: np.ndarray | None) -> float:
        values = np.array([m[key] for m in per_class], dtype=float)
        keep = ~np.isnan(values) & (supports > 0 if key in ("recall", "auc") else True)
        if not keep.any():
            return NAN
        if weights is None:
            return float(values[keep].mean())
        w = weights[keep]
        return float((values[keep] * w).sum() / w.sum()) if w.sum() else NAN

    return {
        "n": int(total),
        "accuracy": _ratio(np.trace(matrix), total),
        "per_class": per_class,
        "macro": {k: average(k, None) for k in keys},
        "weighted": {k: average(k, supports) for k in keys},
        "confusion_matrix": matrix.tolist(),
    }


def positive_metrics(positive: np.ndarray, score: np.ndarray, decided: np.ndarray) -> dict[str, float]:
    """One class against the rest (e.g. COVID-19 vs rest): rates at the given decisions, and AUC."""
    positive, decided = np.asarray(positive, bool), np.asarray(decided, bool)
    tp = int((positive & decided).sum())
    fp = int((~positive & decided).sum())
    fn = int((positive & ~decided).sum())
    tn = int((~positive & ~decided).sum())
    return binary_rates(tp, fp, tn, fn) | {"auc": auc_score(positive, score), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def epoch_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float | list[float]]:
    """What training logs per epoch: accuracy, macro AUC and per-class recall."""
    predicted = probabilities.argmax(axis=1)
    return {
        "accuracy": float((predicted == labels).mean()) if len(labels) else NAN,
        "auc": macro_auc(labels, probabilities),
        "recall": per_class_recall(labels, predicted, probabilities.shape[1]),
    }
