"""Operating points for one class against the rest, chosen on validation data only."""

from __future__ import annotations

import math

import numpy as np


def _rates(positive: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    decided = score >= threshold
    return float((decided & positive).sum() / positive.sum()), float((~decided & ~positive).sum() / (~positive).sum())


def choose_threshold(positive: np.ndarray, score: np.ndarray, sensitivity: float | None = None) -> dict:
    """A decision threshold on ``score`` from validation labels.

    Without ``sensitivity``: Youden's J (max sensitivity + specificity - 1). With it: the
    most specific threshold whose sensitivity reaches the target. Among equally good
    thresholds the one in the middle of the gap below the lowest accepted validation
    score is returned, so that a test score a little under the validation scores is not
    lost to a threshold sitting exactly on them.
    """
    positive = np.asarray(positive, bool)
    score = np.asarray(score, float)
    if positive.all() or not positive.any():
        return {"threshold": 0.5, "rule": "default 0.5 (validation has one class only)", "val_sensitivity": math.nan, "val_specificity": math.nan}
    candidates = np.unique(score)[::-1]  # high to low: sensitivity rises, specificity falls
    rates = [_rates(positive, score, t) for t in candidates]
    if sensitivity is None:
        j = np.array([s + p - 1 for s, p in rates])
        chosen = int(np.nonzero(j >= j.max() - 1e-12)[0].max())  # lowest threshold of the best J
        rule = "Youden's J on validation"
    else:
        reaching = [i for i, (s, _) in enumerate(rates) if s >= sensitivity]
        chosen = reaching[0]  # highest threshold that reaches the target
        rule = f"validation sensitivity >= {sensitivity}"
    below = candidates[chosen + 1] if chosen + 1 < len(candidates) else 0.0
    threshold = float((candidates[chosen] + below) / 2)
    sens, spec = _rates(positive, score, threshold)
    return {"threshold": threshold, "rule": rule, "val_sensitivity": sens, "val_specificity": spec}


def choose_operating_point(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str] | tuple[str, ...], rule: str):
    """Per-class thresholds, each class against the rest, on validation ``labels`` (N,) and ``probabilities`` (N, classes).

    ``rule`` is ``youden`` or ``sensitivity=S`` (:meth:`cxrclf.runs.OperatingPoint.parse_rule`);
    each class's threshold is :func:`choose_threshold` on its own probability. A class with no
    validation image, or only validation images, keeps 0.5 and no validation rates.
    """
    from cxrclf.runs import OperatingPoint

    rule = OperatingPoint.parse_rule(rule)
    target = float(rule.partition("=")[2]) if rule.startswith("sensitivity=") else None
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=float)
    chosen = {name: choose_threshold(labels == index, probabilities[:, index], target) for index, name in enumerate(class_names)}
    finite = lambda value: None if math.isnan(value) else float(value)  # noqa: E731
    return OperatingPoint(rule=rule, thresholds={name: c["threshold"] for name, c in chosen.items()}, val_images=int(len(labels)),
                          val_sensitivity={name: finite(c["val_sensitivity"]) for name, c in chosen.items()},
                          val_specificity={name: finite(c["val_specificity"]) for name, c in chosen.items()})
