"""The input checks from the lungs: phantoms, constructed masks, real images, and where predict and preprocess use them."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from cxrclf.data import synthetic
from cxrclf.guard.lungs import INVERTED, NO_PAIR, ONE_FIELD, TURNS, LungPair, describe_pair, lung_warnings
from cxrclf.labels import FINDINGS


def _phantom(finding: str, seed: int, size: int) -> np.ndarray:
    return synthetic.to_uint8(synthetic.phantom(finding, np.random.default_rng(seed), size).image)


@pytest.mark.parametrize("finding", FINDINGS)
@pytest.mark.parametrize("size", [128, 256])
def test_an_upright_phantom_passes_and_quarter_turns_and_the_negative_are_named(finding, size):
    image = _phantom(finding, 3, size)
    assert lung_warnings(image) == []
    # np.rot90 turns counter-clockwise; the reason names the turn clockwise. The phantoms' elliptic
    # lungs look alike upside down, so the half turn is checked on real films (below).
    assert lung_warnings(np.ascontiguousarray(np.rot90(image, 1))) == [TURNS[3]]
    assert lung_warnings(np.ascontiguousarray(np.rot90(image, 3))) == [TURNS[1]]
    assert lung_warnings(255 - image) == [INVERTED]
    assert TURNS[1].startswith("rotated by 90 degrees") and TURNS[3].startswith("rotated by 270 degrees")


def test_a_16_bit_phantom_is_read_as_the_8_bit_one():
    image = _phantom("normal", 3, 128)
    assert lung_warnings(image.astype(np.uint16) * 257) == []
    assert lung_warnings((255 - image).astype(np.uint16) * 257) == [INVERTED]


def test_a_lung_hidden_by_a_dense_opacity_is_one_field_not_found():
    sample = synthetic.phantom("normal", np.random.default_rng(3), 256)
    image = sample.image.copy()
    columns = np.arange(image.shape[1])[None, :]
    left_lung = sample.lung_mask & (columns < image.shape[1] // 2)
    image[left_lung] = np.percentile(image[sample.lung_mask], 99) + 0.25  # a white-out, brighter than the mediastinum
    assert lung_warnings(synthetic.to_uint8(np.clip(image, 0, 1))) == [ONE_FIELD]


def test_images_without_lungs_have_no_pair():
    from skimage import data

    rng = np.random.default_rng(0)
    assert lung_warnings(np.full((200, 200), 128, np.uint8)) == [NO_PAIR]
    assert lung_warnings(rng.integers(0, 256, (256, 256), dtype=np.uint8)) == [NO_PAIR]
    assert lung_warnings(data.camera()) == [NO_PAIR]
    assert lung_warnings(data.astronaut()) == [NO_PAIR]  # colour: read as grey


def _two_fields(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Two tall lung fields of known boxes on a bright plane, and their 'probabilities'."""
    plane = np.full((size, size), 0.8, np.float32)
    probabilities = np.zeros((size, size), np.float32)
    probabilities[20:100, 16:50] = 0.95      # 80 x 34
    probabilities[24:100, 78:110] = 0.95     # 76 x 32
    plane[probabilities > 0] = 0.3
    return probabilities, plane


def test_a_pair_is_measured_from_the_mask():
    probabilities, plane = _two_fields()
    pair = describe_pair(probabilities, plane)
    assert pair.fields == 2 and pair.is_pair
    assert pair.area == pytest.approx((80 * 34 + 76 * 32) / 128**2)
    assert pair.balance == pytest.approx(76 * 32 / (80 * 34))
    assert pair.side_by_side == pytest.approx(76 / 76)
    assert pair.width == pytest.approx((110 - 16) / 128)
    assert pair.aspect == pytest.approx((80 / 34 + 76 / 32) / 2)
    assert pair.top == pytest.approx(20 / 128)
    assert pair.contrast == pytest.approx(0.8 - 0.3)
    assert pair.confidence == pytest.approx(0.95)
    negative = describe_pair(probabilities, 1 - plane)
    assert negative.contrast == pytest.approx(-0.5) and not negative.is_pair  # lungs brighter than the mediastinum


def test_stacked_fields_and_a_single_off_centre_field_are_not_a_pair():
    probabilities, plane = _two_fields()
    stacked = np.ascontiguousarray(np.rot90(probabilities))
    assert not describe_pair(stacked, np.ascontiguousarray(np.rot90(plane))).is_pair
    one = probabilities.copy()
    one[:, 64:] = 0
    found = describe_pair(one, plane)
    assert found.fields == 1 and found.is_one_field and not found.is_pair
    assert found.centre == pytest.approx(33 / 128) and found.area == pytest.approx(80 * 34 / 128**2)
    assert describe_pair(np.zeros_like(probabilities), plane) == LungPair()


# ----------------------------------------------------------------------------- real images

def _cohen(shared_data, view: str, modality: str = "X-ray", count: int = 3) -> list:
    with open(shared_data / "cohen" / "metadata.csv", newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["view"] == view and r["modality"] == modality]
    return [shared_data / "cohen" / "images" / r["filename"] for r in rows[:count]]


@pytest.mark.integration
def test_real_radiographs_pass_and_laterals_ct_and_turned_films_are_flagged(shared_data):
    from cxrclf.data.imageio import read_image

    montgomery = shared_data / "montgomery" / "MontgomerySet" / "CXR_png"
    frontal = [read_image(p) for p in [*_cohen(shared_data, "PA"), montgomery / "MCUCXR_0001_0.png"] if p.is_file()]
    assert len(frontal) >= 3
    for image in frontal:
        assert lung_warnings(image) == []
        assert lung_warnings(np.ascontiguousarray(np.rot90(image))) == [TURNS[3]]
        assert lung_warnings(np.ascontiguousarray(np.rot90(image, 2))) == [TURNS[2]]
        assert lung_warnings(255 - image if image.dtype == np.uint8 else 65535 - image) == [INVERTED]
    laterals = [lung_warnings(read_image(p)) for p in _cohen(shared_data, "L", count=8)]
    assert sum(bool(w) for w in laterals) >= 7  # measured: 8 of 8 (docs/performance.md)
    slices = [lung_warnings(read_image(p)) for p in _cohen(shared_data, "Axial", "CT", count=4)]
    assert slices and all(slices)


def test_without_a_segmenter_there_is_no_lung_check(monkeypatch):
    import os

    from cxrclf.guard.lungs import lung_findings
    from cxrclf.segment import ort

    turned = np.ascontiguousarray(np.rot90(_phantom("normal", 3, 128)))
    monkeypatch.setattr(ort, "_NETWORKS", {os.getpid(): None})  # neither onnxruntime nor PyTorch installed
    assert lung_findings(turned) is None and lung_warnings(turned) == []


def test_the_checks_read_the_same_in_onnxruntime_and_pytorch():
    from cxrclf.guard.lungs import lung_findings
    from cxrclf.segment.infer import builtin_segmenter
    from cxrclf.segment.ort import OnnxLungNetwork, lung_network

    assert isinstance(lung_network(), OnnxLungNetwork)
    for finding in FINDINGS:
        image = _phantom(finding, 5, 256)
        for variant in (image, np.ascontiguousarray(np.rot90(image)), 255 - image):
            fast, torch_ = lung_findings(variant), lung_findings(variant, builtin_segmenter())
            assert fast.reasons == torch_.reasons and np.array_equal(fast.mask, torch_.mask)
