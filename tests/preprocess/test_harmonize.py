"""Harmonised inputs: each transform on synthetic arrays, and their parameters."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from cxrclf.data import synthetic
from cxrclf.errors import CxrclfError
from cxrclf.preprocess import PreprocessParams, preprocess_image
from cxrclf.preprocess.harmonize import (
    DETAIL_SIZE, clahe, deblock, harmonization, match_reference, normalize_intensity, reduce_detail, reference_quantile,
)
from cxrclf.preprocess.params import ADDED_FIELDS, HARMONIZATION_FIELDS, required_fields
from cxrclf.preprocess.pipeline import preprocess_stages


@pytest.fixture(scope="module")
def chest_1024():
    """A noisy 1024 px phantom with a COVID-19 pattern: one X-ray, to be seen at two resolutions."""
    return synthetic.phantom("covid19", np.random.default_rng(0), size=1024, text=False).clean.astype(np.float32)


def test_a_1024_and_a_128_px_copy_of_one_xray_become_close(chest_1024):
    """The same X-ray as two archives keep it: full size, and a 128 px copy in another window and gamma."""
    small = cv2.resize(chest_1024, (128, 128), interpolation=cv2.INTER_AREA)
    small = (0.1 + 0.75 * small ** 1.5).astype(np.float32)
    paper = PreprocessParams(size=256, remove_text=False)

    def gap(params):  # mean absolute difference of the two outputs, in grey levels of 255
        return np.abs(preprocess_image(chest_1024, params).astype(float) - preprocess_image(small, params).astype(float)).mean()

    assert gap(paper) > 20                                         # measured 24.2: the archive shows in every pixel
    assert gap(replace(paper, detail_size=DETAIL_SIZE)) > 20       # one resolution alone leaves the window
    assert gap(replace(paper, intensity="match")) > 4              # one histogram alone leaves the detail (measured 4.9)
    assert gap(replace(paper, **harmonization(True))) < 0.2        # both: measured 0.095, the two are one image


def test_reduce_detail_brings_the_short_side_down_and_leaves_small_images():
    image = np.random.default_rng(1).random((800, 1000), dtype=np.float32)
    reduced = reduce_detail(image, 128)
    assert reduced.shape == (128, 160) and reduced.dtype == np.float32
    assert abs(float(reduced.mean()) - float(image.mean())) < 1e-3  # area averaging keeps the mean
    assert reduce_detail(image[:100], 128).shape == (100, 1000)  # a short side already at or below the detail: untouched
    assert reduce_detail(image, 0) is image


def test_clahe_keeps_the_range_and_dtype_and_raises_local_contrast():
    rng = np.random.default_rng(2)
    flat = (0.45 + 0.1 * cv2.GaussianBlur(rng.random((128, 128), dtype=np.float32), (0, 0), 3)).astype(np.float32)
    out = clahe(flat)
    assert out.dtype == np.float32 and out.shape == flat.shape
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert out.std() > 3 * flat.std()  # a dull image gets contrast
    assert np.array_equal(normalize_intensity(flat, "clahe", 2.0, 8), out)
    assert not np.array_equal(clahe(flat, clip_limit=8.0, grid=2), out)  # the recorded parameters matter


def test_matching_reaches_the_reference_histogram():
    image = (0.3 + 0.2 * np.random.default_rng(3).random((200, 300)) ** 2).astype(np.float32)  # a narrow window, skewed dark
    out = match_reference(image)
    edges = np.linspace(0.0, 1.0, 11)
    reference = np.diff(3 * edges ** 2 - 2 * edges ** 3)  # the reference's distribution function, 3x^2 - 2x^3
    observed = np.histogram(out, bins=edges)[0] / out.size
    assert np.abs(observed - reference).max() < 2e-3  # measured 8e-4 (16-bit levels shared by several pixels)
    assert reference_quantile(np.array([0.0, 0.5, 1.0])) == pytest.approx([0.0, 0.5, 1.0], abs=1e-6)


def test_matching_ignores_the_archive_window_and_keeps_flat_regions_flat():
    image = (np.random.default_rng(4).integers(0, 4096, (64, 64)) / 4095).astype(np.float32)  # 12-bit levels
    image[:16] = 0.25
    windowed = (0.1 + 0.7 * image.astype(np.float64) ** 0.6).astype(np.float32)  # another window and gamma: any increasing mapping
    assert np.array_equal(match_reference(image), match_reference(windowed))
    assert np.unique(match_reference(image)[:16]).size == 1
    assert np.array_equal(normalize_intensity(image, "none"), image)


def test_deblock_smooths_jpeg_blocks_and_keeps_edges(chest_1024):
    def blockiness(x):  # steps across 8 px block borders against steps inside blocks (1 for a clean image)
        steps = np.abs(np.diff(x, axis=1))
        border = np.arange(steps.shape[1]) % 8 == 7
        return steps[:, border].mean() / steps[:, ~border].mean()

    buffer = io.BytesIO()
    from PIL import Image

    Image.fromarray(synthetic.to_uint8(chest_1024)).save(buffer, format="JPEG", quality=20)
    blocky = np.asarray(Image.open(buffer), dtype=np.float32) / 255
    assert blockiness(blocky) > 3.5                      # measured 4.1
    assert blockiness(deblock(blocky)) < 0.55 * blockiness(blocky)  # measured 1.9
    step = np.zeros((64, 64), np.float32)
    step[:, 32:] = 0.6
    assert np.abs(deblock(step) - step).max() < 1e-4  # an anatomical edge (a step of 0.6) stays sharp


def test_harmonize_turns_on_the_recommended_set_and_each_option_tunes_it():
    assert harmonization(False) == {"detail_size": 0, "intensity": "none", "deblock": False}
    assert harmonization(True) == {"detail_size": 128, "intensity": "match", "deblock": False}
    assert harmonization(True, detail_size=0, intensity="clahe", deblock=True) == {"detail_size": 0, "intensity": "clahe", "deblock": True}
    assert harmonization(False, intensity="match") == {"detail_size": 0, "intensity": "match", "deblock": False}
    with pytest.raises(CxrclfError, match="intensity normalisation must be one of none, clahe, match, not 'hist'"):
        harmonization(True, intensity="hist")


def test_without_harmonization_the_parameters_and_stages_are_those_of_before():
    params = PreprocessParams()
    assert not params.harmonizes and not set(params.to_dict()) & set(HARMONIZATION_FIELDS)
    stages = preprocess_stages(np.full((64, 64), 0.5, np.float32), replace(params, size=32))
    assert list(stages) == ["input", "text removed", "resized", "denoised", "final"]
    assert not set(HARMONIZATION_FIELDS) & required_fields() and not set(HARMONIZATION_FIELDS) & set(ADDED_FIELDS)


def test_harmonization_parameters_are_recorded_and_read_back():
    params = replace(PreprocessParams(size=64), **harmonization(True, intensity="clahe", deblock=True), clahe_clip=3.0, clahe_grid=4).validate()
    stored = json.loads(json.dumps(params.to_dict()))
    assert {k: stored[k] for k in HARMONIZATION_FIELDS} == {"detail_size": 128, "intensity": "clahe", "clahe_clip": 3.0, "clahe_grid": 4, "deblock": True}
    assert PreprocessParams.from_dict(stored) == params
    stages = preprocess_stages(np.random.default_rng(5).random((256, 300), dtype=np.float32), params)
    assert stages["detail reduced"].shape == (128, 150) and "deblocked" in stages and "intensity" in stages
    only_deblock = replace(PreprocessParams(), deblock=True)
    assert only_deblock.harmonizes and set(HARMONIZATION_FIELDS) <= set(only_deblock.to_dict())


@pytest.mark.parametrize(("changes", "message"), [
    ({"detail_size": 8}, "detail_size must be 0 (off) or from 16 to 8192 pixels, not 8"),
    ({"intensity": "hist"}, "intensity must be one of none, clahe, match, not 'hist'"),
    ({"clahe_grid": 0}, "clahe_grid from 1 to 64"),
    ({"clahe_clip": -1.0}, "clahe_clip must be in (0, 100]"),
    ({"deblock": "yes"}, "deblock must be true or false, not 'yes'"),
    ({"detail_size": 12.5}, "detail_size must be an integer, not 12.5"),
])
def test_bad_harmonization_parameters_are_one_line_about_the_value(changes, message):
    with pytest.raises(CxrclfError) as caught:
        replace(PreprocessParams(), **changes).validate()
    assert message in caught.value.reason and "\n" not in caught.value.reason
