from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxrclf.data import synthetic


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    from cxrclf.evaluate.evaluation import EvaluateOptions, evaluate

    out = tmp_path_factory.mktemp("eval")
    evaluate(EvaluateOptions(run=trained_run, bootstrap=0, workers=1, out=out))
    return pd.read_csv(out / "predictions.csv").set_index("image_id")


def test_predict_equals_evaluate_on_the_source_files(run_cli, trained_run, preprocessed_synthetic, evaluated):
    manifest = pd.read_csv(preprocessed_synthetic / "manifest.csv").set_index("image_id")
    sources = preprocessed_synthetic.parent / "sources"
    chosen = [i for i in evaluated.index if i.startswith(("cohen", "rsna", "montgomery"))][:6]
    files = []
    for image_id in chosen:
        row = manifest.loc[image_id]
        folder = {"cohen": "cohen", "rsna": "rsna", "montgomery": "nlm"}[row.source]
        files.append(sources / folder / row.source_file)  # the original PNG, JPEG or DICOM
    result = run_cli("predict", *files, "--model", trained_run, "--json", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    answers = json.loads(result.stdout)
    assert [a["file"] for a in answers] == [str(f) for f in files]
    for image_id, answer in zip(chosen, answers):
        for name, p in answer["probabilities"].items():
            assert p == pytest.approx(evaluated.loc[image_id, f"prob_{name}"], abs=1e-5)
        assert answer["predicted"] == evaluated.loc[image_id, "predicted"]
    assert any(str(f).endswith(".dcm") for f in files)


def test_formats_and_a_corrupt_file_among_good_ones(run_cli, trained_run, tmp_path):
    rng = np.random.default_rng(4)
    image = synthetic.to_uint8(synthetic.phantom("covid19", rng, 96).image)
    synthetic._png(tmp_path / "in" / "a.png", image)
    synthetic._jpeg(tmp_path / "in" / "b.jpg", image)
    synthetic.write_dicom(tmp_path / "in" / "c.dcm", image, patient_id="x", compression="jpeg")
    synthetic.write_dicom(tmp_path / "in" / "sub" / "d.dcm", image.astype(np.uint16) * 257, patient_id="y", compression="j2k", monochrome1=True)
    (tmp_path / "in" / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    result = run_cli("predict", tmp_path / "in", "--model", trained_run, "--json", "--csv", tmp_path / "out.csv", "--workers", "2")
    assert result.exit_code == 1  # one file failed, the others were classified
    answers = {a["file"].split("/")[-1]: a for a in json.loads(result.stdout)}
    assert set(answers) == {"a.png", "b.jpg", "c.dcm", "d.dcm", "broken.png"}
    assert answers["broken.png"]["error"] == "not a decodable image"
    probabilities = {k: np.array(list(v["probabilities"].values())) for k, v in answers.items() if "error" not in v}
    assert all(abs(p.sum() - 1) < 1e-5 for p in probabilities.values())
    # the same picture in four encodings gets (nearly) the same answer; MONOCHROME1 is inverted back
    assert np.abs(probabilities["a.png"] - probabilities["c.dcm"]).max() < 0.05
    assert np.abs(probabilities["a.png"] - probabilities["d.dcm"]).max() < 0.05
    table = pd.read_csv(tmp_path / "out.csv")
    assert len(table) == 5 and table.error.notna().sum() == 1


def test_no_model_found(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CXRCLF_MODEL", raising=False)
    synthetic._png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    result = run_cli("predict", tmp_path / "a.png")
    assert result.exit_code == 2 and "train one with `cxrclf train`, or name a run folder" in result.stderr
