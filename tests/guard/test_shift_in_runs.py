"""The batch shift test inside runs: train stores the reference, `shift`, predict and evaluate test against it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cxrclf.guard.shift import Reference
from cxrclf.runs import RunFolder

P_MIN = 1 / 1001  # the smallest p-value 1000 permutations give


def _fused_files(preprocessed_synthetic, split: str) -> list:
    fused = preprocessed_synthetic.parent / "fused"
    manifest = pd.read_csv(fused / "manifest.csv")
    return [fused / path for path in manifest[manifest.split == split].path]


@pytest.fixture(scope="module")
def inverted(preprocessed_synthetic, tmp_path_factory):
    """25 training phantoms with their grey levels inverted: a batch unlike the validation images."""
    import cv2

    folder = tmp_path_factory.mktemp("inverted")
    for path in _fused_files(preprocessed_synthetic, "train")[:25]:
        cv2.imwrite(str(folder / path.name), 255 - cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    return folder


def test_train_stores_the_validation_features_and_sources(trained_run, preprocessed_synthetic):
    import cv2

    from cxrclf.inference import RunPredictor

    config = RunFolder(trained_run).read_config()
    manifest = pd.read_csv(preprocessed_synthetic / "manifest.csv")
    val = manifest[manifest.split == "val"]
    assert config.reference.images == len(val) == 11 and config.reference.split == "val"
    assert config.reference.sources == val.source.value_counts().sort_index().to_dict()
    reference = Reference.load(trained_run / "reference.safetensors")
    assert list(reference.sources) == list(val.source) and reference.feature_dim == config.reference.feature_dim == config.guard.feature_dim
    predictor = RunPredictor(trained_run, "cpu")  # the features inference computes for the same images
    planes = np.stack([predictor.plane_from_preprocessed(cv2.imread(str(preprocessed_synthetic / p), cv2.IMREAD_GRAYSCALE)) for p in val.path])
    _, features, _ = predictor.assess(planes)
    assert np.allclose(reference.features, features, rtol=2e-3, atol=2e-3)  # float16 in the file


def test_shift_command_end_to_end(run_cli, trained_run, preprocessed_synthetic, inverted):
    config = RunFolder(trained_run).read_config()
    test = _fused_files(preprocessed_synthetic, "test")
    result = run_cli("shift", *test, "--model", trained_run, "--json", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["images"] == len(test) == 8 and found["reference_images"] == 11 and found["reference_sources"] == config.reference.sources
    assert found["statistic"] == "classifier_auc" and found["permutations"] == 1000 and found["unreadable"] == []
    assert not found["shifted"] and found["p_value"] > 0.05  # unseen phantoms of the training sources
    assert json.loads(run_cli("shift", *test, "--model", trained_run, "--json", "--workers", "1").stdout) == found  # seeded
    moved = json.loads(run_cli("shift", inverted, "--model", trained_run, "--json", "--workers", "1").stdout)
    assert moved["images"] == 25 and moved["shifted"] and moved["p_value"] == pytest.approx(P_MIN) and moved["effect"] > 0.9
    narrowed = json.loads(run_cli("shift", *test, "--model", trained_run, "--json", "--reference", "montgomery,rsna", "--workers", "1").stdout)
    assert narrowed["reference_sources"] == {"montgomery": 5, "rsna": 4} and narrowed["reference_images"] == 9
    human = run_cli("shift", inverted, "--model", trained_run, "--workers", "1")
    assert human.exit_code == 0 and "shifted: p = 0.0010, domain classifier AUC" in human.stdout
    unknown = run_cli("shift", *test, "--model", trained_run, "--reference", "cohen,shenzhen")
    assert unknown.exit_code == 2 and unknown.stdout == ""
    assert unknown.stderr.strip().splitlines() == [
        "cxrclf: error: the run's reference holds no source named shenzhen; it holds cohen (2 images), montgomery (5 images), rsna (4 images)"]


def test_predict_warns_once_for_a_shifted_batch_and_keeps_its_array(run_cli, trained_run, inverted):
    from cxrclf.inference import RunPredictor
    from cxrclf.predict import predict_files

    result = run_cli("predict", inverted, "--model", trained_run, "--json", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    records = json.loads(result.stdout)
    assert isinstance(records, list) and len(records) == 25 and all("probabilities" in r for r in records)
    lines = [line for line in result.stderr.splitlines() if "as a batch, differ" in line]
    assert len(lines) == 1 and lines[0].startswith(f"cxrclf: warning: {trained_run}: these 25 images") and "p = 0.0010" in lines[0]
    files = sorted(inverted.iterdir())
    found = predict_files(RunPredictor(trained_run, "cpu"), files, workers=1)
    assert found.shift["tested"] and found.shift["shifted"] and found.shift["images"] == 25
    few = predict_files(RunPredictor(trained_run, "cpu"), files[:19], workers=1)
    assert few.shift == {"tested": False, "images": 19, "reason": "fewer than 20 images"}
    quiet = run_cli("predict", *files[:19], "--model", trained_run, "--json", "--workers", "1")
    assert "as a batch" not in quiet.stderr


def test_evaluate_tests_every_source_against_the_reference(run_cli, trained_run, tmp_path):
    result = run_cli("evaluate", trained_run, "--split", "train", "--bootstrap", "0", "--out", tmp_path / "e", "--json", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    shift = json.loads(result.stdout)["shift"]
    predictions = pd.read_csv(tmp_path / "e" / "predictions.csv")
    counts = predictions.source.value_counts().to_dict()
    assert shift["reference"]["images"] == 11 and shift["all"]["images"] == len(predictions) == 77 and shift["all"]["tested"]
    assert {s: r["images"] for s, r in shift["per_source"].items()} == counts
    assert {s for s, r in shift["per_source"].items() if r["tested"]} == {s for s, n in counts.items() if n >= 20}
    assert not shift["per_source"]["rsna"]["tested"] and counts["rsna"] == 17
    report = (tmp_path / "e" / "report.md").read_text()
    assert "## Batch shift test" in report and "| rsna | 17 | n/a | n/a | not tested (fewer than 20 images) |" in report
    own = json.loads(run_cli("evaluate", trained_run, "--split", "val", "--bootstrap", "0", "--out", tmp_path / "v", "--json", "--workers", "1").stdout)
    assert own["shift"]["all"] is None and "include the reference itself" in own["shift"]["reason"]


def test_a_fold_ensemble_tests_with_fold_0(run_cli, trained_run, tmp_path, preprocessed_synthetic):
    parent = tmp_path / "cv"
    for fold in (0, 1):
        shutil.copytree(trained_run, parent / f"fold-{fold}", ignore=shutil.ignore_patterns("evaluation-*", ".cxrclf", "checkpoint.pt"))
    document = json.loads((parent / "fold-1" / "config.json").read_text())
    document["reference"]["sources"], document["reference"]["images"] = {"rsna": 2}, 2  # a reference fold 0 does not have
    (parent / "fold-1" / "config.json").write_text(json.dumps(document))
    test = _fused_files(preprocessed_synthetic, "test")
    found = json.loads(run_cli("shift", *test, "--model", parent, "--json", "--workers", "1").stdout)
    assert found["reference_images"] == 11 and found["reference_sources"] == RunFolder(trained_run).read_config().reference.sources


def test_a_run_without_a_reference_says_so(run_cli, trained_run, inverted, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained_run, old, ignore=shutil.ignore_patterns("evaluation-*", ".cxrclf", "reference.safetensors", "checkpoint.pt"))
    document = json.loads((old / "config.json").read_text())
    del document["reference"]
    (old / "config.json").write_text(json.dumps(document))
    assert RunFolder(old).read_config().reference is None
    refused = run_cli("shift", inverted, "--model", old)
    assert refused.exit_code == 2 and "stores no shift reference" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    human = run_cli("predict", inverted, "--model", old, "--workers", "1")
    assert human.exit_code == 0 and "note: no batch shift test: the run stores no shift reference" in human.stdout
