"""The training skeleton's pieces that need no training: the progress a checkpoint keeps, the best epoch's row, the status."""

from __future__ import annotations

import json
import math

import pytest

from cxrclf.errors import CxrclfError
from cxrclf.fit import Progress
from cxrclf.runs import EpochScores, Fields, Outcome, Status

# checkpoint.pt's "state", as the classifier and the segmenter wrote it before they shared a skeleton
CLASSIFIER_STATE = '{"epoch": 2, "best_score": 0.5, "best_loss": Infinity, "best_epoch": 2, "wait": 0, "history": [{"epoch": 1}, {"epoch": 2}]}'
SEGMENTER_STATE = '{"epoch": 3, "best_dice": 0.91, "best_epoch": 1, "wait": 2, "history": []}'


def test_progress_reads_and_writes_both_models_checkpoints_unchanged():
    classifier = Progress.from_json(CLASSIFIER_STATE, {"best_score": math.inf, "best_loss": math.inf})
    assert (classifier.epoch, classifier.best_epoch, classifier.wait, len(classifier.history)) == (2, 2, 0, 2)
    assert classifier.bests == {"best_score": 0.5, "best_loss": math.inf}
    assert classifier.to_json() == CLASSIFIER_STATE
    segmenter = Progress.from_json(SEGMENTER_STATE, {"best_dice": -1.0})
    assert (segmenter.epoch, segmenter.bests, segmenter.wait) == (3, {"best_dice": 0.91}, 2)
    assert segmenter.to_json() == SEGMENTER_STATE


def test_progress_refuses_another_models_checkpoint():
    with pytest.raises(TypeError):  # the skeleton turns it into "checkpoint.pt does not fit this run"
        Progress.from_json(SEGMENTER_STATE, {"best_score": math.inf, "best_loss": math.inf})


ROW = {"epoch": 4, "train_loss": 0.61, "val_loss": 0.72, "val_accuracy": 0.8, "val_auc": "", "val_recall_normal": 1.0, "val_recall_covid19": "",
       "val_recall_other": 0.5, "images_per_s": 120.5, "seconds": 1.2, "source_loss": 0.9, "source_accuracy": 0.55, "best": 1}


def test_the_best_row_is_typed_and_written_back_as_it_was():
    best = EpochScores.from_row(ROW)
    assert best.epoch == 4 and best.val_auc is None and best.val_recall == {"normal": 1.0, "covid19": None, "other": 0.5}
    assert best.notes == {"source_loss": 0.9, "source_accuracy": 0.55}
    assert list(best.to_dict().items()) == list(ROW.items())
    outcome = Outcome(epochs_run=5, best_epoch=4, best=best)
    document = json.loads(json.dumps(outcome.to_dict()))
    assert document["best"] == ROW and list(document) == ["epochs_run", "stopped_early", "best_epoch", "best", "train_class_counts", "class_weights"]
    assert Outcome.parse(Fields(document, "outcome.", None)) == outcome


def test_a_loss_that_was_not_a_number_reads_as_nan_and_writes_as_null():
    best = EpochScores.from_row(ROW | {"val_loss": math.nan})
    assert math.isnan(best.val_loss)
    assert Outcome(best=best).to_dict()["best"]["val_loss"] is None
    assert math.isnan(EpochScores.parse(Fields(ROW | {"val_loss": None}, "", None)).val_loss)


def test_a_damaged_best_row_is_one_line_naming_the_field():
    with pytest.raises(CxrclfError, match=r"field outcome\.best\.val_accuracy must be a number or null, not 'high'"):
        Outcome.parse(Fields({"best": ROW | {"val_accuracy": "high"}}, "outcome.", None))


def test_status_is_an_enum_written_as_its_string():
    assert Status.parse(Fields({"status": "finished"}, "", None)) is Status.finished
    assert Status.parse(Fields({}, "", None)) is Status.training  # a config without it was still training
    assert json.dumps({"status": Status.finished.value}) == '{"status": "finished"}' and str(Status.training) == "training"
    with pytest.raises(CxrclfError, match="field status must be one of finished, training, not 'done'"):
        Status.parse(Fields({"status": "done"}, "", None))
