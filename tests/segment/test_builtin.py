"""The built-in lung segmenter: what ships, how it is named, and a lung-cropped run made with it from preprocess to predict."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from cxrclf import io
from cxrclf.errors import CxrclfError
from cxrclf.segment.run import BUILTIN, LUNG_MODEL_ENV, PROVENANCE, SegmentRun, builtin_folder, resolve_segment_run


def test_the_shipped_weights_are_the_ones_its_provenance_describes():
    folder = builtin_folder()
    provenance = json.loads((folder / PROVENANCE).read_text())
    weights = folder / SegmentRun.WEIGHTS
    assert io.sha256_file(weights) == provenance["weights"]["sha256"]
    assert weights.stat().st_size == provenance["weights"]["bytes"] < 8_000_000
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as handle:
        dtypes = {str(handle.get_tensor(k).dtype) for k in handle.keys()}
    assert "torch.float16" in dtypes and "torch.float32" not in dtypes
    config = SegmentRun(folder).read_config()
    assert config.finished and config.model.encoder == "tf_efficientnet_lite0" and config.model.input_size == 128
    assert provenance["command"].startswith("cxrclf segment train --nlm ") and len(provenance["data"]["sha256"]) == 64
    assert provenance["data"]["images"] == sum(len(v) for v in provenance["splits"].values()) == config.data.pairs
    assert len(provenance["splits"]["test"]) == config.outcome.test["images"]
    half, single = provenance["heldout"]["float16"]["test"], provenance["heldout"]["float32"]["test"]
    assert half["dice"] >= 0.93 and abs(half["dice"] - single["dice"]) < 0.005  # half precision costs no Dice


def test_builtin_is_the_default_and_a_name(monkeypatch, tmp_path):
    monkeypatch.delenv(LUNG_MODEL_ENV, raising=False)
    run = resolve_segment_run(None)
    assert run.path == builtin_folder() and run.is_builtin and run.identity == BUILTIN
    assert resolve_segment_run("builtin").path == run.path and resolve_segment_run(builtin_folder()).identity == BUILTIN
    monkeypatch.setenv(LUNG_MODEL_ENV, str(tmp_path / "gone"))
    with pytest.raises(CxrclfError, match=f"\\${LUNG_MODEL_ENV} names a missing folder") as caught:
        resolve_segment_run(None)
    assert "--lung-model" not in str(caught.value)
    from cxrclf.segment.run import lung_params

    monkeypatch.delenv(LUNG_MODEL_ENV)
    recorded = lung_params("crop", None)
    assert recorded == {"lung": "crop", "lung_model": BUILTIN, "lung_model_sha256": io.sha256_file(builtin_folder() / SegmentRun.WEIGHTS)}
    assert lung_params("mask", "builtin") == {**recorded, "lung": "mask"}


@pytest.fixture(scope="module")
def builtin_run(tmp_path_factory):
    """Phantoms fused with a turned film and a photograph among them, lung-cropped with the built-in, and a tiny run on them."""
    from skimage import data

    from cxrclf.data import synthetic
    from cxrclf.data.fuse import FuseOptions, fuse
    from cxrclf.data.imageio import read_image
    from cxrclf.prepare import preprocess_folder
    from cxrclf.segment.run import lung_params
    from cxrclf.preprocess.params import PreprocessParams
    from cxrclf.train.loop import TrainOptions, train

    root = tmp_path_factory.mktemp("builtin-run")
    sources = synthetic.write_sources(root / "sources", seed=4, per_class=6, size=128)
    rows = pd.read_csv(sources["cohen"] / "metadata.csv", dtype=str, keep_default_na=False)
    pa = rows[(rows["view"] == "PA") & (rows["modality"] == "X-ray")]["filename"].tolist()
    turned, photograph = sources["cohen"] / "images" / pa[0], sources["cohen"] / "images" / pa[1]
    synthetic._png(turned, np.ascontiguousarray(np.rot90(read_image(turned))))
    synthetic._png(photograph, np.asarray(data.camera()[::4, ::4]))
    fuse(FuseOptions(cohen=sources["cohen"], rsna=sources["rsna"], nlm=sources["nlm"], workers=1), root / "fused")
    params = replace(PreprocessParams(size=64, work_size=128), **lung_params("crop", "builtin"))
    preprocess_folder(root / "fused", root / "prep", params, workers=2)
    train(TrainOptions(model="resnet-baseline", strategy="oversample", classes=3, data=root / "prep", out=root / "run", epochs=1, patience=1,
                       batch_size=16, lr=2e-3, image_size=48, threads=1))
    return {"root": root, "turned": turned.name, "photograph": photograph.name}


def test_builtin_round_trips_through_preprocess_and_predict(builtin_run, run_cli, tmp_path):
    root = builtin_run["root"]
    params = json.loads((root / "prep" / "preprocess.json").read_text())["params"]
    assert params["lung_model"] == "builtin" and params["lung_model_sha256"] == io.sha256_file(builtin_folder() / SegmentRun.WEIGHTS)
    skipped = pd.read_csv(root / "prep" / "skipped.csv")
    reasons = dict(zip(skipped["fused_path"].str.split("/").str[-1], skipped["reason"]))
    fused = pd.read_csv(root / "fused" / "manifest.csv")
    names = dict(zip(fused["source_file"].str.split("/").str[-1], fused["path"].str.split("/").str[-1]))
    assert reasons[names[builtin_run["photograph"]]].startswith("no pair of lung fields")
    assert reasons[names[builtin_run["turned"]]].startswith("rotated by 270 degrees")
    assert len(skipped) <= 3  # the phantoms themselves pass
    image = root / "fused" / fused["path"].iloc[-1]
    answer = run_cli("predict", image, root / "fused" / "images" / names[builtin_run["turned"]], "--model", root / "run", "--device", "cpu",
                     "--workers", "1", "--json")
    results = {r["file"]: r for r in json.loads(answer.stdout)}
    assert not any(w.startswith(("rotated", "no pair", "inverted", "one lung")) for w in results[str(image)]["warnings"])
    turned = results[str(root / "fused" / "images" / names[builtin_run["turned"]])]
    assert "error" in turned or any(w.startswith("rotated by 270 degrees") for w in turned["warnings"])
    preview = run_cli("preprocess", image, "--out", tmp_path / "one.png", "--size", "64", "--lung", "crop", "--lung-model", "builtin")
    assert preview.exit_code == 0, preview.stderr


def test_a_run_cropped_by_another_builtin_is_refused_in_one_line(builtin_run, run_cli, tmp_path):
    root = builtin_run["root"]
    copy = tmp_path / "run"
    shutil.copytree(root / "run", copy)
    config = json.loads((copy / "config.json").read_text())
    config["preprocess"]["lung_model_sha256"] = "0" * 64  # as if an older cxrclf's built-in had cropped it
    (copy / "config.json").write_text(json.dumps(config))
    result = run_cli("predict", root / "fused" / pd.read_csv(root / "fused" / "manifest.csv")["path"].iloc[0], "--model", copy, "--device", "cpu")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ships another built-in segmenter than the one the data was preprocessed with" in lines[0]


def test_a_run_cropped_with_the_builtin_protects_the_package_folder(trained_run, tmp_path):
    import json
    import shutil

    from cxrclf import folders
    from cxrclf.runs import RunFolder

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("evaluation-*"))
    document = json.loads((run / "config.json").read_text())
    document["preprocess"].update(lung="crop", lung_model="builtin", lung_model_sha256="0" * 64)
    (run / "config.json").write_text(json.dumps(document))
    assert RunFolder(run).reads() == [run, folders.BUILTIN_LUNG] and (folders.BUILTIN_LUNG / "model.safetensors").is_file()
