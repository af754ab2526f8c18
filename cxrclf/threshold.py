"""The decision threshold for one class against the rest, chosen on validation data only (numpy only).

:meth:`cxrclf.runs.OperatingPoint.choose` applies it to every class of a run; ``evaluate`` to the
COVID-19-vs-rest score of runs made before runs stored their operating point.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["choose_threshold"]


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
