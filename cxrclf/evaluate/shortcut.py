"""Shortcut checks: does the model read the disease, or the archive the image came from?

Every COVID-19 image in the fused data comes from one archive (Cohen), so a model can
reach a high pooled AUC by recognising the archive (its scanners, text burn-ins, crops)
instead of the disease. The functions here put numbers on that risk, from predictions
and features alone (pure: no file I/O, no torch):

- :func:`within_source_aucs`: AUCs inside one archive at a time, where the archive cannot
  help (e.g. COVID-19 vs other pneumonia inside Cohen): the honest figure.
- :func:`source_frequencies`, :func:`source_only_auc`, :func:`pooled_aucs_with_baseline`:
  the pooled AUC beside the AUC of a score that knows only the archive.
- :func:`source_probe`: how well the archive can be predicted from the model's features.
- :func:`markdown_within_source`, :func:`markdown_pooled`, :func:`markdown_probe`: report
  tables with plain sentences that say when the model fails these checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from cxrclf.errors import CxrclfError
from cxrclf.evaluate.intervals import bootstrap
from cxrclf.io import markdown_table
from cxrclf.metrics import auc_score

__all__ = [
    "FAR_ABOVE_CHANCE",
    "within_source_aucs",
    "source_frequencies",
    "source_only_scores",
    "source_only_auc",
    "pooled_aucs_with_baseline",
    "source_probe",
    "markdown_within_source",
    "markdown_pooled",
    "markdown_probe",
]

NAN = math.nan

#: A probe balanced accuracy at least this far above chance is reported as "far above chance".
FAR_ABOVE_CHANCE = 0.25

#: Regularisation of the source probe on standardised features (scikit-learn's default
#: strength); out-of-fold predictions keep any over-fitting from inflating the score.
PROBE_C = 1.0
PROBE_MAX_ITER = 5000


def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CxrclfError(f"{what} lacks column(s) {', '.join(missing)}; expected {', '.join(columns)}")


def _auc_intervals(
    predictions: pd.DataFrame, class_names: list[str], resamples: int, seed: int
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Point AUC of every class (one-vs-rest on prob_<class>) and its patient-bootstrap interval.

    One bootstrap for all classes, so the classes share resamples. Intervals are NaN when
    ``resamples`` is 0 or the class lacks positives or negatives.
    """
    labels = predictions["label"].to_numpy()
    positives = {c: labels == c for c in class_names}
    scores = {c: predictions[f"prob_{c}"].to_numpy(dtype=float) for c in class_names}

    def statistic(rows: np.ndarray) -> dict[str, float]:
        return {c: auc_score(positives[c][rows], scores[c][rows]) for c in class_names}

    point = statistic(np.arange(len(predictions)))
    interval = {c: (NAN, NAN) for c in class_names}
    if resamples and len(predictions):
        found = bootstrap(statistic, predictions["patient_id"].to_numpy(), resamples, seed)
        interval.update({c: found[c] for c in class_names if not math.isnan(point[c])})
    return point, interval


def within_source_aucs(predictions: pd.DataFrame, class_names: list[str], resamples: int, seed: int) -> list[dict]:
    """One-vs-rest AUC of every class inside each source, with a patient-bootstrap 95% interval.

    Why: inside a single archive the archive's look is constant, so it cannot separate the
    classes; what remains is the disease signal (e.g. COVID-19 vs other pneumonia inside
    Cohen). This is the honest figure beside a pooled AUC that a shortcut can inflate.

    ``predictions`` has the columns of predictions.csv (patient_id, source, label holding a
    class name, prob_<class> per class). Returns one row per (source, class), sorted by
    source then class order, with keys: source, class, n_images, n_positive, n_negative,
    n_patients, auc, ci_low, ci_high, source_only_auc, skipped. The bootstrap resamples the
    source's patients only (images of one patient move together); with ``resamples`` 0 the
    interval is NaN.

    Pairs without both positives and negatives in the source are kept as rows, not
    computed: their auc, interval and source_only_auc are NaN and ``skipped`` says why
    ("no positives" / "no negatives"); computed rows have ``skipped`` None. The
    source-only score is constant inside one source, so its AUC there is 0.5.
    """
    _require_columns(predictions, ["patient_id", "source", "label"] + [f"prob_{c}" for c in class_names], "predictions")
    rows = []
    for source, group in predictions.groupby("source", sort=True):
        group = group.reset_index(drop=True)
        point, interval = _auc_intervals(group, class_names, resamples, seed)
        n_patients = int(group["patient_id"].nunique())
        for name in class_names:
            n_positive = int((group["label"] == name).sum())
            n_negative = len(group) - n_positive
            skipped = "no positives" if n_positive == 0 else "no negatives" if n_negative == 0 else None
            rows.append({
                "source": str(source), "class": name, "n_images": len(group), "n_positive": n_positive,
                "n_negative": n_negative, "n_patients": n_patients, "auc": point[name],
                "ci_low": interval[name][0], "ci_high": interval[name][1],
                "source_only_auc": NAN if skipped else 0.5, "skipped": skipped,
            })
    return rows


