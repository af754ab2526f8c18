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


@pytest.mark.slow
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


def test_the_folded_copy_gives_the_builtin_segmenters_probabilities_with_no_batch_norm():
    import torch

    from cxrclf.segment.infer import builtin_segmenter
    from cxrclf.segment.model import inference_copy

    segmenter = builtin_segmenter()
    folded = inference_copy(segmenter.model, segmenter.input_size)
    assert folded is not segmenter.model
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in segmenter.model.modules()) == 56  # the original is left as it was
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    rng = np.random.default_rng(3)
    planes = np.stack([synthetic.phantom(NORMAL, rng, size=128).image for _ in range(3)]).astype(np.float32)
    exact, fast = segmenter.plane_probabilities(planes), segmenter.plane_probabilities(planes, folded=True)
    assert np.abs(exact - fast).max() < 1e-5  # measured under 4e-6 on real films
    assert ((exact > 0.5) == (fast > 0.5)).all() and (exact > 0.5).mean() > 0.1


def test_a_network_whose_order_misleads_the_folding_is_kept_as_it_is():
    import torch
    from torch import nn

    from cxrclf.segment.model import inference_copy

    class NormFirst(nn.Module):
        """Registered convolution then BatchNorm, but the BatchNorm runs first: folding them would be wrong."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
            self.norm = nn.BatchNorm2d(1)

        def forward(self, x):
            return self.conv(self.norm(x))

    torch.manual_seed(0)
    model = NormFirst().eval()
    with torch.no_grad():
        model.norm.running_mean.fill_(0.7)
        model.norm.running_var.fill_(0.2)
    assert inference_copy(model, 16) is model
    sequential = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 1, 1)).eval()
    with torch.no_grad():
        sequential[1].running_mean.fill_(0.3)
        sequential[1].running_var.fill_(2.0)
    folded = inference_copy(sequential, 16)
    assert folded is not sequential and isinstance(folded[1], nn.Identity)
