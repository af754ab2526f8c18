from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrclf.explain.explain import explain_image, positive_fraction_inside
from cxrclf.inference import RunPredictor
from cxrclf.preprocess.params import PreprocessParams

SIZE = 128
REGION = (slice(0, 64), slice(0, 64))  # a quarter: Grad-CAM's resolution is the 32-px feature stride  # the only place where the class signal can be


def _image(rng: np.random.Generator, positive: bool) -> np.ndarray:
    background = cv2.GaussianBlur(rng.random((SIZE, SIZE)).astype(np.float32), (0, 0), 5) * 0.5 + 0.25
    if positive:
        y, x = rng.integers(REGION[0].start + 16, REGION[0].stop - 16), rng.integers(REGION[1].start + 16, REGION[1].stop - 16)
        cv2.circle(background, (int(x), int(y)), 9, 0.95, -1)
    return np.clip(background * 255, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def region_run(tmp_path_factory):
    """A run trained on images whose only COVID-19 signal is a bright disc inside REGION."""
    from cxrclf.train.loop import TrainOptions, train

    root = tmp_path_factory.mktemp("region")
    rng = np.random.default_rng(0)
    (root / "prep" / "images").mkdir(parents=True)
    rows = []
    for index in range(160):
        positive = index % 2 == 1
        cv2.imwrite(str(root / "prep" / "images" / f"i{index}.png"), _image(rng, positive))
        split = "test" if index >= 150 else "val" if index >= 130 else "train"
        rows.append({"image_id": f"i{index}", "path": f"images/i{index}.png", "source": "s", "source_file": f"i{index}.png", "patient_id": f"s:{index}",
                     "finding": "covid19" if positive else "normal", "view": "PA", "sex": "", "age": "", "width": SIZE, "height": SIZE,
                     "sha256": f"{index:064x}", "phash": f"{index:064x}", "group": f"g{index}", "split": split, "fold": -1 if split == "test" else index % 4,
                     "fused_path": f"images/i{index}.png"})
    pd.DataFrame(rows).to_csv(root / "prep" / "manifest.csv", index=False)
    params = PreprocessParams(size=SIZE, work_size=SIZE, remove_text=False, denoise="none")
    (root / "prep" / "preprocess.json").write_text(json.dumps({"params": params.to_dict()}))
    train(TrainOptions(model="resnet-baseline", strategy="weighted", classes=2, data=root / "prep", out=root / "run", epochs=8, patience=8,
                       batch_size=16, lr=2e-3, image_size=SIZE, threads=1))
    return root


@pytest.mark.parametrize("method", ["gradcam", "lime"])
def test_attribution_falls_inside_the_signal_region(region_run, method, tmp_path):
    predictor = RunPredictor(region_run / "run", "cpu")
    rng = np.random.default_rng(99)
    region = np.zeros((SIZE, SIZE), bool)
    region[REGION] = True
    fractions = []
    for k in range(3):
        cv2.imwrite(str(tmp_path / f"p{k}.png"), _image(rng, True))
        result = explain_image(predictor, tmp_path / f"p{k}.png", method=method, target="covid19", num_samples=300, seed=0, out=tmp_path / f"p{k}.{method}.png")
        assert result.probabilities["covid19"] > 0.5 and result.target == "covid19" and result.out == str(tmp_path / f"p{k}.{method}.png")
        fractions.append(positive_fraction_inside(result.attribution, region))
    assert min(fractions) >= 0.6, fractions  # REGION is 25% of the image


def test_lime_is_deterministic_with_a_seed_and_draws_a_picture(run_cli, region_run, tmp_path):
    cv2.imwrite(str(tmp_path / "x.png"), _image(np.random.default_rng(5), True))
    args = ["explain", tmp_path / "x.png", "--model", region_run / "run", "--method", "lime", "--num-samples", "200", "--json"]
    first = run_cli(*args, "--out", tmp_path / "a.png")
    second = run_cli(*args, "--out", tmp_path / "b.png")
    assert first.exit_code == 0, first.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["regions"] == b["regions"] and len(a["regions"]) == 10
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    different = json.loads(run_cli(*args, "--out", tmp_path / "c.png", "--seed", "1").stdout)
    assert different["regions"] != a["regions"]
    with Image.open(tmp_path / "a.png") as picture:
        assert picture.size == (900, 500)


def test_gradcam_fast_and_bad_target(run_cli, region_run, tmp_path):
    import time

    cv2.imwrite(str(tmp_path / "x.png"), _image(np.random.default_rng(6), False))
    predictor = RunPredictor(region_run / "run", "cpu")
    start = time.perf_counter()
    explain_image(predictor, tmp_path / "x.png", method="gradcam", out=tmp_path / "g.png")
    assert (tmp_path / "g.png").exists()
    bad = run_cli("explain", tmp_path / "x.png", "--model", region_run / "run", "--target", "tuberculosis")
    assert bad.exit_code == 2 and "not a class of this run" in bad.stderr
    missing = run_cli("explain", tmp_path / "nope.png", "--model", region_run / "run")
    assert missing.exit_code == 2 and "file not found" in missing.stderr
    start = time.perf_counter()
    wrong = run_cli("explain", tmp_path / "x.png", "--model", region_run / "run", "--out", tmp_path / "x.jpg", "--num-samples", "5000")
    assert wrong.exit_code == 2 and "must be a .png" in wrong.stderr and time.perf_counter() - start < 30  # refused before sampling