def source_frequencies(train: pd.DataFrame, class_names: list[str], finding_to_class: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Each class's frequency among each source's training rows: the source-only score.

    Why: a classifier that knows nothing but the archive an image came from can do no
    better than predict the class mix of that archive. These frequencies are that
    classifier, fitted on the training split (``source`` and ``finding`` columns;
    ``finding_to_class`` as in ``labels.SCHEMES[k].finding_to_class``).
    """
    _require_columns(train, ["source", "finding"], "training rows")
    unknown = sorted(set(train["finding"]) - set(finding_to_class))
    if unknown:
        raise CxrclfError(f"finding(s) {', '.join(map(str, unknown))} are not in the label scheme ({', '.join(finding_to_class)}); drop those rows or choose the scheme they belong to")
    classes = train["finding"].map(finding_to_class)
    frequencies = {}
    for source, group in classes.groupby(train["source"], sort=True):
        counts = group.value_counts()
        frequencies[str(source)] = {c: float(counts.get(c, 0)) / len(group) for c in class_names}
    return frequencies


def source_only_scores(predictions: pd.DataFrame, class_name: str, frequencies: Mapping[str, Mapping[str, float]]) -> np.ndarray:
    """The source-only score of every row: ``class_name``'s training frequency in the row's source.

    A source unseen in training scores 0 (nothing was learnt about it, so it ranks below
    every seen source that had the class).
    """
    return np.array([frequencies.get(str(s), {}).get(class_name, 0.0) for s in predictions["source"]], dtype=float)


def source_only_auc(predictions: pd.DataFrame, class_name: str, frequencies: Mapping[str, Mapping[str, float]]) -> float:
    """One-vs-rest AUC of ``class_name`` reached by a score that knows only the image's source.

    Why: when one archive holds every image of a class, this score alone reaches a high
    AUC; a model must beat it to show it learnt more than the archive. The score is the
    class's training frequency in the image's source (:func:`source_frequencies`); a source
    unseen in training scores 0. NaN when the class lacks positives or negatives.
    """
    _require_columns(predictions, ["source", "label"], "predictions")
    positive = predictions["label"].to_numpy() == class_name
    return auc_score(positive, source_only_scores(predictions, class_name, frequencies))


def _verdict(auc: float, ci_low: float, baseline: float) -> tuple[bool, str]:
    if math.isnan(auc):
        return False, "not computable (the class lacks positives or negatives)"
    if math.isnan(ci_low):
        return False, "no interval (bootstrap off): cannot tell whether it beats a score that knows only the source"
    if ci_low > baseline:
        return True, "beats a score that knows only the source"
    if auc > baseline:
        return False, "does not beat a score that knows only the source (its interval reaches the baseline)"
    return False, "does not beat a score that knows only the source"


def pooled_aucs_with_baseline(
    predictions: pd.DataFrame,
    class_names: list[str],
    frequencies: Mapping[str, Mapping[str, float]],
    resamples: int,
    seed: int,
) -> list[dict]:
    """Pooled one-vs-rest AUC of every class beside the AUC of a source-only score.

    Why: a pooled AUC over fused archives mixes disease and archive; next to the AUC that
    the archive alone reaches, it shows how much the model adds.

    Returns one row per class, in class order, with keys: class, n_images, n_positive,
    n_negative, n_patients, auc, ci_low, ci_high (95% patient bootstrap), source_only_auc,
    beats_source_only, verdict. Rule: ``beats_source_only`` is True only when the lower
    bound of the model's interval exceeds the source-only AUC (so a model whose interval
    reaches the baseline, or with no interval because ``resamples`` is 0, does not beat
    it). ``verdict`` says the same in words.
    """
    _require_columns(predictions, ["patient_id", "source", "label"] + [f"prob_{c}" for c in class_names], "predictions")
    point, interval = _auc_intervals(predictions.reset_index(drop=True), class_names, resamples, seed)
    n_patients = int(predictions["patient_id"].nunique())
    rows = []
    for name in class_names:
        n_positive = int((predictions["label"] == name).sum())
        baseline = source_only_auc(predictions, name, frequencies)
        beats, verdict = _verdict(point[name], interval[name][0], baseline)
        rows.append({
            "class": name, "n_images": len(predictions), "n_positive": n_positive, "n_negative": len(predictions) - n_positive,
            "n_patients": n_patients, "auc": point[name], "ci_low": interval[name][0], "ci_high": interval[name][1],
            "source_only_auc": baseline, "beats_source_only": beats, "verdict": verdict,
        })
    return rows


def source_probe(features: np.ndarray, sources: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """Cross-validated balanced accuracy of predicting the source from image features.

    Why: if a linear classifier reads the archive off the model's features far above
    chance, the model has learnt the archive, and any class that comes from one archive can
    be "recognised" through it.

    A logistic regression (standardised features, balanced class weights, C=PROBE_C) is
    scored on out-of-fold predictions of a stratified, shuffled k-fold (``seed``); ``folds``
    is reduced to the smallest source's image count when needed. Sources with fewer than 2
    images are dropped and reported. Returns keys: balanced_accuracy, chance (1 / number of
    sources kept: the balanced accuracy of guessing), n_images (kept), sources ({source:
    images} kept), dropped ({source: images}), recall ({source: out-of-fold recall}), folds,
    reason. With fewer than 2 usable sources, balanced_accuracy, chance, recall and folds
    are None and ``reason`` says why; otherwise ``reason`` is None.

    Images of one patient may fall in different folds; patients never span sources, but a
    patient seen in training makes its other images easier to place, so with many images
    per patient the score leans high.
    """
    features, sources = _probe_inputs(features, sources, folds)
    names, counts = np.unique(sources, return_counts=True)
    kept = {str(n): int(c) for n, c in zip(names, counts) if c >= 2}
    dropped = {str(n): int(c) for n, c in zip(names, counts) if c < 2}
    keep = np.isin(sources, list(kept))
    result = {
        "balanced_accuracy": None, "chance": None, "n_images": int(keep.sum()), "sources": kept, "dropped": dropped,
        "recall": None, "folds": None, "reason": None,
    }
    if len(kept) < 2:
        result["reason"] = f"needs at least 2 sources with 2 or more images each, found {len(kept)}"
        return result

    from sklearn.metrics import balanced_accuracy_score, recall_score

    y = sources[keep]
    used = min(folds, min(kept.values()))
    predicted = _out_of_fold_sources(features[keep], y, used, seed)
    labels = sorted(kept)
    recalls = recall_score(y, predicted, labels=labels, average=None)
    result.update({
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
        "chance": 1.0 / len(kept),
        "recall": {name: float(r) for name, r in zip(labels, recalls)},
        "folds": used,
    })
    return result


def _probe_inputs(features, sources, folds: int) -> tuple[np.ndarray, np.ndarray]:
    """``features`` as floats and ``sources`` as strings, or a one-line error about their shapes or the folds."""
    features = np.asarray(features, dtype=float)
    sources = np.asarray(sources).astype(str)
    if features.ndim != 2 or len(features) != len(sources):
        raise CxrclfError(f"source_probe needs features of shape (images, dimensions) and one source per image; got features {features.shape} and {len(sources)} sources")
    if folds < 2:
        raise CxrclfError(f"source_probe needs at least 2 folds, not {folds}")
    return features, sources


def _out_of_fold_sources(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's source as predicted by the probe trained on the other folds (stratified, shuffled with ``seed``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER, class_weight="balanced"))
    return cross_val_predict(probe, x, y, cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))


def _missing(value) -> bool:
    """NaN where it was measured, None where metrics.json was read back (JSON has no NaN)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value) -> str:
    return "n/a" if _missing(value) else f"{value:.3f}"


