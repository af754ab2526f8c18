from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrclf.errors import CxrclfError
from cxrclf.evaluate import shortcut
from cxrclf.evaluate.intervals import bootstrap
from cxrclf.metrics import auc_score
from cxrclf.labels import SCHEMES

FOUR = list(SCHEMES[4].classes)  # normal, covid19, other_pneumonia, tuberculosis


def _train(rows: dict[str, list[str]]) -> pd.DataFrame:
    """Training rows from {source: [finding, ...]}."""
    return pd.DataFrame([{"source": s, "finding": f} for s, findings in rows.items() for f in findings])


def _frame(source_label_prob: list[tuple[str, str, float]], class_names=("normal", "covid19")) -> pd.DataFrame:
    """predictions.csv-like rows, one patient per image; prob_covid19 given, the rest shares 1 - it."""
    rows = []
    for i, (source, label, p) in enumerate(source_label_prob):
        row = {"image_id": f"i{i}", "patient_id": f"p{i}", "source": source, "finding": label, "label": label}
        others = [c for c in class_names if c != "covid19"]
        row |= {f"prob_{c}": (1 - p) / len(others) for c in others} | {"prob_covid19": p}
        rows.append(row)
    return pd.DataFrame(rows)


def _random_predictions(seed: int) -> pd.DataFrame:
    """Three sources, four classes, 1-3 images per patient; rsna has no COVID-19."""
    rng = np.random.default_rng(seed)
    mix = {"cohen": [0.1, 0.5, 0.4, 0.0], "rsna": [0.6, 0.0, 0.4, 0.0], "shenzhen": [0.5, 0.0, 0.0, 0.5]}
    rows = []
    for source, p in mix.items():
        for patient in range(40):
            label = FOUR[rng.choice(4, p=p)]
            for image in range(rng.integers(1, 4)):
                logits = rng.normal(size=4)
                logits[FOUR.index(label)] += 1.0
                probs = np.exp(logits) / np.exp(logits).sum()
                rows.append({"image_id": f"{source}-{patient}-{image}", "patient_id": f"{source}-{patient}", "source": source,
                             "finding": label, "label": label, **{f"prob_{c}": probs[k] for k, c in enumerate(FOUR)}})
    return pd.DataFrame(rows)


# --- source-only baseline -------------------------------------------------------------


def test_source_frequencies_are_class_shares_per_source():
    train = _train({"A": ["covid19"] * 3 + ["normal"], "B": ["normal"] * 2 + ["tuberculosis"] * 2})
    four = shortcut.source_frequencies(train, FOUR, SCHEMES[4].finding_to_class)
    assert four == {"A": {"normal": 0.25, "covid19": 0.75, "other_pneumonia": 0.0, "tuberculosis": 0.0},
                    "B": {"normal": 0.5, "covid19": 0.0, "other_pneumonia": 0.0, "tuberculosis": 0.5}}
    three = shortcut.source_frequencies(train, list(SCHEMES[3].classes), SCHEMES[3].finding_to_class)
    assert three["B"] == {"normal": 0.5, "covid19": 0.0, "other": 0.5}  # tuberculosis counts as "other"


def test_source_frequencies_reject_a_finding_outside_the_scheme():
    with pytest.raises(CxrclfError, match="not in the label scheme"):
        shortcut.source_frequencies(_train({"A": ["covid19", "unknown"]}), ["normal", "covid19"], SCHEMES[2].finding_to_class)


def test_source_only_auc_by_hand():
    # A: 3 of 4 training images are COVID-19 -> score 0.75; B: 0 of 4 -> score 0.
    frequencies = shortcut.source_frequencies(_train({"A": ["covid19"] * 3 + ["normal"], "B": ["normal"] * 4}),
                                              ["normal", "covid19"], SCHEMES[4].finding_to_class)
    test = _frame([("A", "covid19", 0.9), ("A", "covid19", 0.9), ("A", "normal", 0.1), ("A", "normal", 0.1),
                   ("B", "normal", 0.1), ("B", "normal", 0.1)])
    # 2 positives x 4 negatives = 8 pairs: 4 against B win (1 each), 4 against A tie (1/2 each) -> 6/8
    assert shortcut.source_only_auc(test, "covid19", frequencies) == 0.75
    score = [0.75, 0.75, 0.75, 0.75, 0.0, 0.0]
    assert roc_auc_score(test["label"] == "covid19", score) == 0.75
    # normal: frequency 0.25 in A, 1.0 in B; 4 negatives (A) vs 4 positives (2 A, 2 B): (2*4*1 + 2*4*0.5) / 16
    assert shortcut.source_only_auc(test, "normal", frequencies) == 0.75
    # the pure archive split: positives only in A, negatives only in B -> 1.0
    archive_split = test.iloc[[0, 1, 4, 5]]  # COVID-19 only in A, normal only in B
    assert shortcut.source_only_auc(archive_split, "covid19", frequencies) == 1.0


