"""The guard inside runs: fitted by train, used by predict, evaluate and explain; old runs still load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cxrclf.data import synthetic
from cxrclf.runs import RunConfig, RunFolder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """In-distribution phantoms (the run's own test images) and images from layouts the run never saw."""
    import cv2
    from skimage import data

    folder = tmp_path_factory.mktemp("ood")
    rng = np.random.default_rng(11)
    for index in range(6):
        synthetic._png(folder / "in" / f"phantom-{index}.png", synthetic.to_uint8(synthetic.phantom("normal", rng, 128).image))
    camera = cv2.resize(data.camera(), (128, 128), interpolation=cv2.INTER_AREA)
    synthetic._png(folder / "out" / "camera.png", camera)                                     # a grey photograph
    synthetic._png(folder / "out" / "astronaut.png", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))  # colour: input checks
    rotated = np.rot90(synthetic.to_uint8(synthetic.phantom("normal", rng, 128).image)).copy()
    synthetic._png(folder / "out" / "rotated-phantom.png", rotated)
    synthetic._png(folder / "out" / "noise.png", rng.integers(0, 256, (128, 128), dtype=np.uint8))
    synthetic.write_dicom(folder / "out" / "ct.dcm", synthetic.to_uint8(synthetic.phantom("normal", rng, 128).image), patient_id="ct", modality="CT")
    return folder


def test_train_fits_the_guard_and_records_it(trained_run):
    config = RunFolder(trained_run).read_config()
    guard = config.guard
    assert guard.kind == "gaussian" and guard.quantile == 0.95 and (trained_run / "guard.safetensors").is_file()
    assert 0.0 <= guard.val_flag_rate <= 0.1 and guard.train_images == sum(config.outcome.train_class_counts.values())
    from cxrclf.guard.detector import load_detector

    assert load_detector(trained_run / "guard.safetensors").threshold == pytest.approx(guard.threshold)
    # the split-conformal rule, recorded in both places; the threshold is a validation score, recomputable from the reference
    from cxrclf.guard.detector import conformal_rank, threshold_from
    from cxrclf.guard.shift import Reference

    assert guard.rule == "conformal" == load_detector(trained_run / "guard.safetensors").rule
    assert RunFolder(trained_run).read_config().to_dict()["guard"]["rule"] == "conformal"
    scores = load_detector(trained_run / "guard.safetensors").score(Reference.load(trained_run / "reference.safetensors").features)
    assert len(scores) == guard.val_images and guard.threshold == pytest.approx(threshold_from(scores), rel=1e-3)  # float16 features
    rank = min(conformal_rank(guard.val_images, 0.95), guard.val_images)
    assert guard.val_flag_rate == pytest.approx(1 - rank / guard.val_images)


def test_a_guard_from_before_the_rule_was_recorded_still_loads(trained_run, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from cxrclf.errors import CxrclfError
    from cxrclf.inference import RunPredictor

    old = tmp_path / "old-run"
    shutil.copytree(trained_run, old, ignore=shutil.ignore_patterns("evaluation-*", ".cxrclf"))
    document = json.loads((old / "config.json").read_text())
    del document["guard"]["rule"]
    (old / "config.json").write_text(json.dumps(document))
    with pytest.raises(CxrclfError, match="its threshold rule is conformal, config.json says quantile"):
        RunPredictor(old, "cpu")
    with safe_open(str(old / "guard.safetensors"), framework="numpy") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != "rule"}
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    save_file(tensors, str(old / "guard.safetensors"), metadata=metadata)
    predictor = RunPredictor(old, "cpu")
    assert predictor.guard.rule == "quantile" == predictor.config.guard.rule
    assert predictor.guard_threshold == pytest.approx(document["guard"]["threshold"])
    assert predictor.config.to_dict()["guard"] == document["guard"]  # written back unchanged, without a rule


