"""Unlearning the source: the gradient-reversal layer, the class-conditional targets, and training with the adversary."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from cxrclf.errors import CxrclfError
from cxrclf.runs import RunFolder
from cxrclf.train.loop import TrainOptions, train
from cxrclf.train.unlearn import SourceUnlearner, ganin_ramp, reverse_gradient, source_targets, unlearning_settings

CLASSES = ("normal", "covid19", "other", "tuberculosis")


def test_gradient_reversal_is_the_identity_forward_and_minus_lambda_times_the_gradient_backward():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    w = torch.randn(5, 7, dtype=torch.float64, generator=generator)
    for scale in (0.0, 0.3, 2.5):
        out = reverse_gradient(x, scale)
        assert torch.equal(out, x)
        (grad,) = torch.autograd.grad((out * w).sum(), x)  # d/dx of GRL(x) * w is -lambda * w
        assert torch.allclose(grad, -scale * w, rtol=0, atol=1e-15)
    # a deeper graph against autograd without the layer: what flows back through it is turned and scaled, the layer after it learns as ever
    layer = torch.nn.Linear(7, 3).double()
    plain = torch.autograd.grad(layer(torch.tanh(x)).square().sum(), [x, layer.weight])
    turned = torch.autograd.grad(layer(reverse_gradient(torch.tanh(x), 0.7)).square().sum(), [x, layer.weight])
    assert plain[0].abs().min() > 0
    assert torch.allclose(turned[0], -0.7 * plain[0], rtol=1e-12, atol=0) and torch.equal(turned[1], plain[1])


def test_ganin_ramp_rises_from_zero_to_nearly_one():
    assert ganin_ramp(0.0) == 0.0 and ganin_ramp(-1.0) == 0.0
    assert ganin_ramp(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1) and ganin_ramp(1.0) == ganin_ramp(7.0) == pytest.approx(0.9999092)
    values = [ganin_ramp(p / 20) for p in range(21)]
    assert all(a < b for a, b in zip(values, values[1:]))


def test_class_conditional_targets_skip_single_source_classes():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 0])
    sources = ["rsna", "montgomery", "rsna", "cohen", "cohen", "cohen", "rsna", "rsna", "montgomery", "rsna"]
    targets = source_targets(labels, sources, CLASSES)
    assert targets.conditioned == (0, 2) and targets.sources == (("montgomery", "rsna"), ("cohen", "rsna"))
    assert targets.heads.tolist() == [0, 0, 0, -1, -1, 1, 1, 1, -1, 0]
    assert targets.targets.tolist() == [1, 0, 1, -1, -1, 0, 1, 1, -1, 1]  # the position of the image's source among its class's sources
    # normal: 4 images, 3 RSNA and 1 Montgomery; other: 1 Cohen and 2 RSNA; each source of a class weighs the same
    assert targets.weights.tolist() == pytest.approx([4 / 6, 2.0, 4 / 6, 0, 0, 1.5, 0.75, 0.75, 0, 4 / 6])
    assert targets.skipped == ("covid19", "tuberculosis") and targets.chance == 0.5
    settings = unlearning_settings(0.3, targets)
    assert settings.classes == {"normal": ("montgomery", "rsna"), "other": ("cohen", "rsna")} and settings.skipped == ("covid19", "tuberculosis")
    lone = source_targets(np.array([0, 1, 1]), ["rsna", "cohen", "cohen"], CLASSES[:2])
    assert lone.conditioned == () and (lone.heads == -1).all() and (lone.weights == 0).all()
    with pytest.raises(CxrclfError, match="two or more sources"):
        unlearning_settings(0.3, lone)


def test_adversary_loss_is_the_weighted_cross_entropy_of_each_class_head():
    labels = np.array([0, 0, 0, 1, 2, 2, 2])
    targets = source_targets(labels, ["rsna", "montgomery", "rsna", "cohen", "cohen", "rsna", "rsna"], CLASSES[:3])
    settings = unlearning_settings(0.8, targets)
    unlearner = SourceUnlearner(settings, targets, num_features=6, total_steps=10, lr=1e-3, seed=0, device=torch.device("cpu"))
    features = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    batch = np.array([0, 1, 3, 5])  # normal RSNA and Montgomery, COVID-19 (no head), other RSNA
    logits = unlearner.adversary(features)
    loss = unlearner.loss(logits, batch)
    w = targets.weights[batch]
    expected = (w[0] * F.cross_entropy(logits[0][0:1], torch.tensor([1])) + w[1] * F.cross_entropy(logits[0][1:2], torch.tensor([0]))
                + w[3] * F.cross_entropy(logits[1][3:4], torch.tensor([1]))) / w.sum()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in unlearner.adversary.parameters())  # what DDP needs of every step
    guessed = [int(logits[0][0].argmax() == 1), int(logits[0][1].argmax() == 0), int(logits[1][3].argmax() == 1)]
    summary = unlearner.epoch_summary()
    assert summary["source_loss"] == pytest.approx(float(expected.detach()), abs=1e-6)
    assert summary["source_accuracy"] == pytest.approx(np.mean(guessed), abs=1e-6)  # three (class, source) cells, one image each
    assert summary["source_lambda"] == 0.0
    unlearner.steps = 5
    assert unlearner.scale() == pytest.approx(0.8 * ganin_ramp(0.5))
    # a batch with no targeted image: zero loss, yet every head has a gradient
    unlearner.adversary.zero_grad(set_to_none=True)
    empty = unlearner.loss(unlearner.adversary(features[:1]), np.array([3]))
    empty.backward()
    assert float(empty.detach()) == 0.0 and all(p.grad is not None and not p.grad.any() for p in unlearner.adversary.parameters())


def _options(data, out, **changes) -> TrainOptions:
    return TrainOptions(**{"model": "resnet-baseline", "strategy": "oversample", "classes": 3, "data": data, "out": out, "epochs": 2, "patience": 2,
                           "batch_size": 16, "lr": 2e-3, "image_size": 48, "threads": 1, "update_latest": False} | changes)


class _Stop(Exception):
    pass


def _stop_after_first_epoch(row: dict) -> None:
    raise _Stop()


@pytest.mark.slow
def test_training_unlearns_the_source_resumes_exactly_and_keeps_the_adversary_out_of_the_weights(run_cli, preprocessed_synthetic, tmp_path):
    plain = train(_options(preprocessed_synthetic, tmp_path / "plain"))
    off = train(_options(preprocessed_synthetic, tmp_path / "off", unlearn_source=0.0))
    train(_options(preprocessed_synthetic, tmp_path / "on", unlearn_source=0.5))
    with pytest.raises(_Stop):
        train(_options(preprocessed_synthetic, tmp_path / "cut", unlearn_source=0.5), on_epoch=_stop_after_first_epoch)
    train(_options(preprocessed_synthetic, tmp_path / "cut", unlearn_source=0.5, resume=True))
    weights = {name: load_file(str(tmp_path / name / "model.safetensors")) for name in ("plain", "off", "on", "cut")}
    metrics = {name: pd.read_csv(tmp_path / name / "metrics.csv").drop(columns=["images_per_s", "seconds"]) for name in weights}
    # weight 0 is the training without the flag, bit for bit
    assert plain.config.training.unlearn_source is None and off.config.training.unlearn_source is None
    assert all(torch.equal(weights["plain"][k], weights["off"][k]) for k in weights["plain"]) and metrics["plain"].equals(metrics["off"])
    # the adversary trains beside the classifier and is recorded, but model.safetensors holds the classifier alone
    assert weights["on"].keys() == weights["plain"].keys() and not any(k.startswith(("adversary", "classifier")) for k in weights["on"])
    assert not all(torch.equal(weights["plain"][k], weights["on"][k]) for k in weights["plain"])
    on = metrics["on"]
    assert {"source_loss", "source_accuracy", "source_lambda"} <= set(on.columns) and "source_loss" not in metrics["plain"].columns
    assert len(on) == 2 and np.isfinite(on[["source_loss", "source_accuracy"]].to_numpy()).all() and ((on.source_accuracy >= 0) & (on.source_accuracy <= 1)).all()
    assert 0 < on.source_lambda.iloc[0] < on.source_lambda.iloc[1] < 0.5
    config = RunFolder(tmp_path / "on").read_config()
    spec = config.training.unlearn_source
    assert spec.weight == 0.5 and spec.ramp == "ganin" and spec.gamma == 10.0 and spec.skipped == ("covid19",)
    assert spec.classes == {"normal": ("cohen", "montgomery", "rsna"), "other": ("cohen", "montgomery", "rsna")}
    assert set(RunFolder(tmp_path / "on").load_checkpoint()["adversary"]) == {"module", "optimizer", "steps"}
    model, _ = RunFolder(tmp_path / "on").load()  # predict's loader: the classifier's keys only
    assert set(model.state_dict()) == set(weights["on"])
    assert run_cli("card", tmp_path / "on", "--out", tmp_path / "card.md").exit_code == 0
    card = (tmp_path / "card.md").read_text()
    assert "--unlearn-source 0.5" in card and "| source unlearning |" in card and "normal (cohen, montgomery, rsna)" in card
    # stopped after one epoch and resumed: the adversary, its optimiser and the ramp continue exactly
    assert all(torch.equal(weights["on"][k], weights["cut"][k]) for k in weights["on"]) and metrics["on"].equals(metrics["cut"])
