from __future__ import annotations

import pandas as pd
import pytest

from cxrclf.data.audit import audit_frame
from cxrclf.data.confounding import Confounding, confounding


def test_counts_of_a_small_manifest():
    findings = ["covid19"] * 3 + ["normal"] * 4 + ["other_pneumonia"] * 2
    sources = ["cohen"] * 3 + ["rsna", "rsna", "rsna", "montgomery"] + ["rsna", "cohen"]
    result = confounding(findings, sources)
    assert result.findings == ("normal", "covid19", "other_pneumonia")  # the label order, not the order met
    assert result.sources == ("cohen", "montgomery", "rsna")
    assert result.counts == ((0, 1, 3), (3, 0, 0), (1, 0, 1))
    assert result.count("normal", "rsna") == 3 and result.count("covid19", "montgomery") == 0
    assert result.table() == {
        "normal": {"cohen": 0, "montgomery": 1, "rsna": 3, "total": 4},
        "covid19": {"cohen": 3, "montgomery": 0, "rsna": 0, "total": 3},
        "other_pneumonia": {"cohen": 1, "montgomery": 0, "rsna": 1, "total": 2},
    }


def test_a_class_from_one_source_is_warned_about_in_one_plain_line():
    result = confounding(["covid19", "covid19", "normal", "normal"], ["cohen", "cohen", "cohen", "rsna"])
    assert result.single_source == {"covid19": "cohen"}
    assert result.warnings == ("covid19 comes only from cohen: a model can learn the archive instead of the disease",)
    assert result.to_dict() == {
        "finding_x_source": {"normal": {"cohen": 1, "rsna": 1, "total": 2}, "covid19": {"cohen": 2, "rsna": 0, "total": 2}},
        "single_source_findings": {"covid19": "cohen"},
        "warnings": ["covid19 comes only from cohen: a model can learn the archive instead of the disease"],
    }


def test_a_class_split_over_two_sources_gives_no_warning():
    result = confounding(["covid19", "covid19", "normal", "normal"], ["cohen", "rsna", "cohen", "rsna"])
    assert result.single_source == {} and result.warnings == ()
    lopsided = confounding(["covid19"] * 9 + ["normal"] * 2, ["cohen"] * 8 + ["rsna"] + ["cohen", "rsna"])
    assert lopsided.warnings == ()  # 8 of 9 from one source: confounded in degree, shown in the table, not warned about


def test_data_of_a_single_source_confound_nothing():
    """Every class from the one source: the archive cannot tell the classes apart, so no warning."""
    result = confounding(["normal", "other_pneumonia"], ["rsna", "rsna"])
    assert result.table() == {"normal": {"rsna": 1, "total": 1}, "other_pneumonia": {"rsna": 1, "total": 1}}
    assert result.single_source == {} and result.warnings == ()


def test_the_result_is_a_frozen_value():
    result = confounding(["normal"], ["rsna"])
    assert isinstance(result, Confounding)
    with pytest.raises(AttributeError):
        result.sources = ("cohen",)


def test_audit_reports_the_same_table_and_none_without_sources():
    frame = pd.DataFrame({
        "image_id": ["a", "b", "c"], "patient_id": ["1", "2", "3"], "split": ["train", "train", "test"],
        "finding": ["covid19", "normal", "normal"], "source": ["cohen", "rsna", "cohen"],
        "sha256": ["1" * 64, "2" * 64, "3" * 64], "phash": ["0" * 64, "f" * 64, "0f" * 32],
    })
    assert audit_frame(frame)["confounding"] == confounding(frame["finding"], frame["source"]).to_dict()
    assert audit_frame(frame)["confounding"]["single_source_findings"] == {"covid19": "cohen"}
    assert audit_frame(frame.drop(columns=["source"]))["confounding"] is None


def test_audit_of_a_preprocessed_folder_repeats_the_fuse_table(run_cli, preprocessed_synthetic):
    import json

    result = run_cli("audit", preprocessed_synthetic, "--json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)["confounding"]
    fused = json.loads((preprocessed_synthetic.parent / "fused" / "fuse_report.json").read_text())["confounding"]
    assert found == fused  # no image skipped: the same table, the same warnings
    assert found["finding_x_source"]["covid19"] == {"cohen": 24, "montgomery": 0, "rsna": 0, "total": 24}
    assert found["warnings"] == ["covid19 comes only from cohen: a model can learn the archive instead of the disease",
                                 "tuberculosis comes only from montgomery: a model can learn the archive instead of the disease"]
    shown = run_cli("audit", preprocessed_synthetic)
    assert "Images per finding and source" in shown.stdout and "warning: covid19 comes only from cohen" in shown.stdout
