"""``cxrclf export`` and ``predict --backend onnxruntime``: the exported files give predict's records without PyTorch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrclf.data import synthetic
from cxrclf.errors import CxrclfError

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tiny_timm_run(preprocessed_synthetic, tmp_path_factory) -> Path:
    """A timm network (test_efficientnet, 32 px, one epoch, no pretrained weights): the timm path of export, kept small."""
    from cxrclf.train.loop import TrainOptions, train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(TrainOptions(model="test_efficientnet", strategy="oversample", classes=3, data=preprocessed_synthetic, out=out, epochs=1, patience=1,
                       batch_size=16, lr=2e-3, image_size=32, threads=1, pretrained=False))
    return out


@pytest.fixture(scope="module")
def fold_ensemble(trained_run, tmp_path_factory) -> Path:
    """A cross-validation parent of two folds that differ: fold 1 is the trained run with every weight perturbed by a few percent
    (so its features, scores and probabilities all differ from fold 0's) and its head's output halved."""
    from safetensors.numpy import load_file, save_file

    parent = tmp_path_factory.mktemp("cv") / "ensemble"
    for k in (0, 1):
        shutil.copytree(trained_run, parent / f"fold-{k}")
    weights = parent / "fold-1" / "model.safetensors"
    state = load_file(str(weights))
    rng = np.random.default_rng(0)
    for name, value in state.items():
        if value.dtype == np.float32:
            state[name] = (value * (1 + 0.05 * rng.standard_normal(value.shape))).astype(np.float32)
    state["head.out.weight"] = state["head.out.weight"] * np.float32(0.5)
    save_file(state, str(weights))
    return parent


@pytest.fixture(scope="module")
def images(tmp_path_factory, synthetic_sources) -> list[Path]:
    """PNG, JPEG and DICOM originals of every finding, a colour photograph (flagged by the input checks) and noise (flagged by the guard)."""
    folder = tmp_path_factory.mktemp("inputs")
    files = sorted((synthetic_sources["cohen"] / "images").iterdir())[:4]
    files += sorted(synthetic_sources["rsna"].rglob("*.dcm"))[:3] + sorted(synthetic_sources["nlm"].rglob("*.png"))[:3]
    from skimage import data

    colour = folder / "photograph.png"
    synthetic._png(colour, np.ascontiguousarray(data.astronaut()[..., ::-1]))
    noise = folder / "noise.png"
    synthetic._png(noise, np.random.default_rng(5).integers(0, 256, (300, 300), dtype=np.uint8))
    return files + [colour, noise]


def _predict(run_cli, files, *model_args) -> list[dict]:
    result = run_cli("predict", *files, *model_args, "--json", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _reasons(record: dict) -> list[str]:
    """The warnings without their numbers (the guard's score is printed to two decimals, which may round either way)."""
    return [warning.split(":")[0] for warning in record["warnings"]]


def _export(run_cli, run: Path, out: Path) -> dict:
    result = run_cli("export", run, "--format", "onnx", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["tiny_timm_run", "trained_run", "fold_ensemble"])
def test_onnxruntime_gives_predicts_records(run_cli, request, images, tmp_path, which):
    run = request.getfixturevalue(which)
    exported = _export(run_cli, run, tmp_path / "export" / "model.onnx")
    members = 2 if which == "fold_ensemble" else 1
    assert exported["members"] == members and exported["verification"]["max_probability_difference"] <= TOLERANCE
    assert sorted(Path(f).name for f in exported["files"]) == sorted(
        ["model.onnx", "model.json", "model.reference.safetensors"]
        + (["model.guard.safetensors"] if members == 1 else ["model.guard-fold-0.safetensors", "model.guard-fold-1.safetensors"]))
    folds = [run] if members == 1 else [run / "fold-0", run / "fold-1"]
    from cxrclf.io import sha256_file

    assert [m["weights_sha256"] for m in exported["source_run"]["members"]] == [sha256_file(f / "model.safetensors") for f in folds]
    for k, fold in enumerate(folds):  # the guard travels byte for byte
        assert sha256_file(Path(exported["files"][0]).parent / exported["guard"]["members"][k]["file"]) == sha256_file(fold / "guard.safetensors")

    torch_records = _predict(run_cli, images, "--model", run)
    onnx_records = _predict(run_cli, images, "--backend", "onnxruntime", "--model", tmp_path / "export" / "model.onnx")
    assert [r["file"] for r in onnx_records] == [str(f) for f in images]
    for expected, got in zip(torch_records, onnx_records):
        assert set(got) == set(expected)
        assert max(abs(got["probabilities"][c] - p) for c, p in expected["probabilities"].items()) <= TOLERANCE
        assert got["in_distribution"] == expected["in_distribution"] and _reasons(got) == _reasons(expected)
        assert got["predicted"] == expected["predicted"] and got["operating_point"] == expected["operating_point"]
        assert got["ood_score"] == pytest.approx(expected["ood_score"], rel=1e-3)
    flags = [r["in_distribution"] for r in torch_records]
    assert flags[-2] is False and flags[-1] is False and True in flags  # the comparison covered both answers
    assert "real colour" in " ".join(torch_records[-2]["warnings"]) and "out of distribution" in " ".join(torch_records[-1]["warnings"])
    if members == 2:  # the ensemble is not its first fold
        alone = _predict(run_cli, images[:1], "--model", run / "fold-0")
        assert abs(alone[0]["probabilities"]["covid19"] - onnx_records[0]["probabilities"]["covid19"]) > 1e-3
        assert onnx_records[0]["operating_point"] is None


def test_every_predictor_is_a_predictor_and_the_backends_assess_each_fold_alike(run_cli, fold_ensemble, images, tmp_path):
    from cxrclf.inference import FoldEnsemble, Predictor, RunPredictor, load_predictor
    from cxrclf.planes import PlaneTask, plane_from_file
    from cxrclf.runs import RunFolder
    from cxrclf.runtime import OnnxPredictor

    _export(run_cli, fold_ensemble, tmp_path / "model.onnx")
    ensemble, exported = load_predictor(RunFolder(fold_ensemble), "cpu"), OnnxPredictor(tmp_path / "model.onnx")
    single = ensemble.members[0]
    assert isinstance(ensemble, FoldEnsemble) and isinstance(single, RunPredictor)
    assert all(isinstance(p, Predictor) for p in (ensemble, single, exported)) and not isinstance(object(), Predictor)
    assert (ensemble.member_count, single.member_count, exported.member_count) == (2, 1, 2) and single.members == [single]
    planes = np.stack([plane_from_file(PlaneTask(str(f), ensemble.params.to_dict(), ensemble.input_size)).plane for f in images[:4]])
    theirs, ours = ensemble.assess_members(planes), exported.assess_members(planes)
    for fold, (a, b) in enumerate(zip(theirs, ours)):  # fold by fold: the same probabilities and raw guard scores
        np.testing.assert_allclose(b.probabilities, a.probabilities, atol=TOLERANCE, err_msg=f"fold {fold}")
        np.testing.assert_allclose(b.scores, a.scores, rtol=1e-3, err_msg=f"fold {fold}")
    assert np.abs(ours[0].probabilities - ours[1].probabilities).max() > 1e-3  # two folds that differ: averaging is tested
    combined = exported.combine(ours)
    np.testing.assert_array_equal(combined.probabilities, exported.assess(planes).probabilities)
    np.testing.assert_allclose(combined.probabilities, (ours[0].probabilities + ours[1].probabilities) / 2, atol=1e-7)
    thresholds = [d.threshold for d in exported.detectors]
    np.testing.assert_allclose(combined.scores, (ours[0].scores / thresholds[0] + ours[1].scores / thresholds[1]) / 2)
    np.testing.assert_allclose(ensemble.combine(theirs).scores, combined.scores, rtol=1e-3)


_WITHOUT_TORCH = """
import contextlib, importlib.abc, io, json, sys


class NoTorch(importlib.abc.MetaPathFinder):  # this process behaves as an environment where PyTorch was never installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoTorch())
from cxrclf import cli

printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    try:
        cli.main(sys.argv[1:])
    except SystemExit as exc:
        if exc.code:
            raise
print(json.dumps({"records": json.loads(printed.getvalue()), "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm"))}))
"""


@pytest.mark.slow
def test_predict_from_the_export_needs_no_torch(run_cli, trained_run, images, tmp_path):
    _export(run_cli, trained_run, tmp_path / "m.onnx")
    arguments = ["predict", *map(str, images[:3]), "--backend", "onnxruntime", "--model", str(tmp_path / "m.onnx"), "--json", "--workers", "1"]
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, *arguments], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    assert found["loaded"] == []
    assert "the lung-based input checks need PyTorch, which is not installed here: they did not run" in done.stderr  # said, not skipped silently
    expected = _predict(run_cli, images[:3], "--model", trained_run)
    for record, reference in zip(found["records"], expected):
        assert max(abs(record["probabilities"][c] - p) for c, p in reference["probabilities"].items()) <= TOLERANCE
    pytorch = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, "predict", str(images[0]), "--model", str(trained_run)], capture_output=True, text=True, timeout=300)
    assert pytorch.returncode == 2 and "this command needs torch, which is not installed" in pytorch.stderr


