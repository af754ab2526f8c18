"""Patient-level, finding-stratified, seeded splits and cross-validation folds (pure functions).

The unit of assignment is a *group*: patients linked by shared or near-identical images
(see :func:`leakage_groups`). No group ever straddles train, val and test, or two folds.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from cxrclf.data import hamming
from cxrclf.errors import CxrclfError
from cxrclf.labels import FINDINGS

__all__ = ["assign_splits", "hamming_pairs", "leakage_groups"]


class _UnionFind:
    def __init__(self, items):
        self.parent = {item: item for item in items}

    def find(self, item):
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the smaller key becomes the root, so the result does not depend on call order
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra


def check_distance(max_distance: int) -> int:
    """A near-duplicate distance in bits, or a one-line error: a negative one would silently find none."""
    from cxrclf.data.imageio import HASH_BITS

    if isinstance(max_distance, bool) or not isinstance(max_distance, (int, np.integer)) or not 0 <= max_distance <= HASH_BITS:
        raise CxrclfError(f"the near-duplicate distance must be a whole number of bits from 0 to {HASH_BITS} (24 by default), not {max_distance!r}")
    return int(max_distance)


def hamming_pairs(hashes: list[str], max_distance: int) -> list[tuple[int, int]]:
    """Index pairs (i < j), sorted, whose hex hashes differ in at most ``max_distance`` bits.

    Exact, in near-linear time for the default distance (multi-index hashing, see
    :mod:`cxrclf.data.hamming`): a million hashes take about a minute, not days.
    """
    return hamming.pairs(hashes, check_distance(max_distance))


def leakage_groups(patient_ids: list[str], linked_pairs: list[tuple[int, int]], linked_patients: list[tuple[str, ...]] = ()) -> list[str]:
    """A group name per image: connected components of "same patient", ``linked_pairs`` (image
    indices) and ``linked_patients`` (patient ids known to share an image, e.g. a collapsed copy).

    Group names are ``g<number>``, numbered by the first image of each group, so they are
    stable for a given input order.
    """
    uf = _UnionFind(range(len(patient_ids)))
    first_of_patient: dict[str, int] = {}
    for index, patient in enumerate(patient_ids):
        if patient in first_of_patient:
            uf.union(first_of_patient[patient], index)
        else:
            first_of_patient[patient] = index
    for i, j in linked_pairs:
        uf.union(i, j)
    for patients in linked_patients:
        present = [first_of_patient[p] for p in patients if p in first_of_patient]
        for other in present[1:]:
            uf.union(present[0], other)
    names: dict[int, str] = {}
    out = []
    for index in range(len(patient_ids)):
        root = uf.find(index)
        if root not in names:
            names[root] = f"g{len(names):05d}"
        out.append(names[root])
    return out


def _stratum(findings: Counter) -> str:
    top = max(findings.values())
    return next(f for f in FINDINGS if findings.get(f, 0) == top)


def _place(sizes: list[int], order: list[int], targets: list[float]) -> list[int]:
    """Greedy: each group (in ``order``) goes to the bin with the largest remaining deficit."""
    filled = [0.0] * len(targets)
    placed = [0] * len(sizes)
    for index in order:
        deficits = [targets[b] - filled[b] for b in range(len(targets))]
        best = max(range(len(targets)), key=lambda b: (deficits[b], -b))
        placed[index] = best
        filled[best] += sizes[index]
    return placed


def assign_splits(
    groups: list[str],
    findings: list[str],
    test_frac: float,
    val_frac: float,
    folds: int,
    seed: int,
) -> tuple[list[str], list[int]]:
    """Split name and fold per image. Test images get fold -1; folds cover train and val.

    Groups are stratified by their most frequent finding; within a stratum they are
    shuffled with ``seed`` and placed largest first where the split most lacks images.
    """
    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    strata: dict[str, list[str]] = defaultdict(list)
    for group in sorted(members):
        strata[_stratum(Counter(findings[i] for i in members[group]))].append(group)

    split_of_group: dict[str, str] = {}
    fold_of_group: dict[str, int] = {}
    train_frac = max(0.0, 1.0 - test_frac - val_frac)
    for stratum_index, finding in enumerate(FINDINGS):
        names = strata.get(finding, [])
        if not names:
            continue
        rng = np.random.default_rng([seed, stratum_index])
        order = [names[i] for i in rng.permutation(len(names))]
        order.sort(key=lambda g: -len(members[g]))  # stable: shuffled order among equal sizes
        sizes = [len(members[g]) for g in order]
        total = sum(sizes)
        split_bins = _place(sizes, list(range(len(order))), [train_frac * total, val_frac * total, test_frac * total])
        for group, bin_index in zip(order, split_bins):
            split_of_group[group] = ("train", "val", "test")[bin_index]
        outside = [i for i, g in enumerate(order) if split_of_group[g] != "test"]
        outside_total = sum(sizes[i] for i in outside)
        fold_bins = _place(sizes, outside, [outside_total / folds] * folds) if folds > 0 else [0] * len(order)
        for i, group in enumerate(order):
            fold_of_group[group] = -1 if split_of_group[group] == "test" else fold_bins[i]
    return [split_of_group[g] for g in groups], [fold_of_group[g] for g in groups]
