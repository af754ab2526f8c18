"""A folder preprocessed with --harmonize, a run trained on it: predict, evaluate and explain re-apply the harmonisation exactly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxrclf.data import imageio
from cxrclf.models.inputs import to_model_plane
from cxrclf.preprocess import PreprocessParams, read_params


@pytest.fixture(scope="module")
def fused(synthetic_sources, tmp_path_factory):
    from cxrclf.data.fuse import FuseOptions, fuse

    out = tmp_path_factory.mktemp("harmonized") / "fused"
    fuse(FuseOptions(cohen=synthetic_sources["cohen"], rsna=synthetic_sources["rsna"], nlm=synthetic_sources["nlm"], workers=1), out)
    return out


@pytest.mark.slow
def test_harmonized_training_images_are_what_predict_evaluate_and_explain_rebuild(run_cli, fused, synthetic_sources, tmp_path):
    from cxrclf.evaluate.evaluation import EvaluateOptions, evaluate
    from cxrclf.inference import load_predictor, plane_from_file
    from cxrclf.planes import PlaneTask
    from cxrclf.runs import RunFolder
    from cxrclf.train.loop import TrainOptions, train

    prep = tmp_path / "prep"
    result = run_cli("preprocess", fused, "--out", prep, "--size", "64", "--harmonize", "--detail-size", "40", "--deblock", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    params = read_params(prep / "preprocess.json")
    assert (params.detail_size, params.intensity, params.deblock, params.clahe_clip, params.clahe_grid) == (40, "match", True, 2.0, 8)
    stored = json.loads((prep / "preprocess.json").read_text())["params"]
    assert {k: stored[k] for k in ("detail_size", "intensity", "deblock")} == {"detail_size": 40, "intensity": "match", "deblock": True}

    run = tmp_path / "run"
    train(TrainOptions(model="resnet-baseline", strategy="oversample", classes=3, data=prep, out=run, epochs=1, patience=1, batch_size=16,
                       image_size=48, threads=1))
    assert json.loads((run / "config.json").read_text())["preprocess"] == stored  # the run records them as the folder did
    predictor = load_predictor(RunFolder(run), device="cpu")
    assert predictor.params == params

    manifest = pd.read_csv(prep / "manifest.csv", dtype=str, keep_default_na=False).set_index("image_id")
    folders = {"cohen": "cohen", "rsna": "rsna", "montgomery": "nlm"}
    chosen = [manifest.index[manifest.source == source][0] for source in folders]  # a PNG, a DICOM and an NLM PNG
    for image_id in chosen:
        row = manifest.loc[image_id]
        original = synthetic_sources[folders[row.source]] / row.source_file  # the file as its archive ships it
        trained_on = to_model_plane(imageio.read_image(prep / row.path), 48)
        predicted = plane_from_file(PlaneTask(str(original), predictor.params.to_dict(), 48))  # predict's path (and evaluate's on a fused folder)
        assert predicted.ok and np.array_equal(predicted.plane, trained_on), image_id
        explained = predictor.plane_from_decoded(imageio.decode(original).pixels)  # explain's path
        assert np.array_equal(explained, trained_on), image_id

    on_fused = evaluate(EvaluateOptions(run=run, data=fused, bootstrap=0, workers=1, device="cpu", out=tmp_path / "eval-fused"))
    on_prep = evaluate(EvaluateOptions(run=run, data=prep, bootstrap=0, workers=1, device="cpu", out=tmp_path / "eval-prep"))
    a = pd.read_csv(tmp_path / "eval-fused" / "predictions.csv").set_index("image_id").sort_index()
    b = pd.read_csv(tmp_path / "eval-prep" / "predictions.csv").set_index("image_id").sort_index()
    assert len(a) == len(b) > 0 and on_fused is not None and on_prep is not None
    probabilities = [c for c in a.columns if c.startswith("prob_")]
    np.testing.assert_allclose(a[probabilities].to_numpy(), b[probabilities].to_numpy(), atol=1e-6)


def test_a_folder_without_harmonization_is_refused_for_a_harmonized_run(fused, tmp_path):
    """evaluate compares the folder's parameters with the run's: a harmonized run names the fields that differ."""
    from cxrclf.errors import CxrclfError
    from cxrclf.evaluate.evaluation import load_rows
    from cxrclf.prepare import preprocess_folder

    preprocess_folder(fused, tmp_path / "plain", PreprocessParams(size=32, work_size=128), workers=1)
    harmonized = PreprocessParams(size=32, work_size=128, detail_size=64, intensity="match")
    with pytest.raises(CxrclfError, match=r"other parameters than the run \(detail_size, intensity\)"):
        load_rows(tmp_path / "plain", "test", harmonized)


def test_resuming_names_the_harmonization_that_differs(run_cli, fused, tmp_path):
    out = tmp_path / "prep"
    assert run_cli("preprocess", fused, "--out", out, "--size", "32", "--workers", "1").exit_code == 0
    plain = json.loads((out / "preprocess.json").read_text())["params"]
    assert "detail_size" not in plain and "intensity" not in plain  # written as before harmonisation existed
    other = run_cli("preprocess", fused, "--out", out, "--size", "32", "--harmonize", "--workers", "1")
    assert other.exit_code == 2 and "other parameters (detail_size, intensity differ)" in other.stderr
    assert run_cli("preprocess", fused, "--out", out, "--size", "32", "--harmonize", "--overwrite", "--workers", "1").exit_code == 0
    back = run_cli("preprocess", fused, "--out", out, "--size", "32", "--workers", "1")
    assert back.exit_code == 2 and "other parameters (detail_size, intensity differ)" in back.stderr
