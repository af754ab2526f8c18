"""The paper's two answers to very few COVID-19 images (pure functions, no torch).

* ``weighted`` (scenarios CB, CM3, CM4): Eq. 1, ``w(c) = C_c * sum_k n_k / (N * n_c)``, in a
  weighted cross-entropy; ``N`` is the number of classes, ``n_c`` the training images of c.
* ``oversample`` (RB, RM3, RM4): every epoch, minority classes are resampled with
  replacement up to the majority count; the repeated copies are augmented.
"""

from __future__ import annotations

import numpy as np

from cxrclf.errors import CxrclfError

__all__ = ["STRATEGIES", "class_counts", "class_weights", "oversample_epoch", "plain_epoch"]

STRATEGIES = ("oversample", "weighted")


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def class_weights(labels: np.ndarray, num_classes: int, constants: dict[int, float] | None = None) -> np.ndarray:
    """Eq. 1 over the training labels. A class without training images is an error."""
    counts = class_counts(labels, num_classes)
    if (counts == 0).any():
        missing = [int(c) for c in np.nonzero(counts == 0)[0]]
        raise CxrclfError(f"class(es) {missing} have no training images; class weights are undefined")
    factors = np.ones(num_classes, dtype=np.float64)
    for label, value in (constants or {}).items():
        factors[label] = value
    return factors * counts.sum() / (num_classes * counts)


def oversample_epoch(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's training order: (indices into ``labels``, augment flag per entry).

    Every original image appears once, unaugmented; each minority class is topped up to the
    majority count with copies drawn with replacement, flagged for augmentation.
    """
    labels = np.asarray(labels)
    counts = class_counts(labels, num_classes)
    target = counts.max()
    indices, augment = [np.arange(len(labels))], [np.zeros(len(labels), dtype=bool)]
    for label in range(num_classes):
        members = np.nonzero(labels == label)[0]
        extra = target - len(members)
        if len(members) and extra > 0:
            indices.append(rng.choice(members, size=extra, replace=True))
            augment.append(np.ones(extra, dtype=bool))
    order_indices, order_augment = np.concatenate(indices), np.concatenate(augment)
    permutation = rng.permutation(len(order_indices))
    return order_indices[permutation], order_augment[permutation]


def plain_epoch(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.permutation(count), np.zeros(count, dtype=bool)
