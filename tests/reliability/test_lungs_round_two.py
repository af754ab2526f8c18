"""Issue 22, the lung segmenter's part: masks without a lung, and the messages of `cxrclf segment` about its model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cxrclf.data import synthetic
from cxrclf.labels import NORMAL, TUBERCULOSIS
from cxrclf.segment.run import LUNG_MODEL_ENV


@pytest.fixture(scope="module")
def nlm_with_masks(tmp_path_factory):
    root = tmp_path_factory.mktemp("nlm-empty")
    synthetic.write_nlm(root, {NORMAL: 4, TUBERCULOSIS: 4}, np.random.default_rng(2), size=64, set_name="montgomery", masks=True)
    return root


def _blank(masks: list) -> None:
    for path in masks:
        synthetic._png(path, np.zeros((64, 64), np.uint8))


TRAIN = ["--encoder", "mobilenetv3_small_050", "--no-pretrained", "--image-size", "64", "--epochs", "1", "--workers", "1"]


@pytest.mark.slow
def test_training_on_masks_without_a_lung_fails_in_one_line_naming_the_files(run_cli, nlm_with_masks, tmp_path):
    nlm = tmp_path / "nlm"
    shutil.copytree(nlm_with_masks, nlm)
    masks = sorted((nlm / "MontgomerySet" / "ManualMask").rglob("*.png"))
    _blank(masks)
    result = run_cli("segment", "train", "--nlm", nlm, "--out", tmp_path / "lung", *TRAIN)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("cxrclf: error:")]  # after the progress lines
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0])
    assert "lung mask holds no lung" in errors[0] and "so do the masks of 7 more of the 8 X-rays" in errors[0]
    assert errors[0].startswith(f"cxrclf: error: {masks[0].parent.parent / 'leftMask' / 'MCUCXR_0001_0.png'}: ")
    assert not (tmp_path / "lung" / "model.safetensors").exists()


@pytest.mark.slow
def test_one_empty_mask_among_good_ones_is_named_alone(run_cli, nlm_with_masks, tmp_path):
    nlm = tmp_path / "nlm"
    shutil.copytree(nlm_with_masks, nlm)
    pair = [nlm / "MontgomerySet" / "ManualMask" / side / "MCUCXR_0003_0.png" for side in ("leftMask", "rightMask")]
    _blank(pair)
    result = run_cli("segment", "train", "--nlm", nlm, "--out", tmp_path / "lung", *TRAIN)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (f"cxrclf: error: {pair[0]}: lung mask holds no lung (no pixel above half its range): "
                                                      "masks must mark the lungs white on black")


@pytest.fixture
def chest(tmp_path):
    path = tmp_path / "chest.png"
    synthetic._png(path, synthetic.to_uint8(synthetic.phantom(NORMAL, np.random.default_rng(3), 128).image))
    return path


def test_segment_without_a_model_uses_the_builtin(run_cli, chest, tmp_path, monkeypatch):
    monkeypatch.delenv(LUNG_MODEL_ENV, raising=False)
    result = run_cli("segment", chest, "--out", tmp_path / "masks", "--json")
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)[0]
    assert row["warning"] is None and 0.15 < row["lung_area"] < 0.45


def test_segment_messages_name_its_own_option_or_the_variable(run_cli, chest, tmp_path, monkeypatch, trained_run):
    missing = run_cli("segment", chest, "--model", tmp_path / "nowhere", "--out", tmp_path / "m")
    assert missing.exit_code == 2 and missing.stderr.strip() == f"cxrclf: error: {tmp_path / 'nowhere'}: lung segmentation run not found"
    classifier = run_cli("segment", chest, "--model", trained_run, "--out", tmp_path / "m")
    assert classifier.exit_code == 2 and "is a classification run, not a lung segmentation run" in classifier.stderr
    monkeypatch.setenv(LUNG_MODEL_ENV, str(tmp_path / "gone"))
    unset = run_cli("segment", chest, "--out", tmp_path / "m")
    assert unset.exit_code == 2 and f"{LUNG_MODEL_ENV}=" in unset.stderr and "gone" in unset.stderr
    for result in (missing, classifier, unset):
        assert "--lung-model" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
