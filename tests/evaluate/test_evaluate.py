from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrclf.evaluate import evaluation


def test_evaluate_writes_report_metrics_and_figures(run_cli, trained_run, preprocessed_synthetic, tmp_path):
    out = tmp_path / "eval"
    result = run_cli("evaluate", trained_run, "--bootstrap", "200", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "COVID-19 vs rest" in result.stdout
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns) == ["image_id", "patient_id", "source", "view", "finding", "label", "prob_normal", "prob_covid19", "prob_other", "predicted",
                                         "ood_score", "input_warnings", "flagged"]
    test_rows = pd.read_csv(preprocessed_synthetic / "manifest.csv").query("split == 'test'")
    assert sorted(predictions.image_id) == sorted(test_rows.image_id)
    assert np.allclose(predictions[["prob_normal", "prob_covid19", "prob_other"]].sum(axis=1), 1.0, atol=1e-5)
    found = json.loads((out / "metrics.json").read_text())
    assert found["n_images"] == len(test_rows) and found["bootstrap"]["unit"] == "patient"
    assert found["overall"]["accuracy"] == pytest.approx((predictions.label == predictions.predicted).mean())
    assert "operating_point" in found["covid19_vs_rest"]
    for name in ("confusion_matrix.png", "roc.png", "reliability.png", "training_curves.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size == (600, 500)
    report = (out / "report.md").read_text()
    assert "## Per source" in report and "![ROC](roc.png)" in report and "Clopper-Pearson" in report
    # the shortcut and the guard come before the pooled headline
    assert report.index("## Within each source") < report.index("## Against a score that knows only the source") < report.index("## Headline")
    assert "## Source probe" in report and "## Out-of-distribution guard" in report
    guard = found["guard"]
    assert guard["has_guard"] and guard["images"] == len(test_rows) and guard["flagged"] == int(predictions.flagged.sum())
    assert sum(v["images"] for v in guard["per_source"].values()) == len(test_rows)
    within = {(r["source"], r["class"]): r for r in found["shortcut"]["within_source"]}
    assert set(s for s, _ in within) == set(test_rows.source)
    assert found["shortcut"]["probe"]["chance"] == pytest.approx(1 / test_rows.source.nunique())


def test_threshold_is_chosen_on_validation_labels_only(trained_run, preprocessed_synthetic, monkeypatch):
    seen = []
    original = evaluation.operating.choose_threshold

    def spy(positive, score, sensitivity=None):
        seen.append(len(positive))
        return original(positive, score, sensitivity)

    monkeypatch.setattr(evaluation.operating, "choose_threshold", spy)
    evaluation.evaluate(evaluation.EvaluateOptions(run=trained_run, bootstrap=0, workers=1, overwrite=True))
    assert seen == []  # the run's stored operating point, chosen by train on validation: nothing is chosen here
    evaluation.evaluate(evaluation.EvaluateOptions(run=trained_run, bootstrap=0, workers=1, overwrite=True, sensitivity=0.9))
    manifest = pd.read_csv(preprocessed_synthetic / "manifest.csv")
    assert seen == [int((manifest.split == "val").sum())]  # a recomputed one, beside it, on validation only


def test_external_fused_folder_is_preprocessed_like_training(trained_run, preprocessed_synthetic, tmp_path):
    own = evaluation.evaluate(evaluation.EvaluateOptions(run=trained_run, bootstrap=0, workers=1, out=tmp_path / "own"))
    fused = preprocessed_synthetic.parent / "fused"
    external = evaluation.evaluate(evaluation.EvaluateOptions(run=trained_run, data=fused, bootstrap=0, workers=2, out=tmp_path / "ext"))
    assert external.external is True and own.external is False and external.out == str(tmp_path / "ext")
    a = pd.read_csv(tmp_path / "own" / "predictions.csv").set_index("image_id").sort_index()
    b = pd.read_csv(tmp_path / "ext" / "predictions.csv").set_index("image_id").sort_index()
    probabilities = [c for c in a.columns if c.startswith("prob_")]
    assert np.allclose(a[probabilities], b[probabilities], atol=1e-5)
    assert own.metrics.point == external.metrics.point


def test_scenario_table(run_cli, trained_run, tmp_path):
    result = run_cli("evaluate", trained_run, trained_run, "--table", "--bootstrap", "50", "--out", tmp_path, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert "| model | scenario | accuracy | precision | recall | auc | specificity | f1 |" in result.stdout
    assert result.stdout.count("| RM3 |") == 2
    table = pd.read_csv(tmp_path / "scenario_table.csv")
    assert list(table.scenario) == ["RM3", "RM3"] and table.best.sum() == 1
    csv_result = run_cli("evaluate", trained_run, "--table", "--format", "csv", "--bootstrap", "0", "--overwrite")
    assert csv_result.stdout.startswith("model,scenario,run,accuracy")


def test_bad_inputs(run_cli, trained_run, preprocessed_synthetic, tmp_path):
    empty = tmp_path / "empty-run"
    shutil.copytree(trained_run, empty, ignore=shutil.ignore_patterns("model.safetensors", "evaluation-*", "checkpoint.pt"))
    result = run_cli("evaluate", empty)
    assert result.exit_code == 2 and "no model.safetensors" in result.stderr
    no_test = tmp_path / "no-test"
    shutil.copytree(preprocessed_synthetic, no_test)
    manifest = pd.read_csv(no_test / "manifest.csv")
    manifest[manifest.split != "test"].to_csv(no_test / "manifest.csv", index=False)
    result = run_cli("evaluate", trained_run, "--data", no_test)
    assert result.exit_code == 2 and "test split is empty" in result.stderr
    manifest.loc[0, "finding"] = "effusion"
    manifest.to_csv(no_test / "manifest.csv", index=False)
    result = run_cli("evaluate", trained_run, "--data", no_test)
    assert result.exit_code == 2 and "unknown finding(s) effusion" in result.stderr
    other_params = tmp_path / "other-params"
    shutil.copytree(preprocessed_synthetic, other_params)
    document = json.loads((other_params / "preprocess.json").read_text())
    document["params"]["size"] = 32
    (other_params / "preprocess.json").write_text(json.dumps(document))
    result = run_cli("evaluate", trained_run, "--data", other_params)
    assert result.exit_code == 2 and "other parameters than the run (size)" in result.stderr


def test_changed_training_data_and_foreign_out_folder_are_refused(run_cli, trained_run, preprocessed_synthetic, tmp_path):
    config = json.loads((trained_run / "config.json").read_text())
    moved = tmp_path / "run"
    shutil.copytree(trained_run, moved, ignore=shutil.ignore_patterns("evaluation-*"))
    changed = tmp_path / "prep"
    shutil.copytree(preprocessed_synthetic, changed)
    manifest = pd.read_csv(changed / "manifest.csv")
    manifest["split"] = manifest["split"].replace({"test": "train", "train": "test"})  # as after a re-fuse with another seed
    manifest.to_csv(changed / "manifest.csv", index=False)
    config["data"]["folder"] = str(changed)
    (moved / "config.json").write_text(json.dumps(config))
    result = run_cli("evaluate", moved)
    assert result.exit_code == 2 and "changed since training" in result.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = run_cli("evaluate", trained_run, "--out", mine, "--bootstrap", "0")
    assert refused.exit_code == 2 and "--overwrite" in refused.stderr and (mine / "notes.txt").exists()
    refused = run_cli("evaluate", trained_run, "--out", mine, "--bootstrap", "0", "--overwrite")
    assert refused.exit_code == 2 and "not made by cxrclf" in refused.stderr and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_an_unusable_image_is_skipped_and_reported_not_fatal(run_cli, trained_run, preprocessed_synthetic, tmp_path):
    data = tmp_path / "prep"
    shutil.copytree(preprocessed_synthetic, data)
    manifest = pd.read_csv(data / "manifest.csv")
    broken = manifest[manifest.split == "test"].iloc[0]
    (data / broken.path).write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    result = run_cli("evaluate", trained_run, "--data", data, "--bootstrap", "0", "--out", tmp_path / "e", "--json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert [s["image_id"] for s in found["skipped_images"]] == [broken.image_id]
    assert found["n_images"] == int((manifest.split == "test").sum()) - 1
    assert "1 image(s) could not be used" in (tmp_path / "e" / "report.md").read_text()


def test_the_typed_result_is_metrics_json_and_reads_back_old_files(trained_run, tmp_path):
    from cxrclf import io
    from cxrclf.errors import CxrclfError
    from cxrclf.evaluate.report import markdown
    from cxrclf.evaluate.result import Bootstrap, Evaluation

    result = evaluation.evaluate(evaluation.EvaluateOptions(run=trained_run, bootstrap=20, workers=1, out=tmp_path / "e", sensitivity=0.9))
    written = (tmp_path / "e" / "metrics.json").read_text()
    assert io.json_text(result.to_dict()) == written and result.out == str(tmp_path / "e")
    assert list(json.loads(written)) == ["run", "model", "requested_model", "scenario", "data", "split", "left_out_sources", "external", "tta", "n_images", "n_patients",
                                         "classes", "overall", "covid19_vs_rest", "point", "intervals", "bootstrap", "calibration", "per_source",
                                         "skipped_images", "operating_point", "shift", "shortcut", "guard", "per_view", "trained_views"]
    assert list(json.loads(written)["covid19_vs_rest"]) == ["at_argmax", "operating_point", "clopper_pearson", "operating_point_recomputed"]
    assert result.metrics.bootstrap == Bootstrap(20, 0) and result.metrics.interval("macro_auc") == json.loads(written)["intervals"]["macro_auc"]
    again = Evaluation.read(tmp_path / "e")
    assert io.json_text(again.to_dict()) == written and again.out == result.out
    figures = {"ROC": "roc.png"}
    assert markdown(again, figures) == markdown(result, figures)  # the report from the file is the report from the run
    # a metrics.json from before the shortcut, the guard, the shift test, the views and the stored thresholds
    old = {k: v for k, v in json.loads(written).items() if k not in ("shortcut", "guard", "shift", "per_view", "trained_views", "skipped_images", "tta",
                                                                     "operating_point", "requested_model", "bootstrap", "intervals", "left_out_sources")}
    legacy = Evaluation.from_dict(old)
    assert (legacy.shortcut, legacy.guard, legacy.shift, legacy.per_view, legacy.operating_point, legacy.metrics.bootstrap) == (None,) * 6
    assert legacy.tta == 1 and legacy.trained_views == [] and legacy.left_out_sources == [] and legacy.metrics.point == result.metrics.point and legacy.metrics.interval("accuracy") is None
    assert "## Out-of-distribution guard" not in markdown(legacy, figures) and "## Headline" in markdown(legacy, figures)
    with pytest.raises(CxrclfError, match="lacks n_images, n_patients, point"):
        Evaluation.from_dict({"data": "x", "split": "test"})


def test_a_source_left_out_of_training_is_out_of_the_runs_val_split_and_in_its_test_split(run_cli, preprocessed_synthetic, tmp_path):
    """The run's own train and val splits are what it fitted and selected on; the test split scores the left-out
    source as the unseen hospital it is."""
    from cxrclf.train.loop import TrainOptions, train

    run = tmp_path / "without-montgomery"
    train(TrainOptions(model="resnet-baseline", strategy="oversample", classes=3, data=preprocessed_synthetic, out=run, epochs=1, patience=1,
                       batch_size=16, lr=2e-3, image_size=48, threads=1, exclude_sources=("montgomery",)))
    manifest = pd.read_csv(preprocessed_synthetic / "manifest.csv")
    assert {"montgomery"} < set(manifest.query("split == 'val'").source) and "montgomery" in set(manifest.query("split == 'test'").source)
    for split, expected in (("val", manifest.query("split == 'val' and source != 'montgomery'")), ("test", manifest.query("split == 'test'"))):
        out = tmp_path / f"eval-{split}"
        result = run_cli("evaluate", run, "--split", split, "--bootstrap", "50", "--out", out)
        assert result.exit_code == 0, result.stderr
        assert sorted(pd.read_csv(out / "predictions.csv").image_id) == sorted(expected.image_id), split
        left_out = json.loads((out / "metrics.json").read_text())["left_out_sources"]
        assert left_out == (["montgomery"] if split == "val" else [])
        assert ("without montgomery (left out of the run's training)" in (out / "report.md").read_text()) == (split == "val")
