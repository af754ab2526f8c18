from __future__ import annotations

import json

import numpy as np
import pytest

from cxrclf.data import synthetic
from cxrclf.data.imageio import read_image
from cxrclf.errors import CxrclfError
from cxrclf.labels import NORMAL
from cxrclf.preprocess.lung import lung_problem
from cxrclf.segment.infer import Segmenter
from cxrclf.segment.masks import dice, iou, mask_from_probabilities


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    """One phantom as PNG, JPEG and DICOM at 128 px (twice the training size), and its true lung mask."""
    root = tmp_path_factory.mktemp("segment-inputs")
    sample = synthetic.phantom(NORMAL, np.random.default_rng(11), size=128)
    pixels = synthetic.to_uint8(sample.image)
    synthetic._png(root / "chest.png", pixels)
    synthetic._jpeg(root / "chest.jpg", pixels)
    synthetic.write_dicom(root / "chest.dcm", pixels, patient_id="p1")
    return root, sample.lung_mask


def test_cli_masks_and_overlays_for_png_jpeg_and_dicom(run_cli, tiny_segmenter, phantom_files, tmp_path):
    root, truth = phantom_files
    files = [root / "chest.png", root / "chest.jpg", root / "chest.dcm"]
    result = run_cli("segment", *files, "--model", tiny_segmenter, "--out", tmp_path / "masks", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["file"] for r in rows] == [str(f) for f in files]
    for row, expected in zip(rows, ("chest.mask.png", "chest-2.mask.png", "chest-3.mask.png")):
        mask = read_image(row["mask"]) > 127
        assert row["mask"].endswith(expected) and mask.shape == (128, 128)
        assert dice(mask, truth) >= 0.85, row  # measured 0.916 (PNG)
        assert row["warning"] is None and row["lung_area"] == pytest.approx(mask.mean())
        overlay = read_image(row["overlay"])
        assert overlay.shape == (128, 128)
    again = run_cli("segment", files[0], "--model", tiny_segmenter, "--out", tmp_path / "masks")
    assert again.exit_code == 2 and "exists (pass --overwrite to replace it)" in again.stderr


def test_cli_reports_an_image_without_lungs_and_a_bad_file(run_cli, tiny_segmenter, tmp_path):
    synthetic._png(tmp_path / "blank.png", np.full((96, 96), 200, np.uint8))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    result = run_cli("segment", tmp_path / "blank.png", tmp_path / "broken.png", "--model", tiny_segmenter, "--out", tmp_path / "out")
    assert result.exit_code == 1
    said = " ".join(result.stderr.split())
    assert "warning:" in said and "blank.png" in said and "no lung fields found" in said
    assert (tmp_path / "out" / "blank.mask.png").is_file() and not (tmp_path / "out" / "broken.mask.png").exists()


def test_cli_trains_a_segmenter(run_cli, phantom_nlm, tmp_path):
    result = run_cli("segment", "train", "--nlm", phantom_nlm, "--out", tmp_path / "lung", "--encoder", "mobilenetv3_small_050", "--no-pretrained",
                     "--image-size", "64", "--epochs", "1", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    assert "test: Dice" in result.stdout and (tmp_path / "lung" / "model.safetensors").is_file()
    missing = run_cli("segment", "x.png", "--model", tmp_path / "nothing")
    assert missing.exit_code == 2 and "lung segmentation run not found" in missing.stderr


def test_segmenter_refuses_changed_weights_and_unfinished_runs(tiny_segmenter, tmp_path):
    segmenter = Segmenter(tiny_segmenter)
    assert len(segmenter.sha256) == 64
    with pytest.raises(CxrclfError, match="weights changed since the preprocessing parameters were recorded"):
        Segmenter(tiny_segmenter, expected_sha256="0" * 64)
    with pytest.raises(CxrclfError, match="not a lung segmentation run"):
        Segmenter(tmp_path)


def test_mask_from_probabilities_keeps_two_lungs_and_fills_holes():
    p = np.zeros((40, 40), np.float32)
    p[5:30, 4:16] = 0.9
    p[5:30, 24:36] = 0.9
    p[10, 8] = 0.1          # a hole
    p[36:38, 36:38] = 0.9   # a speck
    p[0:2, 0:2] = 0.9       # another
    mask = mask_from_probabilities(p, (80, 80))
    assert mask.shape == (80, 80) and mask[20, 16] and not mask[74, 74] and not mask[1, 1]
    assert lung_problem(mask) is None
    assert dice(mask, mask) == iou(mask, mask) == 1.0 and dice(mask, ~mask) == 0.0
