from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cxrclf.errors import CxrclfError
from cxrclf.preprocess.params import ADDED_FIELDS, PreprocessParams, parse_tv_weight, read_params

# preprocess.json's params as cxrclf wrote them before the lung step and the automatic TV weight
OLD = {"size": 331, "channels": 3, "fit": "stretch", "work_size": 1024, "remove_text": True, "text_threshold": 0.85, "inpaint": "telea",
       "inpaint_radius": 3.0, "denoise": "adaptive-tv", "tv_weight": 0.3, "tv_k": 100.0, "tv_sigma": 1.5, "tv_iterations": 8}


def test_parameters_written_before_the_lung_step_mean_what_they_meant(tmp_path):
    params = PreprocessParams.from_dict(OLD)
    assert params.lung == "none" and params.lung_model == "" and not params.uses_lungs
    assert params.tv_weight == 0.3  # a number forces a weight, as it always did
    (tmp_path / "preprocess.json").write_text(json.dumps({"params": OLD}))
    assert read_params(tmp_path / "preprocess.json") == params
    assert set(params.to_dict()) == set(OLD) | set(ADDED_FIELDS)


def test_a_stored_dictionary_missing_an_original_field_is_refused():
    incomplete = {k: v for k, v in OLD.items() if k != "tv_weight"}
    with pytest.raises(CxrclfError, match="lack tv_weight"):
        PreprocessParams.from_dict(incomplete)


def test_auto_is_the_default_and_survives_json():
    params = PreprocessParams()
    assert params.tv_weight == "auto"
    assert PreprocessParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    assert parse_tv_weight("auto") == "auto" and parse_tv_weight("AUTO") == "auto" and parse_tv_weight("0.25") == 0.25 and parse_tv_weight(None) is None
    for bad in ("strong", "-1", "nan"):
        with pytest.raises(CxrclfError, match="TV weight must be a number >= 0 or 'auto'"):
            parse_tv_weight(bad)
    with pytest.raises(CxrclfError, match="tv_weight must be a number or 'auto'"):
        replace(params, tv_weight="heavy").validate()


def test_the_lung_step_carries_its_segmenter_identity():
    with pytest.raises(CxrclfError, match="lung crop needs lung_model"):
        replace(PreprocessParams(), lung="crop").validate()
    with pytest.raises(CxrclfError, match="lung_model is set but lung is none"):
        replace(PreprocessParams(), lung_model="/runs/lung").validate()
    with pytest.raises(CxrclfError, match="lung must be one of none, crop, mask"):
        replace(PreprocessParams(), lung="lobes").validate()
    params = replace(PreprocessParams(), lung="mask", lung_model="/runs/lung", lung_model_sha256="f" * 64).validate()
    assert PreprocessParams.from_dict(params.to_dict()) == params and params.uses_lungs


def test_run_configs_written_before_the_lung_step_still_load():
    """A run's config.json whose preprocess entry lacks the lung fields (every run made before them)."""
    from cxrclf.runs import RunConfig

    document = {"format_version": 2, "status": "finished",
                "model": {"name": "resnet-baseline", "class_names": ["normal", "covid19", "other"], "input_size": 48, "in_chans": 3,
                          "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
                "preprocess": OLD, "data": {"folder": "data/preprocessed"}, "training": {}}
    config = RunConfig.from_dict(document)
    assert config.preprocess == PreprocessParams.from_dict(OLD) and config.preprocess.lung == "none"


def test_choice_fields_are_enum_members_and_files_keep_their_strings(tmp_path):
    from cxrclf.choices import Denoise, Fit, Inpaint, Lung

    params = PreprocessParams.from_dict(OLD | {"fit": "pad", "inpaint": "ns", "denoise": "none"})
    # members, not strings that equal them ("pad" == Fit.pad holds for a str enum, identity does not)
    assert params.fit is Fit.pad and params.inpaint is Inpaint.ns and params.denoise is Denoise.none and params.lung is Lung.none
    stored = params.to_dict()
    assert [type(stored[name]) for name in ("fit", "inpaint", "denoise", "lung")] == [str] * 4  # plain strings: json and equality as before
    assert (stored["fit"], stored["inpaint"], stored["denoise"], stored["lung"]) == ("pad", "ns", "none", "none")
    assert json.loads(json.dumps(stored)) == {**OLD, "fit": "pad", "inpaint": "ns", "denoise": "none", "lung": "none", "lung_model": "",
                                              "lung_model_sha256": "", "lung_margin": 0.05}
    assert PreprocessParams(fit="pad", inpaint="ns", denoise="none", tv_weight=0.3, text_threshold=0.85) == replace(
        params, tv_weight=0.3) and PreprocessParams(fit=Fit.pad) == PreprocessParams(fit="pad")
    # a value outside the choices is named with every other problem, not raised while constructing
    with pytest.raises(CxrclfError, match=r"fit must be one of stretch, pad, not 'wide'; denoise must be one of adaptive-tv, none, not 'heavy'"):
        PreprocessParams.from_dict(OLD | {"fit": "wide", "denoise": "heavy"})