def test_unseen_layouts_are_flagged_and_phantoms_are_not(run_cli, trained_run, images, tmp_path):
    result = run_cli("predict", images / "in", images / "out", "--model", trained_run, "--json", "--csv", tmp_path / "p.csv", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    answers = {a["file"].split("/")[-1]: a for a in json.loads(result.stdout)}
    inside = [a for name, a in answers.items() if name.startswith("phantom")]
    assert sum(a["in_distribution"] is True for a in inside) >= 5  # the threshold allows about 5% false alarms
    for name in ("camera.png", "astronaut.png", "rotated-phantom.png", "noise.png", "ct.dcm"):
        assert answers[name]["in_distribution"] is False and answers[name]["warnings"], name
    assert any("colour" in w for w in answers["astronaut.png"]["warnings"])
    assert any("CT" in w for w in answers["ct.dcm"]["warnings"])
    assert any("out of distribution" in w for w in answers["camera.png"]["warnings"])
    assert all(isinstance(a["ood_score"], float) for a in answers.values())
    table = pd.read_csv(tmp_path / "p.csv")
    assert {"ood_score", "in_distribution", "warnings"} <= set(table.columns)
    assert table.set_index(table.file.str.split("/").str[-1]).loc["camera.png", "in_distribution"] == False  # noqa: E712
    # one warning line per flagged image in the human output, and withholding on request
    human = run_cli("predict", images / "out", "--model", trained_run, "--workers", "1", "--withhold-flagged")
    assert human.exit_code == 0
    assert sum(line.startswith("cxrclf: warning:") for line in human.stderr.splitlines()) >= 5
    withheld = run_cli("predict", images / "out" / "camera.png", "--model", trained_run, "--json", "--withhold-flagged")
    answer = json.loads(withheld.stdout)[0]
    assert answer["predicted"] is None and answer["withheld"] is True and answer["probabilities"]


def _as_version_1(config: RunConfig) -> dict:
    """config.json as cxrclf 0.1 wrote it (flat), from a current config."""
    return {
        "format_version": 1, "model": config.model.name, "scenario": config.scenario, "label_scheme": "3-class", "classes": config.model.classes,
        "class_names": list(config.model.class_names), "input_size": config.model.input_size, "in_chans": config.model.in_chans,
        "mean": list(config.model.mean), "std": list(config.model.std), "dropout": config.model.dropout, "trainable_blocks": config.model.trainable_blocks,
        "pretrained_source": config.model.pretrained_source, "preprocess": config.preprocess.to_dict(),
        "data": {"folder": config.data.folder, "manifest_sha256": config.data.manifest_sha256, "fold": None},
        "train": {"model": config.model.name, "strategy": "oversample", "classes": 3, "epochs": 6, "batch_size": 16, "lr": 0.002, "patience": 6,
                  "seed": 0, "pretrained": True, "weights": None, "select_by": "loss", "class_constants": {}, "device": "auto", "threads": 1, "tensorboard": False},
        "train_class_counts": config.outcome.train_class_counts, "class_weights": None, "versions": {}, "status": "finished",
        "epochs_run": config.outcome.epochs_run, "stopped_early": False, "best_epoch": config.outcome.best_epoch, "select_by": "loss", "best": config.outcome.best.to_dict(),
    }


def test_a_run_from_before_the_guard_still_loads_and_says_so(run_cli, trained_run, images, tmp_path):
    old = tmp_path / "old-run"
    shutil.copytree(trained_run, old, ignore=shutil.ignore_patterns("evaluation-*", "guard.safetensors", ".cxrclf"))
    current = RunFolder(trained_run).read_config()
    (old / "config.json").write_text(json.dumps(_as_version_1(current)))
    loaded = RunFolder(old).read_config()
    assert loaded.guard is None and loaded.finished and loaded.model == current.model and loaded.preprocess == current.preprocess
    assert loaded.outcome.best == current.outcome.best and loaded.outcome.best.epoch == current.outcome.best_epoch
    new = run_cli("predict", images / "in" / "phantom-0.png", "--model", trained_run, "--json")
    result = run_cli("predict", images / "in" / "phantom-0.png", "--model", old, "--json")
    assert result.exit_code == 0, result.stderr
    before, after = json.loads(result.stdout)[0], json.loads(new.stdout)[0]
    assert before["ood_score"] is None and before["in_distribution"] is None
    assert before["probabilities"] == pytest.approx(after["probabilities"], abs=1e-6)
    human = run_cli("predict", images / "in" / "phantom-0.png", "--model", old)
    assert "carries no out-of-distribution guard" in human.stdout
    # the input checks still run without a guard
    photo = json.loads(run_cli("predict", images / "out" / "astronaut.png", "--model", old, "--json").stdout)[0]
    assert photo["in_distribution"] is False


def test_evaluate_reports_flag_rates_and_metrics_on_passing_images(run_cli, trained_run, tmp_path):
    result = run_cli("evaluate", trained_run, "--bootstrap", "0", "--out", tmp_path / "e", "--json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    predictions = pd.read_csv(tmp_path / "e" / "predictions.csv")
    guard = found["guard"]
    assert guard["flagged"] == int(predictions.flagged.sum()) and guard["coverage"] == pytest.approx(1 - predictions.flagged.mean())
    assert guard["passing"]["n_images"] == int((~predictions.flagged).sum())
    threshold = RunFolder(trained_run).read_config().guard.threshold
    assert ((predictions.ood_score > threshold) == predictions.flagged).all()  # phantoms raise no input warning
