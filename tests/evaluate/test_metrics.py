from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from cxrclf import metrics, threshold
from cxrclf.evaluate import calibration, intervals
from cxrclf.evaluate.evaluation import compute_metrics


def _predictions(n: int, classes: int, seed: int, skill: float = 1.5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += skill
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


@pytest.mark.parametrize("classes, seed", [(2, 0), (3, 1), (4, 2), (4, 3)])
def test_every_metric_equals_scikit_learn(classes, seed):
    labels, probabilities = _predictions(150, classes, seed)
    predicted = probabilities.argmax(axis=1)
    ours = metrics.classification_metrics(labels, probabilities)
    assert ours["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert ours["confusion_matrix"] == sk.confusion_matrix(labels, predicted, labels=range(classes)).tolist()
    for average in ("macro", "weighted"):
        assert ours[average]["precision"] == pytest.approx(sk.precision_score(labels, predicted, average=average, zero_division=np.nan))
        assert ours[average]["recall"] == pytest.approx(sk.recall_score(labels, predicted, average=average))
        assert ours[average]["f1"] == pytest.approx(sk.f1_score(labels, predicted, average=average))
    if classes > 2:
        assert ours["macro"]["auc"] == pytest.approx(sk.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))
        assert ours["weighted"]["auc"] == pytest.approx(sk.roc_auc_score(labels, probabilities, multi_class="ovr", average="weighted"))
    else:
        assert metrics.macro_auc(labels, probabilities) == pytest.approx(sk.roc_auc_score(labels, probabilities[:, 1]))
    for c, m in enumerate(ours["per_class"]):
        positive = labels == c
        tn, fp, fn, tp = sk.confusion_matrix(positive, predicted == c, labels=[False, True]).ravel()
        assert m["specificity"] == pytest.approx(tn / (tn + fp))
        assert m["recall"] == pytest.approx(sk.recall_score(positive, predicted == c))
        assert m["precision"] == pytest.approx(sk.precision_score(positive, predicted == c))
        assert m["auc"] == pytest.approx(sk.roc_auc_score(positive, probabilities[:, c]))
        assert m["support"] == positive.sum()


def test_auc_with_ties_and_single_class():
    positive = np.array([1, 0, 1, 0, 1, 1, 0], bool)
    score = np.array([0.5, 0.5, 0.9, 0.1, 0.5, 0.2, 0.2])
    assert metrics.auc_score(positive, score) == pytest.approx(sk.roc_auc_score(positive, score))
    assert math.isnan(metrics.auc_score(np.ones(3, bool), np.arange(3.0)))


def test_calibration_against_definitions():
    labels, probabilities = _predictions(400, 3, 5)
    onehot = np.eye(3)[labels]
    assert calibration.brier_score(labels, probabilities) == pytest.approx(((probabilities - onehot) ** 2).sum(axis=1).mean())
    assert calibration.brier_score(labels, onehot) == 0.0
    bins = calibration.reliability_bins(labels, probabilities)
    assert sum(b["count"] for b in bins) == 400
    assert calibration.expected_calibration_error(labels, onehot) == 0.0
    # always 90% sure and right half the time: ECE 0.4
    flat = np.tile([0.9, 0.05, 0.05], (100, 1))
    assert calibration.expected_calibration_error(np.r_[np.zeros(50, int), np.ones(50, int)], flat) == pytest.approx(0.4)


def test_clopper_pearson_known_values():
    low, high = intervals.clopper_pearson(10, 11)
    assert (low, high) == pytest.approx((0.5872, 0.9977), abs=1e-3)  # 11 COVID-19 images: +/- ~25 points
    assert intervals.clopper_pearson(0, 10)[0] == 0.0 and intervals.clopper_pearson(10, 10)[1] == 1.0
    wide, narrow = intervals.clopper_pearson(8, 10), intervals.clopper_pearson(800, 1000)
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 5


def _frame(labels, probabilities, patients):
    names = ["non_covid19", "covid19"]
    frame = pd.DataFrame({"image_id": range(len(labels)), "patient_id": patients, "source": "s", "finding": "x", "label": [names[l] for l in labels]})
    frame["prob_non_covid19"], frame["prob_covid19"] = probabilities[:, 0], probabilities[:, 1]
    return frame, names


def test_intervals_contain_the_estimate_and_narrow_with_more_data():
    widths = []
    for n in (40, 400):
        labels, probabilities = _predictions(n, 2, 7)
        frame, names = _frame(labels, probabilities, [f"p{i}" for i in range(n)])
        result = compute_metrics(frame, names, None, 300, 0)
        for key, (low, high) in result.intervals.items():
            assert low <= result.point[key] + 1e-9 and result.point[key] <= high + 1e-9, key
        widths.append(result.interval("accuracy")[1] - result.interval("accuracy")[0])
    assert widths[1] < widths[0] / 2


def test_bootstrap_resamples_patients_not_images():
    # 20 patients with 10 images each; every image of a patient shares its outcome
    rng = np.random.default_rng(0)
    correct_patient = rng.random(20) < 0.7
    patients = np.repeat([f"p{i}" for i in range(20)], 10)
    correct = np.repeat(correct_patient, 10)

    def accuracy(rows):
        return {"accuracy": float(correct[rows].mean())}

    by_patient = intervals.bootstrap(accuracy, patients, 500, 0)["accuracy"]
    by_image = intervals.bootstrap(accuracy, np.arange(200), 500, 0)["accuracy"]
    assert (by_patient[1] - by_patient[0]) > 2 * (by_image[1] - by_image[0])


def test_threshold_uses_only_the_labels_it_is_given():
    rng = np.random.default_rng(1)
    positive = rng.random(200) < 0.3
    score = np.clip(positive * 0.4 + rng.random(200) * 0.6, 0, 1)
    youden = threshold.choose_threshold(positive, score)
    j = youden["val_sensitivity"] + youden["val_specificity"] - 1
    fpr, tpr, _ = sk.roc_curve(positive, score)
    assert j == pytest.approx((tpr - fpr).max())
    target = threshold.choose_threshold(positive, score, sensitivity=0.95)
    assert target["val_sensitivity"] >= 0.95
    looser = [t for t in np.unique(score) if ((score >= t) & positive).sum() / positive.sum() >= 0.95]
    assert target["val_specificity"] >= max(((score < t) & ~positive).sum() / (~positive).sum() for t in looser) - 1e-9
