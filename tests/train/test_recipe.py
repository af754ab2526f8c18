"""Recipes: the paper's kept bit for bit, the small-data one's augmentation, schedule and averaging."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from cxrclf.choices import Augment, Recipe
from cxrclf.labels import SCHEMES
from cxrclf.runs import RunFolder
from cxrclf.train.data import load_images, read_preprocessed
from cxrclf.train.loop import Batches, TrainOptions, train
from cxrclf.train.recipe import RECIPES, lr_factor


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The phantoms of the shared fixture, preprocessed with the parameters spelled out (defaults may move)."""
    from cxrclf.data import synthetic
    from cxrclf.data.fuse import FuseOptions, fuse
    from cxrclf.prepare import preprocess_folder
    from cxrclf.preprocess.params import PreprocessParams

    root = tmp_path_factory.mktemp("recipe")
    sources = synthetic.write_sources(root / "sources", seed=3, per_class=24, size=128)
    fuse(FuseOptions(cohen=sources["cohen"], rsna=sources["rsna"], nlm=sources["nlm"], workers=1), root / "fused")
    params = PreprocessParams(size=64, work_size=128, remove_text=True, text_threshold=PreprocessParams().text_threshold, denoise="adaptive-tv",
                              tv_weight=0.3, tv_k=100.0, tv_sigma=1.5, tv_iterations=8)
    preprocess_folder(root / "fused", root / "prep", params, workers=1)
    return root / "prep"


def _options(data, out, **changes) -> TrainOptions:
    return TrainOptions(**{"model": "resnet-baseline", "strategy": "oversample", "classes": 3, "data": data, "out": out, "epochs": 2, "patience": 2,
                           "batch_size": 16, "lr": 2e-3, "image_size": 48, "threads": 1, "update_latest": False} | changes)


def _losses_and_weights(folder):
    metrics = pd.read_csv(folder / "metrics.csv")
    return metrics[["train_loss", "val_loss"]].to_numpy(), load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_paper_recipe_is_the_default_and_repeats_bit_for_bit_on_this_machine(prepared, tmp_path):
    """Golden losses from one CPU are no test (another CPU's kernels move them): two runs here must agree exactly."""
    train(_options(prepared, tmp_path / "explicit", recipe="paper"))
    train(_options(prepared, tmp_path / "default"))
    train(_options(prepared, tmp_path / "again", recipe="paper"))
    explicit_losses, explicit = _losses_and_weights(tmp_path / "explicit")
    for other in ("default", "again"):
        losses, weights = _losses_and_weights(tmp_path / other)
        assert losses.shape == (2, 2) and np.isfinite(losses).all()
        assert np.array_equal(losses, explicit_losses)
        assert explicit.keys() == weights.keys() and all(torch.equal(explicit[k], weights[k]) for k in explicit)
    config = RunFolder(tmp_path / "explicit").read_config()
    assert config.training.recipe is Recipe.paper and config.training.augment is Augment.copies and config.training.lr == 2e-3
    # the recipe is what changes the weights: another seed gives other losses, so the equality above can fail
    train(_options(prepared, tmp_path / "seed1", seed=1))
    assert not np.array_equal(_losses_and_weights(tmp_path / "seed1")[0], explicit_losses)


@pytest.mark.parametrize("level", [Augment.light, Augment.strong])
def test_augmentation_is_seeded_and_never_changes_labels(prepared, level):
    frame, root = read_preprocessed(prepared)
    images = load_images(frame[frame.split == "train"].head(12), root, SCHEMES[3], 48)
    batches = Batches(images, 3, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"), level)
    plain = Batches(images, 3, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"), Augment.none)
    order, flags = np.arange(12), np.zeros(12, dtype=bool)
    first, labels = batches.get(order, flags, torch.Generator().manual_seed(7))
    again, labels_again = batches.get(order, flags, torch.Generator().manual_seed(7))
    other, _ = batches.get(order, flags, torch.Generator().manual_seed(8))
    unchanged, plain_labels = plain.get(order, flags, torch.Generator().manual_seed(7))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(labels, plain_labels) and torch.equal(labels, labels_again) and torch.equal(labels, torch.from_numpy(images.labels))
    assert not torch.allclose(first, unchanged) and first.shape == unchanged.shape
    # every image moved, not only oversampled copies
    assert all(not torch.allclose(first[i], unchanged[i]) for i in range(12))


def test_warm_up_then_cosine():
    spec = RECIPES[Recipe.small_data]
    factors = [lr_factor(step, 10, 5, spec) for step in range(50)]
    assert factors[:10] == pytest.approx([(k + 1) / 10 for k in range(10)])
    assert factors[10] == pytest.approx(1.0) and factors[30] == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 40)))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])) and factors[-1] < 0.01
    assert all(lr_factor(step, 10, 5, RECIPES[Recipe.paper]) == 1.0 for step in range(50))