def test_export_refuses_to_write_into_the_run_or_over_files(run_cli, trained_run, tmp_path):
    inside = run_cli("export", trained_run, "--out", trained_run / "model.onnx")
    assert inside.exit_code == 2 and "lies inside the input" in inside.stderr and not (trained_run / "model.onnx").exists()
    (tmp_path / "m.json").write_text("mine")
    taken = run_cli("export", trained_run, "--out", tmp_path / "m.onnx")
    assert taken.exit_code == 2 and "pass --overwrite" in taken.stderr and (tmp_path / "m.json").read_text() == "mine"
    assert not (tmp_path / "m.onnx").exists()
    wrong = run_cli("export", trained_run, "--out", tmp_path / "m.pt")
    assert wrong.exit_code == 2 and "must be an .onnx file" in wrong.stderr


def test_a_second_export_to_the_same_files_is_refused_while_the_first_writes(trained_run, tmp_path):
    from cxrclf import io
    from cxrclf.export import export_onnx

    with io.folder_lock(tmp_path / "m.onnx"):  # as another export holds it
        with pytest.raises(CxrclfError, match=f"in use by process {os.getpid()}"):
            export_onnx(trained_run, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    export_onnx(trained_run, tmp_path / "m.onnx")  # free again, and no lock file left behind
    assert (tmp_path / "m.onnx").is_file() and not (tmp_path / ".m.onnx.lock").exists()


def test_an_export_that_disagrees_with_pytorch_is_not_written(trained_run, tmp_path):
    from cxrclf.export import export_onnx

    with pytest.raises(CxrclfError, match=r"differ from PyTorch's by up to \d\.\d\de-\d\d .*tolerance 1e-12"):
        export_onnx(trained_run, tmp_path / "m.onnx", tolerance=1e-12)
    assert list(tmp_path.iterdir()) == []  # nor the staging folder


def test_damaged_swapped_or_incomplete_exports_are_refused(run_cli, trained_run, tiny_timm_run, images, tmp_path):
    _export(run_cli, trained_run, tmp_path / "a" / "m.onnx")
    _export(run_cli, tiny_timm_run, tmp_path / "b" / "m.onnx")
    shutil.copyfile(tmp_path / "b" / "m.onnx", tmp_path / "a" / "m.onnx")  # another export's network beside this sidecar
    swapped = run_cli("predict", images[0], "--backend", "onnxruntime", "--model", tmp_path / "a" / "m.onnx")
    assert swapped.exit_code == 2 and "differs from the file that was exported" in swapped.stderr
    (tmp_path / "b" / "m.guard.safetensors").unlink()
    missing = run_cli("predict", images[0], "--backend", "onnxruntime", "--model", tmp_path / "b" / "m.onnx")
    assert missing.exit_code == 2 and "m.guard.safetensors is missing beside the sidecar" in missing.stderr
    (tmp_path / "b" / "m.json").unlink()
    alone = run_cli("predict", images[0], "--backend", "onnxruntime", "--model", tmp_path / "b" / "m.onnx")
    assert alone.exit_code == 2 and "sidecar m.json is missing" in alone.stderr
    folder = run_cli("predict", images[0], "--backend", "onnxruntime", "--model", trained_run)
    assert folder.exit_code == 2 and "takes an exported model" in folder.stderr
    tta = run_cli("predict", images[0], "--backend", "onnxruntime", "--model", tmp_path / "a" / "m.json", "--tta", "2")
    assert tta.exit_code == 2 and "PyTorch backend only" in tta.stderr


def test_the_numpy_normalisation_is_model_input(trained_run):
    import torch

    from cxrclf.models.inputs import model_input
    from cxrclf.runtime import normalise

    planes = np.random.default_rng(2).integers(0, 256, (3, 20, 20), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1), np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    expected = model_input(torch.from_numpy(planes), 3, torch.from_numpy(mean), torch.from_numpy(std)).numpy()
    assert np.array_equal(normalise(planes, 3, mean, std), expected)  # bit for bit, not approximately


@pytest.mark.integration
def test_real_images_give_the_same_records_with_both_backends(run_cli, trained_run, shared_data, tmp_path):
    files = [*sorted((shared_data / "cohen" / "images").iterdir())[:4], *sorted((shared_data / "rsna" / "stage_2_train_images").glob("*.dcm"))[:3],
             *sorted((shared_data / "montgomery").rglob("CXR_png/*.png"))[:2], shared_data / "extra-dicom" / "RG1_J2KI.dcm"]
    _export(run_cli, trained_run, tmp_path / "m.onnx")
    torch_records = _predict(run_cli, files, "--model", trained_run)
    onnx_records = _predict(run_cli, files, "--backend", "onnxruntime", "--model", tmp_path / "m.onnx")
    assert len(onnx_records) == len(files) == 10
    for expected, got in zip(torch_records, onnx_records):
        assert ("error" in got) == ("error" in expected)
        if "error" not in got:
            assert max(abs(got["probabilities"][c] - p) for c, p in expected["probabilities"].items()) <= TOLERANCE
            assert got["in_distribution"] == expected["in_distribution"] and _reasons(got) == _reasons(expected)
