"""The paper's spellings of its models resolve to the names cxrclf builds; nothing else is matched loosely."""

from __future__ import annotations

import json

import pytest
import timm

from cxrclf import folders
from cxrclf.errors import CxrclfError
from cxrclf.models.names import BASELINE_NAME, MODEL_ALIASES, PAPER_MODELS, alias_target, model_label
from cxrclf.models.zoo import check_model_name
from cxrclf.runs import Fields, ModelSpec


@pytest.mark.parametrize(
    "requested, canonical",
    [
        ("nasnetlarge", "nasnetalarge"), ("NASNetLarge", "nasnetalarge"), ("NASNet-Large", "nasnetalarge"), ("nasnetalarge", "nasnetalarge"),
        ("inceptionv3", "inception_v3"), ("InceptionV3", "inception_v3"), ("Inception-V3", "inception_v3"),
        ("inceptionresnetv2", "inception_resnet_v2"), ("InceptionResNetV2", "inception_resnet_v2"), ("Inception-ResNet-v2", "inception_resnet_v2"),
        ("densenet169", "densenet169"), ("DenseNet169", "densenet169"), ("DenseNet-169", "densenet169"),
        ("resnet", "resnet-baseline"), ("ResNet", "resnet-baseline"), ("resnet_baseline", "resnet-baseline"),
        ("ResNetBaseline", "resnet-baseline"), ("resnet-baseline", "resnet-baseline"), ("  NASNetLarge ", "nasnetalarge"),
    ],
)
def test_paper_spellings_resolve_to_the_canonical_name(requested, canonical):
    assert check_model_name(requested) == canonical


@pytest.mark.parametrize("name", ["resnet50", "resnet50.a1_in1k", "mobilenetv3_small_050", "densenet121", "inception_v4", "test_vit"])
def test_timm_names_pass_through_unchanged(name):
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", ["resnet-50", "Resnet50", "ResNet50", "mobilenetv3-small-050", "DenseNet121", "Inception_V4", "NASNet"])
def test_other_names_are_not_matched_loosely(name):
    with pytest.raises(CxrclfError, match=f"unknown model '{name}'"):
        check_model_name(name)


def test_the_alias_table_is_unambiguous():
    assert PAPER_MODELS == (BASELINE_NAME, "inception_v3", "inception_resnet_v2", "densenet169", "nasnetalarge")
    assert all(timm.is_model(name) for name in PAPER_MODELS if name != BASELINE_NAME)
    claimed: dict[str, str] = {}
    for canonical, spellings in MODEL_ALIASES.items():
        for spelling in (canonical, *spellings):
            assert alias_target(spelling) == canonical
            # a spelling that is itself a timm name would shadow (or be shadowed by) that model
            assert spelling == canonical or not timm.is_model(spelling)
            loose = spelling.lower().replace("-", "").replace("_", "")
            assert claimed.setdefault(loose, canonical) == canonical, f"{spelling!r} is claimed by {claimed[loose]} and {canonical}"


def test_label_names_the_requested_spelling_only_when_it_differs():
    assert model_label("nasnetalarge", "NASNetLarge") == "nasnetalarge (requested as NASNetLarge)"
    assert model_label("nasnetalarge", "nasnetalarge") == "nasnetalarge"
    assert model_label("nasnetalarge", None) == "nasnetalarge"


def test_model_spec_keeps_the_requested_name_and_old_configs_load_without_it():
    document = {"name": "nasnetalarge", "class_names": ["normal", "covid19", "other"], "input_size": 331, "in_chans": 3,
                "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    old = ModelSpec.parse(Fields(document, "model.", None))
    assert old.requested_name is None and old.label == "nasnetalarge"
    new = ModelSpec.parse(Fields({**document, "requested_name": "NASNetLarge"}, "model.", None))
    assert (new.name, new.requested_name, new.label) == ("nasnetalarge", "NASNetLarge", "nasnetalarge (requested as NASNetLarge)")


def test_default_run_folder_uses_the_canonical_name():
    from cxrclf.train.loop import TrainOptions

    for spelling in ("NASNetLarge", "nasnetalarge"):
        assert TrainOptions(model=spelling, strategy="oversample", classes=3).default_out() == folders.RUNS / "nasnetalarge-RM3"


@pytest.mark.parametrize("model", ["nasnetalarge", "NASNetLarge"])
def test_the_missions_train_line_passes_name_validation(run_cli, tmp_path, monkeypatch, model):
    """Verbatim (no --data): it gets past the model name and stops at the missing default data folder."""
    monkeypatch.chdir(tmp_path)
    result = run_cli("train", "--model", model, "--strategy", "oversample", "--classes", "3")
    assert result.exit_code == 2
    error = result.stderr.strip().splitlines()[-1]
    assert str(folders.PREPROCESSED) in error and "unknown model" not in error
    assert not (tmp_path / "runs").exists()


def test_train_rejects_an_unknown_name_before_reading_data(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("train", "--model", "NASNetLarg", "--strategy", "oversample", "--classes", "3")
    assert result.exit_code == 2
    assert "unknown model 'NASNetLarg'" in result.stderr and "did you mean" in result.stderr


@pytest.mark.slow
def test_run_and_report_show_the_canonical_and_the_requested_name(run_cli, preprocessed_synthetic, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "--model", "ResNet", "--strategy", "oversample", "--classes", "3", "--data", preprocessed_synthetic,
                     "--out", run, "--image-size", "32", "--batch-size", "32", "--epochs", "1", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    assert "model resnet-baseline (requested as ResNet): " in result.stdout + result.stderr
    config = json.loads((run / "config.json").read_text())
    assert (config["model"]["name"], config["model"]["requested_name"], config["status"]) == ("resnet-baseline", "ResNet", "finished")
    assert "started resnet-baseline (requested as ResNet) RM3" in (run / "train.log").read_text()

    evaluation = tmp_path / "eval"
    result = run_cli("evaluate", run, "--bootstrap", "0", "--out", evaluation)
    assert result.exit_code == 0, result.stderr
    assert (evaluation / "report.md").read_text().splitlines()[0] == "# Evaluation of resnet-baseline (requested as ResNet) (RM3)"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert (metrics["model"], metrics["requested_model"]) == ("resnet-baseline", "ResNet")

    # another spelling of the same model resumes the same run
    result = run_cli("train", "--model", "resnet-baseline", "--strategy", "oversample", "--classes", "3", "--data", preprocessed_synthetic,
                     "--out", run, "--image-size", "32", "--batch-size", "32", "--epochs", "2", "--workers", "1", "--resume")
    assert result.exit_code == 0, result.stderr
    config = json.loads((run / "config.json").read_text())
    assert (config["model"]["name"], config["model"]["requested_name"], config["outcome"]["epochs_run"]) == ("resnet-baseline", None, 2)
