from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from cxrclf.data.split import assign_splits, hamming_pairs, leakage_groups


def _dataset(seed: int = 0):
    rng = np.random.default_rng(seed)
    patients, findings = [], []
    for finding, n_patients in (("normal", 60), ("covid19", 25), ("other_pneumonia", 30), ("tuberculosis", 15)):
        for p in range(n_patients):
            for _ in range(int(rng.integers(1, 5))):
                patients.append(f"{finding}-{p}")
                findings.append(finding)
    return patients, findings


def test_groups_join_patients_and_linked_pairs():
    groups = leakage_groups(["a", "b", "a", "c", "d"], [(1, 3)])
    assert groups[0] == groups[2] and groups[1] == groups[3]
    assert len(set(groups)) == 3 and groups[0] == "g00000"


def test_splits_are_patient_level_stratified_and_seeded():
    patients, findings = _dataset()
    groups = leakage_groups(patients, [])
    splits, folds = assign_splits(groups, findings, 0.1, 0.1, 4, seed=0)
    by_patient = defaultdict(set)
    for p, s in zip(patients, splits):
        by_patient[p].add(s)
    assert all(len(s) == 1 for s in by_patient.values())
    counts = Counter(zip(findings, splits))
    for finding, total in Counter(findings).items():
        assert abs(counts[(finding, "test")] - 0.1 * total) <= 4  # within one patient's images
        assert abs(counts[(finding, "val")] - 0.1 * total) <= 4
    assert all(f == -1 for s, f in zip(splits, folds) if s == "test")
    fold_sizes = Counter(f for f in folds if f >= 0)
    assert set(fold_sizes) == {0, 1, 2, 3} and max(fold_sizes.values()) - min(fold_sizes.values()) <= 8
    fold_of = defaultdict(set)
    for p, f in zip(patients, folds):
        fold_of[p].add(f)
    assert all(len(f) == 1 for f in fold_of.values())
    assert (splits, folds) == assign_splits(groups, findings, 0.1, 0.1, 4, seed=0)
    assert splits != assign_splits(groups, findings, 0.1, 0.1, 4, seed=1)[0]


def test_single_group_class_goes_to_train():
    splits, folds = assign_splits(["g1", "g2", "g2"], ["tuberculosis", "normal", "normal"], 0.1, 0.1, 2, seed=0)
    assert splits == ["train", "train", "train"] and folds[0] >= 0


def test_hamming_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(300, 32), dtype=np.uint8)
    raw[5] = raw[17]
    raw[5, 0] ^= 0b111  # 3 bits apart
    hashes = [row.tobytes().hex() for row in raw]
    bits = np.unpackbits(raw, axis=1)
    expected = {(i, j) for i in range(300) for j in range(i + 1, 300) if (bits[i] != bits[j]).sum() <= 100}
    assert set(hamming_pairs(hashes, 100)) == expected
    assert (5, 17) in set(hamming_pairs(hashes, 3)) and len(hamming_pairs(hashes, 3)) == 1


def test_linked_patients_share_a_group():
    groups = leakage_groups(["rsna:a", "table:P7", "table:P7", "x"], [], [("rsna:a", "table:P7")])
    assert groups[0] == groups[1] == groups[2] != groups[3]