def test_source_only_auc_scores_an_unseen_source_zero():
    frequencies = {"A": {"covid19": 0.75, "normal": 0.25}}
    test = _frame([("A", "covid19", 0.5), ("C", "covid19", 0.5), ("C", "normal", 0.5), ("B", "normal", 0.5)])
    assert list(shortcut.source_only_scores(test, "covid19", frequencies)) == [0.75, 0.0, 0.0, 0.0]
    # A-positive beats both negatives (2); C-positive ties both (2 * 1/2) -> 3/4
    assert shortcut.source_only_auc(test, "covid19", frequencies) == 0.75
    assert roc_auc_score(test["label"] == "covid19", [0.75, 0, 0, 0]) == 0.75


# --- pooled AUC beside the baseline ---------------------------------------------------


def test_a_model_that_reads_only_the_source_does_not_beat_the_baseline():
    frequencies = {"A": {"normal": 0.25, "covid19": 0.75}, "B": {"normal": 1.0, "covid19": 0.0}}
    labels = [("A", "covid19")] * 30 + [("A", "normal")] * 10 + [("B", "normal")] * 40
    shortcut_model = _frame([(s, l, 0.75 if s == "A" else 0.0) for s, l in labels])  # its score is the source's frequency
    rows = shortcut.pooled_aucs_with_baseline(shortcut_model, ["normal", "covid19"], frequencies, resamples=200, seed=0)
    covid = rows[1]
    assert covid["class"] == "covid19" and (covid["n_images"], covid["n_positive"], covid["n_negative"], covid["n_patients"]) == (80, 30, 50, 80)
    assert covid["auc"] == pytest.approx(roc_auc_score(shortcut_model["label"] == "covid19", shortcut_model["prob_covid19"]))
    assert covid["source_only_auc"] == pytest.approx(covid["auc"])  # (30*40 + 30*10/2) / (30*50) = 0.9
    assert covid["source_only_auc"] == pytest.approx(0.9)
    assert covid["ci_low"] <= covid["auc"] <= covid["ci_high"]
    assert covid["beats_source_only"] is False
    assert covid["verdict"].startswith("does not beat a score that knows only the source")


def test_a_model_that_separates_inside_the_source_beats_the_baseline():
    frequencies = {"A": {"normal": 0.25, "covid19": 0.75}, "B": {"normal": 1.0, "covid19": 0.0}}
    labels = [("A", "covid19")] * 30 + [("A", "normal")] * 10 + [("B", "normal")] * 40
    model = _frame([(s, l, 0.9 if l == "covid19" else 0.1) for s, l in labels])
    covid = shortcut.pooled_aucs_with_baseline(model, ["normal", "covid19"], frequencies, resamples=200, seed=0)[1]
    assert (covid["auc"], covid["ci_low"], covid["ci_high"], covid["source_only_auc"]) == (1.0, 1.0, 1.0, pytest.approx(0.9))
    assert covid["beats_source_only"] is True and covid["verdict"] == "beats a score that knows only the source"
    # without an interval there is no claim
    off = shortcut.pooled_aucs_with_baseline(model, ["normal", "covid19"], frequencies, resamples=0, seed=0)[1]
    assert math.isnan(off["ci_low"]) and off["beats_source_only"] is False and "no interval" in off["verdict"]


# --- within-source AUCs ---------------------------------------------------------------


def test_within_source_aucs_equal_scikit_learn_on_each_source():
    predictions = _random_predictions(seed=1)
    rows = shortcut.within_source_aucs(predictions, FOUR, resamples=100, seed=0)
    assert [(r["source"], r["class"]) for r in rows] == [(s, c) for s in ("cohen", "rsna", "shenzhen") for c in FOUR]
    computed = 0
    for r in rows:
        part = predictions[predictions["source"] == r["source"]]
        positive = part["label"] == r["class"]
        assert (r["n_images"], r["n_positive"], r["n_negative"], r["n_patients"]) == (
            len(part), int(positive.sum()), int((~positive).sum()), part["patient_id"].nunique())
        if r["skipped"] is None:
            computed += 1
            assert r["auc"] == pytest.approx(roc_auc_score(positive, part[f"prob_{r['class']}"]))
            assert r["ci_low"] <= r["auc"] <= r["ci_high"]
            assert r["source_only_auc"] == 0.5
    assert computed == 7  # cohen: 3 classes, rsna: 2, shenzhen: 2