def _with_interval(auc: float | None, low: float | None, high: float | None) -> str:
    if _missing(auc):
        return "n/a"
    if _missing(low) or _missing(high):
        return _number(auc)
    return f"{auc:.3f} ({low:.3f}-{high:.3f})"


def markdown_within_source(rows: list[dict]) -> str:
    """Markdown table of :func:`within_source_aucs`; a sentence lists the pairs not computed."""
    computed = [(r["source"], r["class"], r["n_images"], r["n_positive"], r["n_negative"], r["n_patients"], _with_interval(r["auc"], r["ci_low"], r["ci_high"]),
                 _number(r["source_only_auc"])) for r in rows if not r.get("skipped")]  # the skipped are named in the sentence below, not as rows of n/a
    lines = markdown_table(("Source", "Class", "Images", "Positive", "Negative", "Patients", "AUC (95% CI)", "Source-only AUC"), computed, align="llrrrrlr")
    skipped = [f"{r['class']} in {r['source']} ({r['skipped']})" for r in rows if r.get("skipped")]
    if skipped:
        lines += ["", f"Not computable inside a single source: {'; '.join(skipped)}."]
    return "\n".join(lines) + "\n"


def markdown_pooled(rows: list[dict]) -> str:
    """Markdown table of :func:`pooled_aucs_with_baseline`; a sentence names the classes that do not beat the baseline."""
    lines = markdown_table(("Class", "Images", "Positive", "AUC (95% CI)", "Source-only AUC", "Beats source-only"),
                           [(r["class"], r["n_images"], r["n_positive"], _with_interval(r["auc"], r["ci_low"], r["ci_high"]), _number(r["source_only_auc"]),
                             "yes" if r["beats_source_only"] else "no") for r in rows], align="lrrlrl")
    lines += ["", "A class beats the source-only score only when the lower bound of its AUC interval exceeds the source-only AUC."]
    failing = [r for r in rows if not r["beats_source_only"] and not _missing(r["auc"])]
    for r in failing:
        lines.append(f"For {r['class']}, the model {r['verdict']}: AUC {_with_interval(r['auc'], r['ci_low'], r['ci_high'])} "
                     f"against {_number(r['source_only_auc'])} from the source alone.")
    return "\n".join(lines) + "\n"


