from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from cxrclf.labels import SCHEMES
from cxrclf.train import loop as train_loop
from cxrclf.data.manifest import select_split as select
from cxrclf.train.data import load_images, read_preprocessed
from cxrclf.train.loop import Batches, Distributed, Trainer
from cxrclf.runs import RunFolder

FAST = ["--model", "resnet-baseline", "--image-size", "48", "--batch-size", "16", "--lr", "2e-3", "--workers", "1"]


def _train(run_cli, data, out, *extra):
    return run_cli("train", "--data", data, "--out", out, *FAST, *extra)


@pytest.mark.slow
def test_small_model_learns(run_cli, preprocessed_synthetic, tmp_path):
    result = _train(run_cli, preprocessed_synthetic, tmp_path / "runs" / "r", "--strategy", "oversample", "--classes", "4", "--epochs", "8", "--patience", "8")
    assert result.exit_code == 0, result.stderr
    metrics = pd.read_csv(tmp_path / "runs" / "r" / "metrics.csv")
    assert len(metrics) == 8
    assert metrics.train_loss.iloc[-1] < 0.7 * metrics.train_loss.iloc[0]
    model, config = RunFolder(tmp_path / "runs" / "r").load()
    assert config.class_names == ["normal", "covid19", "other_pneumonia", "tuberculosis"] and config.scenario == "RM4"
    assert config.preprocess.size == 64 and config.model.input_size == 48 and config.finished
    frame, root = read_preprocessed(preprocessed_synthetic)
    test = load_images(select(frame, "test"), root, SCHEMES[4], 48)
    trainer = Trainer(model, 1e-3, None, torch.device("cpu"), Distributed())
    probabilities, _ = trainer.predict(Batches(test, config.model.in_chans, config.model.mean, config.model.std, torch.device("cpu")), len(test), 32)
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(test.labels, probabilities, multi_class="ovr", average="macro")
    assert auc > 0.9, f"test macro AUC {auc:.3f}"
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and latest.resolve() == (tmp_path / "runs" / "r").resolve()