def test_a_class_absent_from_a_source_is_skipped_with_its_reason():
    rows = {(r["source"], r["class"]): r for r in shortcut.within_source_aucs(_random_predictions(seed=1), FOUR, resamples=20, seed=0)}
    covid_in_rsna = rows[("rsna", "covid19")]
    assert covid_in_rsna["skipped"] == "no positives" and covid_in_rsna["n_positive"] == 0
    assert all(math.isnan(covid_in_rsna[k]) for k in ("auc", "ci_low", "ci_high", "source_only_auc"))
    only_normal = _frame([("B", "normal", 0.1), ("B", "normal", 0.2)])
    [normal, covid] = shortcut.within_source_aucs(only_normal, ["normal", "covid19"], resamples=10, seed=0)
    assert (normal["skipped"], covid["skipped"]) == ("no negatives", "no positives")


def test_within_source_interval_is_a_patient_bootstrap_of_that_source():
    predictions = _random_predictions(seed=2)
    row = next(r for r in shortcut.within_source_aucs(predictions, FOUR, resamples=300, seed=7)
               if (r["source"], r["class"]) == ("cohen", "covid19"))
    cohen = predictions[predictions["source"] == "cohen"].reset_index(drop=True)
    positive, score = (cohen["label"] == "covid19").to_numpy(), cohen["prob_covid19"].to_numpy()
    expected = bootstrap(lambda rows: {"auc": auc_score(positive[rows], score[rows])}, cohen["patient_id"].to_numpy(), 300, 7)["auc"]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(expected)
    again = next(r for r in shortcut.within_source_aucs(predictions, FOUR, resamples=300, seed=7)
                 if (r["source"], r["class"]) == ("cohen", "covid19"))
    assert (again["ci_low"], again["ci_high"]) == (row["ci_low"], row["ci_high"])


def test_two_images_of_one_patient_move_together():
    # Every patient has two identical images: a patient bootstrap sees exactly the one-image data
    # (same interval, same seed); an image bootstrap would treat the copies as independent (narrower).
    rng = np.random.default_rng(3)
    single = _frame([("A", "covid19" if i % 3 == 0 else "normal", float(p)) for i, p in enumerate(rng.uniform(size=60))])
    single["prob_covid19"] += np.where(single["label"] == "covid19", 0.3, 0.0)
    double = pd.concat([single, single.assign(image_id=single["image_id"] + "b")], ignore_index=True)
    one = shortcut.within_source_aucs(single, ["normal", "covid19"], resamples=400, seed=5)[1]
    two = shortcut.within_source_aucs(double, ["normal", "covid19"], resamples=400, seed=5)[1]
    assert two["n_images"] == 120 and two["n_patients"] == 60
    assert two["auc"] == pytest.approx(one["auc"])
    assert (two["ci_low"], two["ci_high"]) == pytest.approx((one["ci_low"], one["ci_high"]))
    positive, score = (double["label"] == "covid19").to_numpy(), double["prob_covid19"].to_numpy()
    by_image = bootstrap(lambda rows: {"auc": auc_score(positive[rows], score[rows])}, double["image_id"].to_numpy(), 400, 5)["auc"]
    assert by_image[1] - by_image[0] < 0.85 * (two["ci_high"] - two["ci_low"])


# --- source probe ---------------------------------------------------------------------


def test_probe_is_at_chance_on_random_features():
    rng = np.random.default_rng(0)
    sources = np.repeat(["cohen", "rsna", "shenzhen"], 100)
    result = shortcut.source_probe(rng.normal(size=(300, 10)), sources, folds=5, seed=0)
    assert result["chance"] == pytest.approx(1 / 3)
    assert abs(result["balanced_accuracy"] - 1 / 3) <= 0.15
    assert (result["n_images"], result["sources"], result["folds"], result["reason"], result["dropped"]) == (
        300, {"cohen": 100, "rsna": 100, "shenzhen": 100}, 5, None, {})
    assert result["balanced_accuracy"] == pytest.approx(np.mean(list(result["recall"].values())))


def test_probe_is_near_one_when_a_feature_encodes_the_source():
    rng = np.random.default_rng(1)
    sources = np.repeat(["cohen", "rsna", "shenzhen"], [60, 120, 40])
    features = rng.normal(size=(220, 10))
    features[:, 3] = np.repeat([0.0, 5.0, 10.0], [60, 120, 40]) + rng.normal(scale=0.3, size=220)
    result = shortcut.source_probe(features, sources, seed=0)
    assert result["balanced_accuracy"] >= 0.98


def test_probe_reduces_folds_and_drops_single_image_sources():
    rng = np.random.default_rng(2)
    sources = np.array(["a"] * 3 + ["b"] * 4 + ["c"])
    result = shortcut.source_probe(rng.normal(size=(8, 4)), sources, folds=5, seed=0)
    assert (result["folds"], result["n_images"], result["sources"], result["dropped"], result["chance"]) == (3, 7, {"a": 3, "b": 4}, {"c": 1}, 0.5)