def markdown_probe(result: dict) -> str:
    """Markdown of :func:`source_probe`: per-source table and a sentence on the balanced accuracy.

    Rule: a balanced accuracy at or above chance + FAR_ABOVE_CHANCE (0.25) is reported as
    far above chance, i.e. the features identify the archive.
    """
    dropped = result.get("dropped") or {}
    note = f" Dropped (fewer than 2 images): {', '.join(f'{s} ({n})' for s, n in dropped.items())}." if dropped else ""
    if result["balanced_accuracy"] is None:
        return f"Source probe not applicable: {result['reason']}.{note}\n"
    recall = result.get("recall") or {}
    lines = markdown_table(("Source", "Images", "Recall"), [(s, n, _number(recall.get(s))) for s, n in result["sources"].items()], align="lrr")
    accuracy, chance = result["balanced_accuracy"], result["chance"]
    lines += ["", f"Predicting the source from the features: balanced accuracy {accuracy:.3f} against chance {chance:.3f} "
                  f"({result['folds']}-fold cross-validation, {result['n_images']} images).{note}"]
    if accuracy >= chance + FAR_ABOVE_CHANCE - 1e-12:
        lines.append(f"This is far above chance (at least chance + {FAR_ABOVE_CHANCE:.2f}): the features identify the archive, "
                     "so a class that comes from a single archive can be recognised through the archive.")
    else:
        lines.append(f"This is not far above chance (below chance + {FAR_ABOVE_CHANCE:.2f}).")
    return "\n".join(lines) + "\n"
