"""The preprocessing stage (cxrclf.prepare): a fused folder in, a preprocessed folder out, resumable."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrclf.data import imageio
from cxrclf.preprocess import PreprocessParams, preprocess_image, read_params


@pytest.fixture(scope="module")
def fused(synthetic_sources, tmp_path_factory):
    from cxrclf.data.fuse import FuseOptions, fuse

    out = tmp_path_factory.mktemp("fused") / "fused"
    fuse(FuseOptions(cohen=synthetic_sources["cohen"], rsna=synthetic_sources["rsna"], nlm=synthetic_sources["nlm"], workers=1), out)
    return out


def test_batch_outputs_match_the_single_function(run_cli, fused, tmp_path):
    out = tmp_path / "prep"
    result = run_cli("preprocess", fused, "--out", out, "--size", "64", "--workers", "2", "--figures", "2")
    assert result.exit_code == 0, result.stderr
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    source = pd.read_csv(fused / "manifest.csv", dtype=str, keep_default_na=False)
    assert len(manifest) == len(source) == 48
    assert (manifest["fused_path"] == source["path"]).all() and (manifest["path"] == "images/" + manifest["image_id"] + ".png").all()
    params = read_params(out / "preprocess.json")
    assert params == PreprocessParams(size=64)
    summary = json.loads((out / "preprocess.json").read_text())
    assert summary["complete"] is True and summary["images"] == 48 and summary["skipped"] == 0
    for row in manifest.head(5).itertuples():
        written = cv2.imread(str(out / row.path), cv2.IMREAD_UNCHANGED)
        expected = preprocess_image(imageio.read_image(fused / row.fused_path), params)
        assert written.shape == (64, 64, 3) and np.array_equal(written[..., ::-1], expected)
    assert len(list((out / "figures").glob("*.png"))) == 2


def test_resume_only_processes_what_is_missing_and_refuses_other_params(run_cli, fused, tmp_path):
    out = tmp_path / "prep"
    assert run_cli("preprocess", fused, "--out", out, "--size", "48", "--workers", "1").exit_code == 0
    images = sorted((out / "images").glob("*.png"))
    kept = images[0].stat().st_mtime_ns
    for lost in images[1:4]:
        lost.unlink()
    (out / "manifest.csv").unlink()  # as if interrupted before the end
    again = run_cli("preprocess", fused, "--out", out, "--size", "48", "--workers", "1", "--json")
    assert again.exit_code == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["processed_now"], summary["reused"]) == (3, 45)
    assert images[0].stat().st_mtime_ns == kept
    other = run_cli("preprocess", fused, "--out", out, "--size", "32")
    assert other.exit_code == 2 and "other parameters (size differ)" in other.stderr
    assert read_params(out / "preprocess.json").size == 48
    assert run_cli("preprocess", fused, "--out", out, "--size", "32", "--overwrite").exit_code == 0
    assert cv2.imread(str(images[0])).shape == (32, 32, 3)


def test_unreadable_fused_image_is_skipped_with_reason(run_cli, fused, tmp_path):
    import shutil

    copy = tmp_path / "fused"
    shutil.copytree(fused, copy)
    victim = sorted((copy / "images").glob("*.png"))[0]
    victim.write_bytes(b"")
    result = run_cli("preprocess", copy, "--out", tmp_path / "prep", "--size", "32", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    skipped = pd.read_csv(tmp_path / "prep" / "skipped.csv")
    assert skipped.to_dict("records") == [{"image_id": victim.stem, "fused_path": f"images/{victim.name}", "reason": "empty file (0 bytes)"}]
    assert len(pd.read_csv(tmp_path / "prep" / "manifest.csv")) == 47


def test_preview_of_one_image_and_bad_input(run_cli, synthetic_sources, fused, tmp_path):
    dicom = sorted((synthetic_sources["rsna"] / "stage_2_train_images").glob("*.dcm"))[0]
    result = run_cli("preprocess", dicom, "--out", tmp_path / "one.png", "--channels", "1", "--size", "100", "--fit", "pad")
    assert result.exit_code == 0, result.stderr
    assert cv2.imread(str(tmp_path / "one.png"), cv2.IMREAD_UNCHANGED).shape == (100, 100)
    assert run_cli("preprocess", dicom).exit_code == 2  # a preview needs --out
    (tmp_path / "a-file").write_text("x")
    not_folder = run_cli("preprocess", fused, "--out", tmp_path / "a-file")
    assert not_folder.exit_code == 2 and "exists and is not a folder" in not_folder.stderr
    bad = run_cli("preprocess", tmp_path / "missing-folder")
    assert bad.exit_code == 2 and "run `cxrclf fuse` first" in bad.stderr
    wrong = run_cli("preprocess", dicom, "--out", tmp_path / "x.png", "--channels", "2")
    assert wrong.exit_code == 2 and "channels must be 1 or 3" in wrong.stderr and not (tmp_path / "x.png").exists()


def test_the_worker_takes_and_answers_frozen_picklable_values(fused, tmp_path):
    import dataclasses
    import hashlib
    import pickle

    from cxrclf.prepare import ImageOutcome, ImageTask, _process_one

    source = sorted((fused / "images").glob("*.png"))[0]
    task = ImageTask(source, tmp_path / "out.png", PreprocessParams(size=32))
    assert pickle.loads(pickle.dumps(task)) == task  # what crosses to a worker process
    made = _process_one(task)
    assert made == ImageOutcome("made", hashlib.sha256((tmp_path / "out.png").read_bytes()).hexdigest())
    assert pickle.loads(pickle.dumps(made)) == made
    assert _process_one(task) == ImageOutcome("reused", made.sha256)
    assert _process_one(dataclasses.replace(task, recorded_sha256="0" * 64)) == ImageOutcome("repaired", made.sha256)  # not the recorded image
    failed = _process_one(ImageTask(tmp_path / "missing.png", tmp_path / "never.png", task.params))
    assert failed == ImageOutcome("failed", reason="file not found")
    assert not (tmp_path / "never.png").exists()
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.status = "failed"
