from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from cxrclf import io
from cxrclf.errors import CxrclfError
from cxrclf.segment.run import KIND, SegmentConfig, SegmentRun
from cxrclf.segment.train import SegmentTrainOptions, augment_batch, train_segmenter
from tests.segment.conftest import TINY


def test_segmenter_learns_the_phantoms_lung_fields(tiny_segmenter):
    run = SegmentRun(tiny_segmenter)
    config = run.read_config()
    assert config.finished and io.output_kind(run.path) == KIND
    # measured: test Dice 0.919 (lowest 0.896), IoU 0.850 on the 8 held-out phantom patients after 8 epochs from scratch
    assert config.outcome.test["dice"] >= 0.85 and config.outcome.test["iou"] >= 0.75
    assert config.outcome.test["images"] == 8 and config.outcome.val["images"] == 6
    assert config.data.pairs == 40 and config.data.per_split["train"]["images"] == 26
    with open(run.file(SegmentRun.HELDOUT), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 14 and {r["split"] for r in rows} == {"val", "test"}
    test_dice = np.mean([float(r["dice"]) for r in rows if r["split"] == "test"])
    assert test_dice == pytest.approx(config.outcome.test["dice"], abs=1e-5)
    with open(run.file(SegmentRun.SPLIT), newline="") as handle:
        split = list(csv.DictReader(handle))
    held_out = {r["patient_id"] for r in split if r["split"] != "train"}
    assert not held_out & {r["patient_id"] for r in split if r["split"] == "train"}
    metrics = run.file(SegmentRun.METRICS).read_text().splitlines()
    assert len(metrics) == 1 + config.outcome.epochs_run and metrics[0].startswith("epoch,train_loss,val_dice,val_iou")
    assert run.file(SegmentRun.WEIGHTS).is_file() and run.file(SegmentRun.CHECKPOINT).is_file()


def test_config_round_trips_and_a_damaged_field_is_one_line(tiny_segmenter, tmp_path):
    config = SegmentRun(tiny_segmenter).read_config()
    assert SegmentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    document = config.to_dict()
    document["model"]["input_size"] = "large"
    with pytest.raises(CxrclfError, match="field model.input_size must be an integer from 32 to 2048, not 'large'"):
        SegmentConfig.from_dict(document, tmp_path / "config.json")
    with pytest.raises(CxrclfError, match="is a classification run, not a lung segmentation run"):
        SegmentConfig.from_dict({"format_version": 2, "model": {"class_names": ["a", "b"]}})


@pytest.mark.slow
def test_resume_continues_and_a_finished_folder_is_not_retrained_by_accident(phantom_nlm, tmp_path):
    out = tmp_path / "lung"
    options = dict(nlm=phantom_nlm, out=out, patience=5, **TINY)
    first = train_segmenter(SegmentTrainOptions(epochs=1, **options))
    assert first["outcome"]["epochs_run"] == 1
    with pytest.raises(CxrclfError, match="exists \\(pass --resume to continue it or --overwrite to replace it\\)"):
        train_segmenter(SegmentTrainOptions(epochs=2, **options))
    resumed = train_segmenter(SegmentTrainOptions(epochs=2, resume=True, **options))
    assert resumed["outcome"]["epochs_run"] == 2
    assert [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]
    with pytest.raises(CxrclfError, match="other training arguments"):
        train_segmenter(SegmentTrainOptions(epochs=3, resume=True, **{**options, "lr": 1e-2}))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CxrclfError, match="not made by cxrclf"):
        train_segmenter(SegmentTrainOptions(epochs=1, overwrite=True, **{**options, "out": tmp_path / "mine"}))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_augmentation_moves_image_and_mask_together():
    import torch

    image = torch.zeros(4, 1, 32, 32)
    image[:, :, 8:24, 8:24] = 1.0
    augmented, mask = augment_batch(image.clone(), image.clone(), torch.Generator().manual_seed(0))
    assert augmented.shape == mask.shape == (4, 1, 32, 32)
    # the geometry is shared: where the mask went, the bright square went (intensities differ)
    inside = mask > 0.5
    assert augmented[inside].mean() > augmented[~inside].mean() + 0.4
    assert not torch.equal(mask, image)


def test_bad_options_are_one_line(phantom_nlm, tmp_path):
    with pytest.raises(CxrclfError, match="multiple of 32"):
        train_segmenter(SegmentTrainOptions(nlm=phantom_nlm, out=tmp_path / "x", image_size=100))
    with pytest.raises(CxrclfError, match="no training masks given"):
        train_segmenter(SegmentTrainOptions(out=tmp_path / "x"))
    with pytest.raises(CxrclfError, match="no X-ray with its lung masks found"):
        train_segmenter(SegmentTrainOptions(nlm=tmp_path, out=tmp_path / "x"))
