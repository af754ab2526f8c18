"""``cxrclf card``: the model card's numbers are the files' numbers, and it names the files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def evaluated_run(trained_run, tmp_path_factory) -> Path:
    """A private copy of the trained run with its own test evaluation inside (RUN/evaluation-own-test/)."""
    from cxrclf.evaluate.evaluation import EvaluateOptions, evaluate

    run = tmp_path_factory.mktemp("card") / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("evaluation-*"))  # other tests evaluate the shared run too
    evaluate(EvaluateOptions(run=run, bootstrap=50, workers=1))
    return run


def _table(card: str, title: str) -> list[list[str]]:
    """The rows of the Markdown table that follows ``title``."""
    block = card.split(title, 1)[1].split("\n\n", 2)[1]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def test_card_numbers_come_from_the_files_it_names(run_cli, evaluated_run, preprocessed_synthetic):
    result = run_cli("card", evaluated_run)
    assert result.exit_code == 0, result.stderr
    card = (evaluated_run / "MODEL_CARD.md").read_text()
    for heading in ("Intended use", "Training data", "Model and recipe", "Preprocessing", "Performance", "How much of the score is the archive",
                    "Out-of-distribution guard", "Known failure modes", "How to reproduce it"):
        assert f"\n## {heading}\n" in card
    assert "**not a medical device**" in card
    cited = [name for line in re.findall(r"^Source: (.+)$", card, re.M) for name in re.findall(r"`([^`]+)`", line) if name.startswith("/")]
    assert len(cited) >= 6 and all(Path(name).is_file() for name in cited), cited  # every file the card cites is there
    # the training table: the manifest's train split, counted independently
    manifest = pd.read_csv(preprocessed_synthetic / "manifest.csv")
    train = manifest[manifest["split"] == "train"]
    classes = train["finding"].map({"normal": "normal", "covid19": "covid19", "other_pneumonia": "other", "tuberculosis": "other"})
    rows = {row[0]: row[1:] for row in _table(card, f"**train**: {len(train)} images of {train['patient_id'].nunique()} patients")}
    sources = sorted(train["source"].unique())
    for name in ("normal", "covid19", "other"):
        assert rows[name] == [str(int(((classes == name) & (train["source"] == s)).sum())) for s in sources] + [str(int((classes == name).sum()))]
    config = json.loads((evaluated_run / "config.json").read_text())
    assert rows["covid19"][-1] == str(config["outcome"]["train_class_counts"]["covid19"])
    from cxrclf.io import sha256_file

    assert f"model.safetensors {sha256_file(evaluated_run / 'model.safetensors')}" in card
    metrics = json.loads((evaluated_run / "evaluation-own-test" / "metrics.json").read_text())
    low, high = metrics["intervals"]["macro_auc"]
    assert f"| AUC | {metrics['point']['macro_auc']:.3f} [{low:.3f}, {high:.3f}] |" in card
    for source, values in metrics["per_source"].items():
        assert f"| {source} | {values['n']} | {values['accuracy']:.3f} |" in card
    within = [r for r in metrics["shortcut"]["within_source"] if not r["skipped"]]
    assert f"{len(within)} class-and-source pairs have both positives and negatives" in card
    assert f"threshold {config['guard']['threshold']:.4g}" in card
    fuse_report = json.loads((Path(json.loads((preprocessed_synthetic / "preprocess.json").read_text())["fused"]) / "fuse_report.json").read_text())
    assert fuse_report["single_source_findings"]  # the synthetic sources give COVID-19 to Cohen alone
    for finding, source in fuse_report["single_source_findings"].items():
        assert f"every {finding} image in its data comes from {source}" in card
    assert f"cxrclf train --model resnet-baseline --strategy oversample --classes 3 --data {config['data']['folder']}" in card
    assert "--image-size 48" in card and f"--epochs {config['training']['epochs']}" in card


def test_a_run_whose_data_is_gone_says_so(run_cli, evaluated_run, tmp_path):
    run = tmp_path / "moved"
    shutil.copytree(evaluated_run, run, ignore=shutil.ignore_patterns("evaluation-*", "MODEL_CARD.md"))
    config = json.loads((run / "config.json").read_text())
    config["data"]["folder"] = str(tmp_path / "nowhere")
    (run / "config.json").write_text(json.dumps(config))
    result = run_cli("card", run, "--out", tmp_path / "card.md")
    assert result.exit_code == 0, result.stderr
    card = (tmp_path / "card.md").read_text()
    counts = config["outcome"]["train_class_counts"]
    assert "is gone, so its images are not described here" in card and "**train**" not in card
    assert f"normal {counts['normal']}, covid19 {counts['covid19']}, other {counts['other']} training images per class" in card
    assert "No evaluation given or found in the run folder" in card


def test_card_refuses_to_replace_files(run_cli, evaluated_run, tmp_path):
    first = run_cli("card", evaluated_run, "--out", tmp_path / "c.md")
    again = run_cli("card", evaluated_run, "--out", tmp_path / "c.md")
    assert first.exit_code == 0 and again.exit_code == 2 and "pass --overwrite" in again.stderr
    assert run_cli("card", evaluated_run, "--out", tmp_path / "c.md", "--overwrite").exit_code == 0
    into = run_cli("card", evaluated_run, "--out", evaluated_run / "evaluation-own-test" / "card.md")
    assert into.exit_code == 2 and "lies inside the input" in into.stderr
    config = run_cli("card", evaluated_run, "--out", evaluated_run / "config.json")
    assert config.exit_code == 2 and "config.json" in config.stderr
    (tmp_path / "empty").mkdir()
    not_evaluation = run_cli("card", evaluated_run, "--evaluation", tmp_path / "empty", "--out", tmp_path / "d.md")
    assert not_evaluation.exit_code == 2 and "no metrics.json" in not_evaluation.stderr


def test_a_fold_ensemble_card_describes_every_fold(run_cli, trained_run, tmp_path):
    parent = tmp_path / "cv"
    for k in (0, 1):
        shutil.copytree(trained_run, parent / f"fold-{k}")
    result = run_cli("card", parent)
    assert result.exit_code == 0, result.stderr
    card = (parent / "MODEL_CARD.md").read_text()
    assert "ensemble of 2 folds" in card and "**train + val (every fold)**" in card and "--cv" in card
    assert card.count("config.json ") >= 2 and "No operating point" in card
