"""A classifier trained on lung-cropped images: every command applies the same lung step."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from cxrclf.segment.run import lung_params
from cxrclf.preprocess.params import PreprocessParams


@pytest.fixture(scope="module")
def lung_run(synthetic_sources, tiny_segmenter, tmp_path_factory):
    """Fused phantoms -> lung-cropped 64 px images (a private copy of the segmenter) -> a 3-class baseline run."""
    from cxrclf.data.fuse import FuseOptions, fuse
    from cxrclf.prepare import preprocess_folder
    from cxrclf.train.loop import TrainOptions, train

    root = tmp_path_factory.mktemp("lung-run")
    segmenter = root / "lung"
    shutil.copytree(tiny_segmenter, segmenter)
    fuse(FuseOptions(cohen=synthetic_sources["cohen"], rsna=synthetic_sources["rsna"], nlm=synthetic_sources["nlm"], workers=1), root / "fused")
    params = replace(PreprocessParams(size=64, work_size=128), **lung_params("crop", segmenter))
    summary = preprocess_folder(root / "fused", root / "prep", params, workers=2)
    train(TrainOptions(model="resnet-baseline", strategy="oversample", classes=3, data=root / "prep", out=root / "run", epochs=3, patience=3,
                       batch_size=16, lr=2e-3, image_size=48, threads=1))
    return {"root": root, "segmenter": segmenter, "params": params, "summary": summary}


def test_preprocessing_records_the_segmenter_and_crops_every_image(lung_run):
    summary, params = lung_run["summary"], lung_run["params"]
    assert summary["params"]["lung"] == "crop" and summary["params"]["lung_model"] == str(lung_run["segmenter"].resolve())
    assert summary["params"]["lung_model_sha256"] == params.lung_model_sha256 and len(params.lung_model_sha256) == 64
    assert summary["images"] >= 0.9 * (summary["images"] + summary["skipped"])  # phantoms are PA chests: few or none rejected
    from cxrclf.runs import RunFolder

    assert RunFolder(lung_run["root"] / "run").read_config().preprocess == params


def test_predict_equals_evaluate_on_lung_cropped_external_data(lung_run):
    from cxrclf.evaluate.evaluation import EvaluateOptions, evaluate
    from cxrclf.inference import RunPredictor
    from cxrclf.predict import predict_files

    root = lung_run["root"]
    result = evaluate(EvaluateOptions(run=root / "run", data=root / "fused", split="test", bootstrap=0, workers=1, device="cpu"))
    predictions = pd.read_csv(f"{result.out}/predictions.csv")
    manifest = pd.read_csv(root / "fused" / "manifest.csv").set_index("image_id")
    files = [root / "fused" / manifest.loc[i, "path"] for i in predictions["image_id"]]
    predicted = predict_files(RunPredictor(root / "run", "cpu"), files, workers=2)  # worker processes: the same masks, the same crops
    ours = np.array([[r.probabilities[c] for c in ("normal", "covid19", "other")] for r in predicted])
    np.testing.assert_allclose(ours, predictions[["prob_normal", "prob_covid19", "prob_other"]].to_numpy(), atol=1e-6)


def test_explain_and_evaluate_report_the_share_of_attribution_inside_the_lungs(lung_run, run_cli, tmp_path):
    root = lung_run["root"]
    image = next((root / "fused" / "images").glob("*.png"))
    result = run_cli("explain", image, "--model", root / "run", "--method", "gradcam", "--out", tmp_path / "why.png", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    explained = json.loads(result.stdout)
    assert 0.0 <= explained["in_lung_share"] <= 1.0 and explained["lung_model"] == str(lung_run["segmenter"].resolve())
    assert (tmp_path / "why.png").stat().st_size > 10_000

    evaluated = run_cli("evaluate", root / "run", "--bootstrap", "0", "--workers", "1", "--device", "cpu", "--out", tmp_path / "eval",
                        "--lung-model", lung_run["segmenter"], "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    attention = json.loads(evaluated.stdout)["lung_attention"]
    assert attention["overall"]["images"] == json.loads(evaluated.stdout)["n_images"]
    assert 0.0 <= attention["overall"]["in_lung_share"] <= 1.0 and set(attention["per_source"]) <= {"cohen", "rsna", "montgomery"}
    assert "## Where the model looks (Grad-CAM inside the lung fields)" in (tmp_path / "eval" / "report.md").read_text()
    shares = pd.read_csv(tmp_path / "eval" / "predictions.csv")["in_lung_share"]
    assert shares.between(0, 1).all()


def test_a_changed_segmenter_is_refused_in_one_line(lung_run, run_cli, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(lung_run["root"] / "run", root / "run")
    weights = lung_run["segmenter"] / "model.safetensors"
    original = weights.read_bytes()
    image = next((lung_run["root"] / "fused" / "images").glob("*.png"))
    try:
        weights.write_bytes(original[:-4] + b"\0\0\0\0")
        from cxrclf.segment import run as segment_run

        segment_run._LOADED.clear()  # this process loaded it before the change
        result = run_cli("predict", image, "--model", root / "run", "--device", "cpu", "--workers", "1")
    finally:
        weights.write_bytes(original)
        segment_run._LOADED.clear()
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "lung segmenter's weights changed since the preprocessing parameters were recorded" in lines[0]


def test_preprocess_cli_crops_a_preview_and_refuses_a_lung_model_without_a_lung_step(lung_run, run_cli, tmp_path):
    image = next((lung_run["root"] / "fused" / "images").glob("*.png"))
    result = run_cli("preprocess", image, "--out", tmp_path / "crop.png", "--size", "64", "--lung", "crop", "--lung-model", lung_run["segmenter"])
    assert result.exit_code == 0, result.stderr
    from cxrclf.data.imageio import read_image

    assert read_image(tmp_path / "crop.png").shape == (64, 64)  # decoded as grey
    wrong = run_cli("preprocess", image, "--out", tmp_path / "x.png", "--lung-model", lung_run["segmenter"])
    assert wrong.exit_code == 2 and "the lung step is none" in wrong.stderr
    auto = run_cli("preprocess", image, "--out", tmp_path / "y.png", "--tv-weight", "strong")
    assert auto.exit_code == 2 and "TV weight must be a number >= 0 or 'auto'" in auto.stderr


def test_an_image_without_lungs_is_reported_by_predict_and_explain(lung_run, run_cli, tmp_path):
    from cxrclf.data import synthetic

    blank = tmp_path / "blank.png"
    synthetic._png(blank, np.full((128, 128), 180, np.uint8))
    run = lung_run["root"] / "run"
    predicted = run_cli("predict", blank, "--model", run, "--device", "cpu", "--workers", "1", "--json")
    assert predicted.exit_code == 1 and "no lung fields found" in json.loads(predicted.stdout)[0]["error"]
    explained = run_cli("explain", blank, "--model", run, "--method", "gradcam", "--out", tmp_path / "b.png", "--device", "cpu")
    assert explained.exit_code == 2 and explained.stderr.strip().startswith(f"cxrclf: error: {blank}: no lung fields found")


def test_no_output_lands_in_the_run_or_its_segmenter(lung_run, run_cli):
    from cxrclf.runs import RunFolder

    run, segmenter = lung_run["root"] / "run", lung_run["segmenter"]
    assert RunFolder(run).reads() == [run, segmenter.resolve()]
    image = next((lung_run["root"] / "fused" / "images").glob("*.png"))
    weights = segmenter / "model.safetensors"
    before = weights.read_bytes()
    for target in (weights, segmenter / "new.csv", run / "config.json"):
        result = run_cli("predict", image, "--model", run, "--csv", target, "--overwrite", "--device", "cpu", "--workers", "1")
        assert result.exit_code == 2 and "lies inside the input" in result.stderr, result.stderr
    assert weights.read_bytes() == before and not (segmenter / "new.csv").exists()
    assert RunFolder(run).read_config().preprocess == lung_run["params"]
