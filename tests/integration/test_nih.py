"""Fuse the real NIH ChestX-ray14 and RSNA images in ../shared/data/cxr-mini (skipped where absent).

Twelve RSNA DICOMs there carry NIH pixels under other ids (PROVENANCE.csv names the NIH
file each came from): fuse must find exactly those twelve by their pixels.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import PurePosixPath

import pytest

from cxrclf.data.manifest import read_manifest

pytestmark = pytest.mark.integration


def _nih_rows(shared_data) -> dict[str, dict[str, str]]:
    with open(shared_data / "nih" / "Data_Entry_2017.csv", newline="") as handle:
        return {row["Image Index"]: row for row in csv.DictReader(handle)}


def _shared_pairs(shared_data) -> dict[str, str]:
    """RSNA file (as fuse names it) -> the NIH file with its pixels, from PROVENANCE.csv (an oracle independent of hashing)."""
    nih_names = set(_nih_rows(shared_data))
    with open(shared_data / "PROVENANCE.csv", newline="") as handle:
        return {row["file"].removeprefix("rsna/"): PurePosixPath(row["path_in_repository"]).name for row in csv.DictReader(handle)
                if row["file"].startswith("rsna/") and PurePosixPath(row["path_in_repository"]).name in nih_names}


@pytest.fixture(scope="module")
def fused(shared_data, tmp_path_factory):
    from cxrclf.data.fuse import FuseOptions, fuse

    out = tmp_path_factory.mktemp("nih") / "fused"
    options = FuseOptions(nih=shared_data / "nih", rsna=shared_data / "rsna", views=("PA", "AP"), rsna_not_normal="normal", workers=2)
    return out, fuse(options, out)


def _finding(labels: str) -> str:
    return "normal" if labels == "No Finding" else "other_pneumonia"


def test_the_twelve_shared_xrays_are_found(fused, shared_data):
    out, report = fused
    truth = _shared_pairs(shared_data)
    assert len(truth) == 12
    found = {}
    for entry in report["same_xray_across_sources"]:
        by_source = {c["source"]: c["source_file"] for c in entry["copies"]}
        found[by_source["rsna"]] = PurePosixPath(by_source["nih"]).name
    assert found == truth
    # RSNA's label agrees with NIH's (both pneumonia) for the 6 "Lung Opacity" images; the
    # 6 others are RSNA "Normal" (1) or "Not Normal", read as normal here (5): excluded
    assert report["same_xray_by_source_pair"] == {"nih+rsna": {"x_rays": 12, "kept once": 6, "excluded, findings disagree": 6}}
    kept = [e for e in report["same_xray_across_sources"] if e["kept"]]
    assert all(e["kept"].startswith("nih-") for e in kept)
    manifest = read_manifest(out)
    assert not set(manifest["source_file"]) & set(truth)


def test_nih_labels_views_and_patients_follow_the_csv(fused, shared_data):
    out, report = fused
    rows = _nih_rows(shared_data)
    excluded = {PurePosixPath(e["source_file"]).name for e in report["excluded_rows"] if e["source"] == "nih"}
    assert len(excluded) == 6
    expected = Counter(_finding(row["Finding Labels"]) for name, row in rows.items() if name not in excluded)
    assert expected == {"normal": 50, "other_pneumonia": 56}  # 112 rows: 50 "No Finding", 62 with Pneumonia, 6 of them excluded
    assert {k: v for k, v in report["source_x_finding"]["nih"].items() if v} == {"normal": 50, "other_pneumonia": 56, "total": 106}
    manifest = read_manifest(out)
    nih = manifest[manifest.source == "nih"]
    for _, image in nih.iterrows():
        row = rows[PurePosixPath(image.source_file).name]
        assert (image.finding, image.view, image.patient_id) == (_finding(row["Finding Labels"]), row["View Position"], f"nih:{row['Patient ID']}")
    assert nih.patient_id.nunique() == len({rows[PurePosixPath(f).name]["Patient ID"] for f in nih.source_file})
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1  # follow-ups stay together


def test_views_are_respected(shared_data, tmp_path):
    from cxrclf.data.fuse import FuseOptions, fuse

    report = fuse(FuseOptions(nih=shared_data / "nih", workers=2), tmp_path / "fused")
    rows = _nih_rows(shared_data)
    pa = Counter(_finding(row["Finding Labels"]) for row in rows.values() if row["View Position"] == "PA")
    assert pa == {"normal": 10, "other_pneumonia": 39}
    assert {k: v for k, v in report["source_x_finding"]["nih"].items() if v} == {"normal": 10, "other_pneumonia": 39, "total": 49}
    assert report["excluded"]["by_source"]["nih"] == {"view not requested": 63}
