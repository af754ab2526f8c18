"""The batch shift test: calibrated under the null, powerful under a shift, exact against a brute-force refit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrclf.errors import CxrclfError
from cxrclf.guard import shift
from cxrclf.guard.shift import Reference, check_batch, classifier_permutation_test, shift_test


def _reference(rng, count=40, dim=10, sources=("cohen", "rsna")) -> Reference:
    return Reference(rng.normal(size=(count, dim)), [sources[i % len(sources)] for i in range(count)])


def test_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(0)
    draws = 200
    p = np.array([classifier_permutation_test(rng.normal(size=(50, 10)), rng.normal(size=(50, 10)), 200, seed)[1] for seed in range(draws)])
    bound = 3 * math.sqrt(0.05 * 0.95 / draws)  # three binomial standard deviations: 0.046
    assert abs(np.mean(p < 0.05) - 0.05) <= bound
    for level in (0.25, 0.5, 0.75):  # uniform, not merely right at 0.05
        assert abs(np.mean(p < level) - level) <= 3 * math.sqrt(level * (1 - level) / draws)
    assert p.min() >= 1 / 201


def test_a_mean_shift_of_one_sd_is_found():
    rng = np.random.default_rng(1)
    p = [classifier_permutation_test(rng.normal(size=(50, 10)) + 1.0, rng.normal(size=(50, 10)), 200, seed)[1] for seed in range(20)]
    assert max(p) == pytest.approx(1 / 201)  # every draw: no permutation reaches the observed AUC
    one = [classifier_permutation_test(rng.normal(size=(50, 10)) + np.r_[1.0, np.zeros(9)], rng.normal(size=(50, 10)), 200, seed)[1] for seed in range(40)]
    assert np.mean(np.array(one) < 0.05) >= 0.8  # one feature of ten moved by 1 sd: measured 0.94


def test_the_effect_is_the_leave_one_out_auc_of_a_refitted_ridge():
    """Oracle: refit the domain classifier without each image in turn (scikit-learn), score it, take the AUC."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(15, 6)) + 0.4, rng.normal(size=(12, 6))
    pooled = np.vstack([x, y])
    standardised = (pooled - pooled.mean(axis=0)) / pooled.std(axis=0)
    design = np.hstack([standardised / math.sqrt(6), np.ones((27, 1))])  # K = Z Z^T / D + 1 in the primal
    side = np.r_[np.ones(15), -np.ones(12)]
    strength = shift.RIDGE_PER_IMAGE * 27
    left_out = np.empty(27)
    for i in range(27):
        keep = np.arange(27) != i
        left_out[i] = Ridge(alpha=strength, fit_intercept=False).fit(design[keep], side[keep]).predict(design[i:i + 1])[0]
    effect, p_value, null = classifier_permutation_test(x, y, 300, seed=0)
    assert effect == pytest.approx(roc_auc_score(side > 0, left_out), abs=1e-12)
    assert len(null) == 300 and p_value == pytest.approx((1 + np.sum(null >= effect - 1e-12)) / 301)


def test_seeded_and_deterministic():
    rng = np.random.default_rng(3)
    reference, batch = _reference(rng), rng.normal(size=(25, 10)) + 0.3
    first, again, other = shift_test(batch, reference), shift_test(batch, reference), shift_test(batch, reference, seed=1)
    assert first == again
    assert first.effect == other.effect and first.permutations == 1000
    assert first.images == 25 and first.reference_images == 40 and first.reference_sources == {"cohen": 20, "rsna": 20}
    assert first.to_dict()["shifted"] == (first.p_value < 0.01)


def test_large_sides_are_subsampled(monkeypatch):
    monkeypatch.setattr(shift, "MAX_IMAGES", 30)
    rng = np.random.default_rng(4)
    result = shift_test(rng.normal(size=(50, 10)), _reference(rng, count=60))
    assert (result.images, result.reference_images, result.subsampled) == (30, 30, True)
    assert sum(result.reference_sources.values()) == 30


def test_reference_round_trip_selection_and_damage(tmp_path):
    rng = np.random.default_rng(5)
    reference = _reference(rng, count=9, dim=7, sources=("rsna", "cohen", "montgomery"))
    path = reference.save(tmp_path / "reference.safetensors")
    loaded = Reference.load(path)
    assert loaded.counts == {"cohen": 3, "montgomery": 3, "rsna": 3} and loaded.split == "val"
    assert list(loaded.sources) == list(reference.sources)
    assert np.allclose(loaded.features, reference.features, rtol=1e-3, atol=1e-3)  # stored as float16
    narrowed = loaded.select(["cohen", "rsna"])
    assert len(narrowed) == 6 and set(narrowed.sources) == {"cohen", "rsna"}
    assert loaded.select(None) is loaded
    with pytest.raises(CxrclfError, match="no source named shenzhen; it holds cohen \\(3 images\\), montgomery"):
        loaded.select(["shenzhen"])
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CxrclfError, match="damaged or foreign"):
        Reference.load(path)


def test_check_batch_says_why_it_did_not_test():
    rng = np.random.default_rng(6)
    assert check_batch(rng.normal(size=(30, 10)), None) == {
        "tested": False, "images": 30, "reason": "the run stores no shift reference (trained before cxrclf stored one)"}
    assert check_batch(rng.normal(size=(19, 10)), _reference(rng)) == {"tested": False, "images": 19, "reason": "fewer than 20 images"}
    found = check_batch(rng.normal(size=(20, 10)) + 2.0, _reference(rng), sources=["rsna"])
    assert found["tested"] and found["shifted"] and found["reference_sources"] == {"rsna": 20} and found["p_value"] == pytest.approx(1 / 1001)
    with pytest.raises(CxrclfError, match="do not match the reference's 10"):
        shift_test(rng.normal(size=(20, 11)), _reference(rng))
