"""The operating point train chooses on validation, stores in the run, and predict and evaluate use."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cxrclf.errors import CxrclfError
from cxrclf.runs import OperatingPoint, RunConfig, RunFolder
from cxrclf.threshold import choose_threshold

FAST = ["--model", "resnet-baseline", "--image-size", "48", "--batch-size", "16", "--lr", "2e-3", "--workers", "1"]


def test_choose_operating_point_is_youden_or_a_target_sensitivity_per_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    probabilities = rng.dirichlet(np.ones(3), 60) * 0.5 + np.eye(3)[labels] * 0.5
    point = OperatingPoint.choose(labels, probabilities, ("normal", "covid19", "other"), "youden")
    assert point.rule == "youden" and point.val_images == 60 and list(point.thresholds) == ["normal", "covid19", "other"]
    for index, name in enumerate(("normal", "covid19", "other")):
        oracle = choose_threshold(labels == index, probabilities[:, index])
        assert point.thresholds[name] == oracle["threshold"] and point.val_sensitivity[name] == oracle["val_sensitivity"]
    strict = OperatingPoint.choose(labels, probabilities, ("normal", "covid19", "other"), "Sensitivity=0.95")
    assert strict.rule == "sensitivity=0.95" and strict.target_sensitivity == 0.95
    assert all(s >= 0.95 for s in strict.val_sensitivity.values())
    absent = OperatingPoint.choose(np.zeros(10, int), rng.dirichlet(np.ones(2), 10), ("non_covid19", "covid19"), "youden")
    assert absent.thresholds["covid19"] == 0.5 and absent.val_sensitivity["covid19"] is None  # no COVID-19 in validation


@pytest.mark.parametrize(("value", "message"), [
    ("sensitivity=2", "operating point 'sensitivity=2': the target sensitivity must be a number in (0, 1], for example sensitivity=0.9"),
    ("sensitivity=", "operating point 'sensitivity=': the target sensitivity must be a number in (0, 1], for example sensitivity=0.9"),
    ("foo", "operating point must be youden, or sensitivity=S with a target sensitivity S in (0, 1] (for example sensitivity=0.9); not 'foo'"),
])
def test_bad_rules_fail_in_one_line_before_training(run_cli, preprocessed_synthetic, tmp_path, value, message):
    with pytest.raises(CxrclfError):
        OperatingPoint.parse_rule(value)
    result = run_cli("train", *FAST, "--strategy", "oversample", "--classes", "3", "--data", preprocessed_synthetic, "--out", tmp_path / "run",
                     "--epochs", "1", "--operating-point", value)
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [f"cxrclf: error: {message}"]
    assert not (tmp_path / "run").exists() and "reading" not in result.stdout


def test_train_stores_thresholds_that_evaluate_recomputes_on_validation(trained_run):
    """Oracle: Youden's J on the validation probabilities that evaluate's own inference path computes."""
    from cxrclf.evaluate.evaluation import _validation_threshold
    from cxrclf.inference import RunPredictor

    config = RunFolder(trained_run).read_config()
    point = config.operating_point
    assert point.rule == "youden" and point.val_images == 11 and list(point.thresholds) == config.class_names
    recomputed = _validation_threshold(RunPredictor(trained_run, "cpu"), config, None, 1)
    assert point.thresholds["covid19"] == pytest.approx(recomputed["threshold"], abs=1e-5)
    assert point.val_sensitivity["covid19"] == recomputed["val_sensitivity"] and point.val_specificity["covid19"] == recomputed["val_specificity"]
    assert RunConfig.from_dict(config.to_dict()) == config  # round-trips through config.json


def test_a_damaged_operating_point_is_one_line(trained_run):
    document = RunFolder(trained_run).read_config().to_dict()
    for key, value, field in (("thresholds", {"normal": 0.5}, "operating_point.thresholds"), ("thresholds", {"normal": 2, "covid19": 0.1, "other": 0.1},
                              "operating_point.thresholds"), ("rule", "median", "operating_point.rule")):
        broken = json.loads(json.dumps(document))
        broken["operating_point"][key] = value
        with pytest.raises(CxrclfError, match=f"field {field} must be"):
            RunConfig.from_dict(broken)


def test_predict_records_carry_the_thresholds_and_the_positive_classes(run_cli, trained_run, preprocessed_synthetic, tmp_path):
    fused = preprocessed_synthetic.parent / "fused"
    manifest = pd.read_csv(fused / "manifest.csv")
    files = [fused / p for p in manifest[manifest.split == "test"].path]
    thresholds = RunFolder(trained_run).read_config().operating_point.thresholds
    result = run_cli("predict", *files, "--model", trained_run, "--json", "--csv", tmp_path / "p.csv", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    records = json.loads(result.stdout)
    for record in records:
        assert record["operating_point"] == thresholds
        assert record["positive"] == [c for c in thresholds if record["probabilities"][c] >= thresholds[c]]
        assert record["predicted"] == max(record["probabilities"], key=record["probabilities"].get)  # the argmax, unchanged
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert [c for c in table.columns if c.startswith("operating_point_")] == [f"operating_point_{c}" for c in thresholds]
    assert table["operating_point_covid19"].tolist() == pytest.approx([thresholds["covid19"]] * len(files))
    assert table["positive"].tolist() == [";".join(r["positive"]) for r in records]
    human = run_cli("predict", *files[:2], "--model", trained_run, "--workers", "1")
    assert "at threshold" in human.stdout


def test_evaluate_reports_at_the_stored_thresholds(run_cli, trained_run, tmp_path):
    result = run_cli("evaluate", trained_run, "--bootstrap", "0", "--out", tmp_path / "e", "--json", "--workers", "1", "--sensitivity", "0.9")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    point = RunFolder(trained_run).read_config().operating_point
    covid = found["covid19_vs_rest"]
    assert covid["operating_point"]["source"] == "stored in the run" and covid["operating_point"]["threshold"] == point.thresholds["covid19"]
    assert covid["operating_point_recomputed"]["rule"] == "validation sensitivity >= 0.9" and "recomputed" in covid["operating_point_recomputed"]["source"]
    predictions = pd.read_csv(tmp_path / "e" / "predictions.csv")
    stored = found["operating_point"]
    assert stored["stored"] and stored["thresholds"] == point.thresholds
    for name, measured in stored["per_class"].items():
        called = predictions[f"prob_{name}"] >= point.thresholds[name]
        assert measured["tp"] == int((called & (predictions.label == name)).sum()) and measured["fp"] == int((called & (predictions.label != name)).sum())
    report = (tmp_path / "e" / "report.md").read_text()
    assert "stored in the run" in report and "## Per-class thresholds stored in the run (youden, chosen on 11 validation images)" in report
    assert f"| stored ({point.thresholds['covid19']:.4f}) | recomputed (" in report


@pytest.mark.slow
def test_a_target_sensitivity_travels_from_train_to_predict(run_cli, preprocessed_synthetic, tmp_path):
    result = run_cli("train", *FAST, "--strategy", "oversample", "--classes", "2", "--data", preprocessed_synthetic, "--out", tmp_path / "run",
                     "--epochs", "1", "--operating-point", "sensitivity=0.9")
    assert result.exit_code == 0, result.stderr
    point = RunFolder(tmp_path / "run").read_config().operating_point
    assert point.rule == "sensitivity=0.9" and list(point.thresholds) == ["non_covid19", "covid19"]
    assert all(s is None or s >= 0.9 for s in point.val_sensitivity.values())


def test_runs_without_an_operating_point_and_fold_ensembles_say_so(run_cli, trained_run, preprocessed_synthetic, tmp_path):
    from tests.guard.test_guard_in_runs import _as_version_1

    image = next((preprocessed_synthetic.parent / "fused" / "images").iterdir())
    old = tmp_path / "old"
    shutil.copytree(trained_run, old, ignore=shutil.ignore_patterns("evaluation-*", ".cxrclf", "checkpoint.pt"))
    (old / "config.json").write_text(json.dumps(_as_version_1(RunFolder(trained_run).read_config())))
    assert RunFolder(old).read_config().operating_point is None and RunFolder(old).read_config().reference is None
    record = json.loads(run_cli("predict", image, "--model", old, "--json").stdout)[0]
    assert record["operating_point"] is None and record["positive"] is None and record["predicted"]
    assert "this run stores no operating point" in run_cli("predict", image, "--model", old).stdout
    evaluated = json.loads(run_cli("evaluate", old, "--bootstrap", "0", "--out", tmp_path / "e", "--json", "--workers", "1").stdout)
    assert evaluated["operating_point"] == {"stored": False, "reason": "the run stores no operating point (trained before cxrclf stored one)"}
    assert "the run stores no operating point" in evaluated["covid19_vs_rest"]["operating_point"]["source"]  # recomputed, labelled
    parent = tmp_path / "cv"
    for fold in (0, 1):
        shutil.copytree(trained_run, parent / f"fold-{fold}", ignore=shutil.ignore_patterns("evaluation-*", ".cxrclf", "checkpoint.pt"))
    record = json.loads(run_cli("predict", image, "--model", parent, "--json").stdout)[0]
    assert record["operating_point"] is None and record["positive"] is None
    assert "a fold ensemble has no operating point" in run_cli("predict", image, "--model", parent).stdout