def test_probe_with_fewer_than_two_sources_is_not_applicable():
    result = shortcut.source_probe(np.zeros((5, 3)), np.array(["cohen"] * 4 + ["rsna"]))
    assert result["balanced_accuracy"] is None and result["chance"] is None and result["folds"] is None
    assert result["sources"] == {"cohen": 4} and result["dropped"] == {"rsna": 1}
    assert "at least 2 sources" in result["reason"]
    text = shortcut.markdown_probe(result)
    assert text.startswith("Source probe not applicable: needs at least 2 sources") and "rsna (1)" in text


def test_probe_rejects_mismatched_inputs():
    with pytest.raises(CxrclfError, match="one source per image"):
        shortcut.source_probe(np.zeros((5, 3)), np.array(["a"] * 4))


# --- Markdown -------------------------------------------------------------------------


def test_markdown_tables_state_the_verdicts():
    within = shortcut.markdown_within_source([
        {"source": "cohen", "class": "covid19", "n_images": 10, "n_positive": 6, "n_negative": 4, "n_patients": 9,
         "auc": 0.8123, "ci_low": 0.6, "ci_high": 0.95, "source_only_auc": 0.5, "skipped": None},
        {"source": "rsna", "class": "covid19", "n_images": 5, "n_positive": 0, "n_negative": 5, "n_patients": 5,
         "auc": math.nan, "ci_low": math.nan, "ci_high": math.nan, "source_only_auc": math.nan, "skipped": "no positives"},
    ])
    lines = within.splitlines()
    assert lines[2] == "| cohen | covid19 | 10 | 6 | 4 | 9 | 0.812 (0.600-0.950) | 0.500 |"
    assert "| rsna | covid19 |" not in within  # a pair that cannot be computed is a sentence, not a row of n/a
    assert lines[-1] == "Not computable inside a single source: covid19 in rsna (no positives)."

    pooled = shortcut.markdown_pooled([
        {"class": "covid19", "n_images": 80, "n_positive": 30, "auc": 0.92, "ci_low": 0.85, "ci_high": 0.97,
         "source_only_auc": 0.9, "beats_source_only": False, "verdict": "does not beat a score that knows only the source (its interval reaches the baseline)"},
        {"class": "normal", "n_images": 80, "n_positive": 50, "auc": 0.99, "ci_low": 0.97, "ci_high": 1.0,
         "source_only_auc": 0.7, "beats_source_only": True, "verdict": "beats a score that knows only the source"},
    ])
    assert "| covid19 | 80 | 30 | 0.920 (0.850-0.970) | 0.900 | no |" in pooled
    assert "| normal | 80 | 50 | 0.990 (0.970-1.000) | 0.700 | yes |" in pooled
    assert ("For covid19, the model does not beat a score that knows only the source (its interval reaches the baseline): "
            "AUC 0.920 (0.850-0.970) against 0.900 from the source alone.") in pooled
    assert "For normal" not in pooled


def test_markdown_pooled_reads_a_class_without_positives_back_from_metrics_json():
    # metrics.json stores NaN as null: the card renders the tables from the file, where it is None
    row = {"class": "covid19", "n_images": 3, "n_positive": 0, "auc": None, "ci_low": None, "ci_high": None,
           "source_only_auc": None, "beats_source_only": False, "verdict": "cannot be compared"}
    pooled = shortcut.markdown_pooled([row])
    assert "| covid19 | 3 | 0 | n/a | n/a | no |" in pooled
    assert "For covid19" not in pooled
    assert "| normal | 3 | 1 | 1.000 | 0.250 | yes |" in shortcut.markdown_pooled([
        row | {"class": "normal", "n_positive": 1, "auc": 1.0, "source_only_auc": 0.25, "beats_source_only": True}])


def test_markdown_probe_says_when_far_above_chance():
    base = {"chance": 0.5, "n_images": 40, "sources": {"a": 20, "b": 20}, "dropped": {}, "recall": {"a": 0.9, "b": 0.8}, "folds": 5, "reason": None}
    far = shortcut.markdown_probe(base | {"balanced_accuracy": 0.75})  # exactly chance + 0.25
    assert "| a | 20 | 0.900 |" in far
    assert "balanced accuracy 0.750 against chance 0.500 (5-fold cross-validation, 40 images)" in far
    assert "far above chance (at least chance + 0.25): the features identify the archive" in far
    near = shortcut.markdown_probe(base | {"balanced_accuracy": 0.74})
    assert "This is not far above chance" in near and "identify the archive" not in near
