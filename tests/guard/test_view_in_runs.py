"""Views inside runs: train records them, predict and evaluate hold films against them, evaluate reports per view."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cxrclf.data import synthetic
from cxrclf.runs import RunFolder

AP_WARNING = "AP view (DICOM ViewPosition AP); this run saw PA films only"


@pytest.fixture(scope="module")
def both_views(synthetic_sources, tmp_path_factory):
    """Synthetic data fused with ``--views PA,AP`` and a one-epoch run trained on it (its training rows hold AP films)."""
    from cxrclf.data.fuse import FuseOptions, fuse
    from cxrclf.prepare import preprocess_folder
    from cxrclf.preprocess.params import PreprocessParams
    from cxrclf.train.loop import TrainOptions, train

    root = tmp_path_factory.mktemp("views")
    fuse(FuseOptions(cohen=synthetic_sources["cohen"], rsna=synthetic_sources["rsna"], nlm=synthetic_sources["nlm"], views=("PA", "AP"), workers=1),
         root / "fused")
    preprocess_folder(root / "fused", root / "prep", PreprocessParams(size=64, work_size=128), workers=1)
    train(TrainOptions(model="resnet-baseline", strategy="oversample", classes=2, data=root / "prep", out=root / "run", epochs=1, patience=1, batch_size=16,
                       image_size=48, threads=1))
    return root


@pytest.fixture(scope="module")
def ap_dicom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ap")
    image = synthetic.to_uint8(synthetic.phantom("normal", np.random.default_rng(5), 128).image)
    synthetic.write_dicom(folder / "ap.dcm", image, patient_id="p", view="AP", compression="none")
    synthetic.write_dicom(folder / "pa.dcm", image, patient_id="p", view="PA", compression="none")
    return folder


def test_train_records_the_views_of_its_training_rows(trained_run, preprocessed_synthetic, both_views):
    pa_only = RunFolder(trained_run).read_config().data
    frame = pd.read_csv(preprocessed_synthetic / "manifest.csv", dtype=str, keep_default_na=False)
    assert pa_only.views == tuple(sorted(set(frame.loc[frame.split == "train", "view"]))) == ("PA",)
    mixed = RunFolder(both_views / "run").read_config().data
    train_rows = pd.read_csv(both_views / "prep" / "manifest.csv", dtype=str, keep_default_na=False).query("split == 'train'")
    assert (train_rows.view == "AP").any() and mixed.views == ("AP", "PA") == mixed.trained_views
    assert json.loads((both_views / "run" / "config.json").read_text())["data"]["views"] == ["AP", "PA"]
    # fuse keeps each image's view (RSNA's from the DICOM header, PA for NLM and Cohen's PA rows) and counts them
    fused = pd.read_csv(both_views / "fused" / "manifest.csv", dtype=str, keep_default_na=False)
    report = json.loads((both_views / "fused" / "fuse_report.json").read_text())
    assert {view: counts["total"] for view, counts in report["view_x_finding"].items()} == fused.view.value_counts().to_dict()
    assert set(fused.loc[fused.source == "montgomery", "view"]) == {"PA"} and (fused.loc[fused.source == "rsna", "view"] == "AP").sum() == 2


def test_predict_flags_an_ap_dicom_for_a_pa_run_only(run_cli, trained_run, both_views, ap_dicom, tmp_path):
    pa_run = json.loads(run_cli("predict", ap_dicom, "--model", trained_run, "--json", "--workers", "1").stdout)
    answers = {a["file"].split("/")[-1]: a for a in pa_run}
    assert AP_WARNING in answers["ap.dcm"]["warnings"] and answers["ap.dcm"]["in_distribution"] is False
    assert not any("view" in w for w in answers["pa.dcm"]["warnings"])
    mixed = json.loads(run_cli("predict", ap_dicom / "ap.dcm", "--model", both_views / "run", "--json", "--workers", "1").stdout)[0]
    assert not any("view" in w or "film" in w for w in mixed["warnings"])
    # a run from before views were recorded is taken as PA, cxrclf's default
    old = tmp_path / "old"
    shutil.copytree(trained_run, old, ignore=shutil.ignore_patterns("evaluation-*", ".cxrclf"))
    config = json.loads((old / "config.json").read_text())
    del config["data"]["views"]
    (old / "config.json").write_text(json.dumps(config))
    assert RunFolder(old).read_config().data.trained_views == ("PA",)
    assert AP_WARNING in json.loads(run_cli("predict", ap_dicom / "ap.dcm", "--model", old, "--json", "--workers", "1").stdout)[0]["warnings"]


def test_evaluate_reports_metrics_and_flags_per_view(run_cli, trained_run, both_views, tmp_path):
    result = run_cli("evaluate", trained_run, "--data", both_views / "fused", "--split", "all", "--bootstrap", "0", "--out", tmp_path / "e",
                     "--json", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    predictions = pd.read_csv(tmp_path / "e" / "predictions.csv", dtype={"view": str}, keep_default_na=False)
    per_view = found["per_view"]
    assert set(per_view) == {"AP", "PA"} and found["trained_views"] == ["PA"]
    for view, v in per_view.items():
        rows = predictions[predictions.view == view]
        assert v["n"] == len(rows) and v["flagged"] == int(rows.flagged.sum()) and v["by_input_checks"] == int((rows.input_warnings != "").sum())
        assert v["accuracy"] == pytest.approx((rows.label == rows.predicted).mean())
        assert v["predicted_share"]["covid19"] == pytest.approx((rows.predicted == "covid19").mean())
    assert sum(v["n"] for v in per_view.values()) == found["n_images"]
    report = (tmp_path / "e" / "report.md").read_text()
    assert "## Per view" in report and "This run was trained on PA films." in report
    ap = per_view["AP"]
    assert f"| AP | {ap['n']} | " in report and report.index("## Per source") < report.index("## Per view")
