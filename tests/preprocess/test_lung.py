from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from cxrclf.data import synthetic
from cxrclf.errors import CxrclfError
from cxrclf.labels import NORMAL
from cxrclf.preprocess.lung import LUNG_FILL, NoLungsFound, apply_lungs, crop_to_lungs, grey_outside_lungs, lung_box, lung_problem
from cxrclf.preprocess.params import PreprocessParams
from cxrclf.preprocess.pipeline import preprocess_image, preprocess_stages


@pytest.fixture(scope="module")
def chest():
    sample = synthetic.phantom(NORMAL, np.random.default_rng(2), size=128, text=False)
    return sample.clean, sample.lung_mask


class KnownLungs:
    """A stand-in segmenter that returns the phantom's true lung mask, resized to the image."""

    def __init__(self, mask: np.ndarray):
        self.truth = mask.astype(np.uint8)
        self.calls = 0

    def mask(self, image: np.ndarray) -> np.ndarray:
        self.calls += 1
        return cv2.resize(self.truth, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def test_crop_keeps_both_lungs_the_mediastinum_and_a_margin(chest):
    image, mask = chest
    top, bottom, left, right = lung_box(mask, 0.0)
    cropped, cropped_mask = crop_to_lungs(image, mask, margin=0.1)
    assert cropped_mask.sum() == mask.sum()                      # no lung pixel cut off
    pad = round(0.1 * ((bottom - top) + (right - left)) / 2)
    assert cropped.shape == (min(128, bottom + pad) - max(0, top - pad), min(128, right + pad) - max(0, left - pad))
    # the mediastinum (between the lungs, image centre) is inside the crop, as is a margin beyond the lungs
    middle_row = (top + bottom) // 2 - max(0, top - pad)
    assert not cropped_mask[middle_row, cropped.shape[1] // 2] and cropped_mask[middle_row].any()
    assert not cropped_mask[:, :pad].any() and not cropped_mask[:, -pad:].any()
    np.testing.assert_array_equal(cropped, image[max(0, top - pad):bottom + pad, max(0, left - pad):right + pad])


def test_mask_keeps_the_lungs_untouched_and_greys_the_rest(chest):
    image, mask = chest
    greyed = grey_outside_lungs(image, mask, margin=0.05)
    assert greyed.dtype == image.dtype and greyed.shape == image.shape
    np.testing.assert_array_equal(greyed[mask], image[mask])
    far = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)) == 0
    assert np.all(greyed[far] == np.float32(LUNG_FILL))
    assert 0.2 < (greyed == np.float32(LUNG_FILL)).mean() < 0.8


def test_a_mask_without_a_pair_of_lungs_is_reported_not_cropped(chest):
    image, mask = chest
    assert lung_problem(mask) is None
    empty = np.zeros_like(mask)
    assert "no lung fields found" in lung_problem(empty)
    one_side = mask.copy()
    one_side[:, 64:] = False
    assert "no mediastinum" in lung_problem(one_side)  # one lung alone: its box has no gap in the middle
    hidden = mask.copy()
    rows = np.flatnonzero(mask[:, 64:].any(axis=1))
    hidden[rows[0] + 12:, 64:] = False  # an opacity hides all but the apex of one lung
    assert "one lung field much smaller" in lung_problem(hidden)
    lateral = np.zeros_like(mask)
    lateral[20:100, 30:100] = True  # one blob across the middle
    assert "no mediastinum" in lung_problem(lateral)
    with pytest.raises(NoLungsFound, match="no lung fields found") as caught:
        apply_lungs(image, empty, "crop", 0.05)
    assert isinstance(caught.value, CxrclfError)
    assert apply_lungs(image, empty, "none", 0.05) is image


def test_pipeline_crops_or_greys_with_the_segmenter_and_keeps_the_paper_pipeline_by_default(chest):
    image, mask = chest
    base = PreprocessParams(size=64, work_size=128, remove_text=False, denoise="none")
    assert base.lung == "none" and not base.uses_lungs
    segmenter = KnownLungs(mask)
    plain = preprocess_image(image, base, segmenter)
    assert segmenter.calls == 0  # no lung step, no segmentation
    cropped_params = replace(base, lung="crop", lung_model="/runs/lung", lung_model_sha256="a" * 64)
    stages = preprocess_stages(image, cropped_params, segmenter)
    assert stages["final"].shape == (64, 64, 3) and stages["lung mask"].shape == (128, 128)
    expected = cv2.resize(crop_to_lungs(image, mask, cropped_params.lung_margin)[0], (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(stages["final"][..., 0], np.clip(np.rint(expected * 255), 0, 255).astype(np.uint8))
    assert not np.array_equal(stages["final"], plain)
    masked = preprocess_image(image, replace(cropped_params, lung="mask"), segmenter)
    small_mask = cv2.resize(mask.astype(np.uint8), (64, 64), interpolation=cv2.INTER_NEAREST).astype(bool)
    assert np.all(masked[..., 0][~cv2.dilate(small_mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)] == round(255 * LUNG_FILL))
    with pytest.raises(NoLungsFound):
        preprocess_image(np.full((128, 128), 0.5, np.float32), cropped_params, KnownLungs(np.zeros_like(mask)))
