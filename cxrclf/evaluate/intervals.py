"""Uncertainty: exact binomial intervals and a bootstrap over patients (not images)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = ["bootstrap", "clopper_pearson"]


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval; (nan, nan) with no trials."""
    from scipy.stats import beta

    if trials == 0:
        return (math.nan, math.nan)
    alpha = 1 - level
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def bootstrap(
    statistic: Callable[[np.ndarray], dict[str, float]],
    units: np.ndarray,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every scalar that ``statistic(row_indices)`` returns.

    Rows are grouped by ``units`` (patient ids): each resample draws units with replacement
    and takes all of their rows, so images of one patient move together. Resamples in
    which a statistic is undefined (NaN) are left out of that statistic's interval.
    """
    units = np.asarray(units)
    names, inverse = np.unique(units, return_inverse=True)
    rows_of = [np.nonzero(inverse == u)[0] for u in range(len(names))]
    rng = np.random.default_rng(seed)
    collected: dict[str, list[float]] = {}
    for _ in range(resamples):
        chosen = rng.integers(0, len(names), size=len(names))
        rows = np.concatenate([rows_of[u] for u in chosen])
        for key, value in statistic(rows).items():
            collected.setdefault(key, []).append(value)
    alpha = (1 - level) / 2
    out = {}
    for key, values in collected.items():
        array = np.array(values, dtype=float)
        array = array[~np.isnan(array)]
        out[key] = (float(np.quantile(array, alpha)), float(np.quantile(array, 1 - alpha))) if len(array) else (math.nan, math.nan)
    return out