@pytest.mark.slow
def test_small_data_recipe_trains_all_blocks_with_averaged_weights(prepared, tmp_path):
    summary = train(_options(prepared, tmp_path / "small", recipe="small-data", lr=None, epochs=3, patience=3))
    config = RunFolder(tmp_path / "small").read_config()
    assert config.training.recipe is Recipe.small_data and config.training.augment is Augment.light
    assert config.training.select_by.value == "auc" and config.training.lr == RECIPES[Recipe.small_data].lr
    assert config.model.trainable_blocks == "all" and summary.config.outcome.epochs_run >= 1 and summary.config == config and summary.run == tmp_path / "small"
    checkpoint = RunFolder(tmp_path / "small").load_checkpoint()
    assert {"scheduler", "ema"} <= set(checkpoint)
    # the kept weights are the moving average, not the last optimiser step
    kept = load_file(str(tmp_path / "small" / "model.safetensors"))
    assert any(not torch.equal(kept[k], checkpoint["model"][k]) for k in kept if kept[k].is_floating_point())


@pytest.fixture(scope="module")
def cv_run(prepared, tmp_path_factory):
    from cxrclf.train.loop import cross_validate

    out = tmp_path_factory.mktemp("cv") / "cv"
    cross_validate(_options(prepared, out, epochs=2, patience=2))
    return out


def test_fold_ensemble_is_the_mean_of_its_folds(run_cli, cv_run, prepared, tmp_path):
    import json

    from cxrclf.data import synthetic

    rng = np.random.default_rng(5)
    for index, finding in enumerate(("normal", "covid19", "other_pneumonia")):
        synthetic._png(tmp_path / "in" / f"{index}.png", synthetic.to_uint8(synthetic.phantom(finding, rng, 96).image))
    ensemble = json.loads(run_cli("predict", tmp_path / "in", "--model", cv_run, "--json", "--workers", "1").stdout)
    folds = [json.loads(run_cli("predict", tmp_path / "in", "--model", cv_run / f"fold-{k}", "--json", "--workers", "1").stdout) for k in range(4)]
    for index, answer in enumerate(ensemble):
        for name, p in answer["probabilities"].items():
            assert p == pytest.approx(np.mean([f[index]["probabilities"][name] for f in folds]), abs=1e-6)
    result = run_cli("evaluate", cv_run, "--bootstrap", "0", "--out", tmp_path / "e", "--json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["folds"]["n"] == 4 and len(found["folds"]["per_fold"]) == 4 and "operating_point" not in found["covid19_vs_rest"]
    assert found["folds"]["mean"]["macro_auc"] == pytest.approx(np.mean([f["macro_auc"] for f in found["folds"]["per_fold"]]))
    assert "## Fold ensemble (4 folds" in (tmp_path / "e" / "report.md").read_text()
    refused = run_cli("evaluate", cv_run, "--split", "val", "--out", tmp_path / "v")
    assert refused.exit_code == 2 and "fold ensemble" in refused.stderr


def test_tta_one_view_is_no_tta_and_predict_equals_evaluate_with_tta(run_cli, trained_run, preprocessed_synthetic, tmp_path):
    import json

    from cxrclf.inference import RunPredictor

    frame, root = read_preprocessed(preprocessed_synthetic)
    planes = load_images(frame[frame.split == "test"].head(8), root, SCHEMES[3], 48).take(np.arange(8))
    plain, once, thrice = RunPredictor(trained_run, "cpu"), RunPredictor(trained_run, "cpu", tta=1), RunPredictor(trained_run, "cpu", tta=3)
    assert np.array_equal(plain.assess(planes)[0], once.assess(planes)[0]) and np.allclose(plain.probabilities(planes), once.assess(planes)[0], atol=1e-6)
    augmented = thrice.assess(planes)[0]
    assert not np.allclose(augmented, once.assess(planes)[0]) and np.allclose(augmented.sum(axis=1), 1, atol=1e-5)
    # the same images through predict (original files) and evaluate (their split) agree with the same --tta
    result = run_cli("evaluate", trained_run, "--bootstrap", "0", "--tta", "3", "--out", tmp_path / "e")
    assert result.exit_code == 0, result.stderr
    evaluated = pd.read_csv(tmp_path / "e" / "predictions.csv").set_index("image_id")
    test = frame[frame.split == "test"].head(4)
    sources = preprocessed_synthetic.parent / "sources"
    files = [sources / {"cohen": "cohen", "rsna": "rsna", "montgomery": "nlm"}[r.source] / r.source_file for r in test.itertuples()]
    answers = json.loads(run_cli("predict", *files, "--model", trained_run, "--json", "--tta", "3", "--workers", "1").stdout)
    for image_id, answer in zip(test.image_id, answers):
        for name, p in answer["probabilities"].items():
            assert p == pytest.approx(evaluated.loc[image_id, f"prob_{name}"], abs=1e-5)
