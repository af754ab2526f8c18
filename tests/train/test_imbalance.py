from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrclf.errors import CxrclfError
from cxrclf.train import imbalance
from cxrclf.train.augment import random_affine


def test_eq1_weights_exact():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 40)
    weights = imbalance.class_weights(labels, 3)
    # w(c) = C_c * sum_k n_k / (N * n_c) with N = 3 classes, sum = 100
    assert weights == pytest.approx([100 / (3 * 50), 100 / (3 * 10), 100 / (3 * 40)])
    boosted = imbalance.class_weights(labels, 3, {1: 2.0})
    assert boosted == pytest.approx([100 / 150, 2 * 100 / 30, 100 / 120])
    with pytest.raises(CxrclfError, match="no training images"):
        imbalance.class_weights(np.array([0, 0, 2]), 3)


def test_oversampled_epoch_is_balanced_and_only_copies_are_augmented():
    labels = np.array([0] * 30 + [1] * 4 + [2] * 11 + [3] * 7)
    rng = np.random.default_rng(0)
    order, augment = imbalance.oversample_epoch(labels, 4, rng)
    assert np.bincount(labels[order], minlength=4).tolist() == [30, 30, 30, 30]
    assert sorted(order[~augment].tolist()) == list(range(len(labels)))  # every original once, unaugmented
    assert np.bincount(labels[order[augment]], minlength=4).tolist() == [0, 26, 19, 23]
    assert set(order.tolist()) <= set(range(len(labels)))  # nothing from outside the training split
    again, _ = imbalance.oversample_epoch(labels, 4, np.random.default_rng(0))
    assert np.array_equal(order, again)


def test_random_affine_is_seeded_and_moves_pixels():
    images = torch.zeros((3, 1, 32, 32))
    images[:, :, 12:20, 12:20] = 1.0
    a = random_affine(images, torch.Generator().manual_seed(1))
    b = random_affine(images, torch.Generator().manual_seed(1))
    c = random_affine(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == images.shape and (a - images).abs().sum() > 1.0
    assert float(a.sum()) == pytest.approx(float(images.sum()), rel=0.35)  # scaled at most 10%, shifted inside the frame
