"""Calibration: expected calibration error, Brier score and reliability-diagram bins."""

from __future__ import annotations

import numpy as np

__all__ = ["brier_score", "expected_calibration_error", "reliability_bins"]


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> list[dict]:
    """Top-label confidence in equal-width bins: count, mean confidence and accuracy per bin."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        out.append({
            "low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
            "confidence": float(confidence[members].mean()) if count else None,
            "accuracy": float(correct[members].mean()) if count else None,
        })
    return out


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    total = len(labels)
    if total == 0:
        return float("nan")
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(labels, probabilities, bins) if b["count"]))


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of the squared distance to the one-hot label."""
    onehot = np.eye(probabilities.shape[1])[np.asarray(labels)]
    return float(((probabilities - onehot) ** 2).sum(axis=1).mean())