@pytest.mark.slow
def test_weighted_strategy_uses_eq1_and_never_sees_val_or_test(run_cli, preprocessed_synthetic, tmp_path, monkeypatch):
    seen: list[np.ndarray] = []
    original = Trainer.fit_epoch

    def spy(self, batches, order, augment, *args, **kwargs):
        seen.append(order.copy())
        return original(self, batches, order, augment, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit_epoch", spy)
    result = _train(run_cli, preprocessed_synthetic, tmp_path / "w", "--strategy", "weighted", "--classes", "3", "--epochs", "1", "--class-constant", "covid19=2")
    assert result.exit_code == 0, result.stderr
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    counts = config["outcome"]["train_class_counts"]
    total = sum(counts.values())
    expected = {c: (2.0 if c == "covid19" else 1.0) * total / (3 * n) for c, n in counts.items()}
    assert config["outcome"]["class_weights"] == pytest.approx(expected)
    frame, _ = read_preprocessed(preprocessed_synthetic)
    assert sum(counts.values()) == (frame.split == "train").sum()
    assert len(seen) == 1 and sorted(seen[0].tolist()) == list(range(total))  # indices into the train split only


@pytest.mark.slow
def test_oversampled_training_order_is_balanced_and_train_only(run_cli, preprocessed_synthetic, tmp_path, monkeypatch):
    captured = []
    original = train_loop.imbalance.oversample_epoch

    def spy(labels, num_classes, rng):
        order, augment = original(labels, num_classes, rng)
        captured.append((labels, order))
        return order, augment

    monkeypatch.setattr(train_loop.imbalance, "oversample_epoch", spy)
    assert _train(run_cli, preprocessed_synthetic, tmp_path / "o", "--strategy", "oversample", "--classes", "2", "--epochs", "2").exit_code == 0
    frame, _ = read_preprocessed(preprocessed_synthetic)
    train_covid = int(((frame.split == "train") & (frame.finding == "covid19")).sum())
    train_total = int((frame.split == "train").sum())
    for labels, order in captured:
        assert len(labels) == train_total
        assert np.bincount(labels[order]).tolist() == [train_total - train_covid] * 2


@pytest.mark.slow
def test_existing_run_is_refused_and_bad_weights_rejected(run_cli, preprocessed_synthetic, tmp_path):
    out = tmp_path / "r"
    assert _train(run_cli, preprocessed_synthetic, out, "--strategy", "weighted", "--classes", "2", "--epochs", "1").exit_code == 0
    again = _train(run_cli, preprocessed_synthetic, out, "--strategy", "weighted", "--classes", "2", "--epochs", "1")
    assert again.exit_code == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr
    wrong = tmp_path / "wrong.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(wrong))
    bad = run_cli("train", "--data", preprocessed_synthetic, "--out", tmp_path / "b", "--model", "resnet18", "--image-size", "48",
                  "--strategy", "weighted", "--classes", "2", "--weights", wrong, "--epochs", "1")
    assert bad.exit_code == 2 and str(wrong) in bad.stderr and "match" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "b" / "model.safetensors").exists()
    missing = run_cli("train", "--data", tmp_path / "nothing", "--model", "resnet18", "--strategy", "weighted", "--classes", "2")
    assert missing.exit_code == 2 and "no manifest" in missing.stderr


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cxrclf", "train", *args]


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(preprocessed_synthetic, tmp_path):
    common = ["--data", str(preprocessed_synthetic), *FAST, "--strategy", "oversample", "--classes", "4", "--epochs", "4", "--patience", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(_cli(*common, "--out", str(tmp_path / "full")), check=True, capture_output=True, env=env, timeout=600)
    process = subprocess.Popen(_cli(*common, "--out", str(tmp_path / "cut")), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    metrics = tmp_path / "cut" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-epoch 3 (two epochs done)
    process.wait()
    assert len(metrics.read_text().splitlines()) - 1 in (2, 3)
    resumed = subprocess.run(_cli(*common, "--out", str(tmp_path / "cut"), "--resume"), capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    full, cut = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    assert pd.read_csv(tmp_path / "full" / "metrics.csv").drop(columns=["images_per_s", "seconds"]).equals(
        pd.read_csv(tmp_path / "cut" / "metrics.csv").drop(columns=["images_per_s", "seconds"]))


@pytest.mark.slow
def test_cross_validation_writes_every_fold(run_cli, preprocessed_synthetic, tmp_path):
    result = _train(run_cli, preprocessed_synthetic, tmp_path / "cv", "--strategy", "weighted", "--classes", "2", "--epochs", "1", "--cv")
    assert result.exit_code == 0, result.stderr
    summary = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
    assert summary["folds"] == 4 and len(summary["val_loss"]["values"]) == 4
    for k in range(4):
        config = json.loads((tmp_path / "cv" / f"fold-{k}" / "config.json").read_text())
        assert config["data"]["fold"] == k
    assert summary["val_loss"]["mean"] == pytest.approx(np.mean(summary["val_loss"]["values"]))


@pytest.mark.slow
def test_torchrun_two_processes_write_one_run(preprocessed_synthetic, tmp_path):
    args = ["--data", str(preprocessed_synthetic), *FAST, "--strategy", "oversample", "--classes", "3", "--epochs", "2", "--patience", "5"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run(_cli(*args, "--out", str(tmp_path / "runs" / "one")), capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517", "-m", "cxrclf", "train", *args, "--out", str(tmp_path / "runs" / "two")]
    double = subprocess.run(torchrun, capture_output=True, text=True, env=env, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["latest", "one", "two"]
    one, two = pd.read_csv(tmp_path / "runs" / "one" / "metrics.csv"), pd.read_csv(tmp_path / "runs" / "two" / "metrics.csv")
    assert len(one) == len(two) == 2
    assert json.loads((tmp_path / "runs" / "two" / "config.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_tensorboard_logs_or_says_what_to_install(run_cli, preprocessed_synthetic, tmp_path):
    import importlib.util

    result = _train(run_cli, preprocessed_synthetic, tmp_path / "tb", "--strategy", "weighted", "--classes", "2", "--epochs", "1", "--tensorboard")
    if importlib.util.find_spec("tensorboard") is None:
        assert result.exit_code == 2 and "pip install 'cxrclf[tensorboard]'" in result.stderr and not (tmp_path / "tb").exists()
    else:
        assert result.exit_code == 0, result.stderr
        assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_select_by_auc_needs_two_validation_classes(run_cli, preprocessed_synthetic, tmp_path):
    import shutil

    data = tmp_path / "prep"
    shutil.copytree(preprocessed_synthetic, data)
    manifest = pd.read_csv(data / "manifest.csv")
    manifest.loc[(manifest.split == "val") & (manifest.finding == "covid19"), "split"] = "train"
    manifest.to_csv(data / "manifest.csv", index=False)
    result = _train(run_cli, data, tmp_path / "r", "--strategy", "weighted", "--classes", "2", "--epochs", "1", "--select-by", "auc")
    assert result.exit_code == 2 and "at least two classes" in result.stderr and not (tmp_path / "r").exists()
