from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest

from cxrclf.data import synthetic
from cxrclf.data.sources import cohen, nlm, normalise_age, rsna, table
from cxrclf.errors import CxrclfError


@pytest.mark.parametrize(
    "text, finding",
    [
        ("COVID-19", "covid19"), ("COVID-19, ARDS", "covid19"), ("Pneumonia/Viral/COVID-19", "covid19"),
        ("SARS", "other_pneumonia"), ("MERS-CoV", "other_pneumonia"), ("ARDS", "other_pneumonia"),
        ("Pneumonia/Bacterial/Streptococcus", "other_pneumonia"), ("Klebsiella", "other_pneumonia"),
        ("Pneumonia/Fungal/Pneumocystis", "other_pneumonia"), ("Lipoid", "other_pneumonia"),
        ("Pneumonia/Aspiration", "other_pneumonia"), ("Pneumonia", "other_pneumonia"),
        ("No Finding", "normal"), ("Tuberculosis", "tuberculosis"),
        ("Pneumonia/Bacterial/Mycobacterium/Tuberculosis", "tuberculosis"),
        ("todo", None), ("", None), ("Unknown", None), ("Pleural effusion", None),
    ],
)
def test_cohen_finding_map(text, finding):
    assert cohen.map_finding(text) == finding


@pytest.mark.parametrize("schema", synthetic.COHEN_SCHEMAS)
def test_cohen_reads_every_schema(tmp_path, schema):
    rng = np.random.default_rng(0)
    synthetic.write_cohen(tmp_path, {"covid19": 5, "other_pneumonia": 3, "normal": 2}, rng, schema=schema, size=64)
    rows = cohen.read(tmp_path, ("PA",))
    assert Counter(r.finding for r in rows.records) == {"covid19": 5, "other_pneumonia": 3, "normal": 2}
    reasons = Counter(e.reason for e in rows.exclusions)
    # extras: L, AP Supine, CT (early schema has no CT rows) and todo
    expected = {"view not requested": 2, "unlabelled finding": 1} | ({} if schema == "early" else {"not an X-ray": 1})
    assert reasons == expected
    assert all(r.patient_id.startswith("cohen:") and r.view == "PA" and r.file.is_file() for r in rows.records)
    assert len({r.patient_id for r in rows.records}) == 6  # two images per patient


def test_cohen_other_views(tmp_path):
    rng = np.random.default_rng(0)
    synthetic.write_cohen(tmp_path, {"covid19": 2}, rng, size=64)
    rows = cohen.read(tmp_path, ("PA", "L"))
    assert Counter(r.view for r in rows.records) == {"PA": 2, "L": 1}


def test_cohen_unsafe_and_missing_paths(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path.parent / "secret.png").write_bytes(b"x")
    with open(tmp_path / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patientid", "finding", "view", "modality", "folder", "filename"])
        writer.writerow(["1", "COVID-19", "PA", "X-ray", "images", "../../secret.png"])
        writer.writerow(["2", "COVID-19", "PA", "X-ray", "images", "/etc/passwd"])
        writer.writerow(["3", "COVID-19", "PA", "X-ray", "images", "missing.png"])
    rows = cohen.read(tmp_path, ("PA",))
    assert rows.records == []
    assert [e.reason for e in rows.exclusions] == ["unsafe path", "unsafe path", "file not found"]


def test_cohen_bad_folder_and_columns(tmp_path):
    with pytest.raises(CxrclfError, match="does not exist"):
        cohen.read(tmp_path / "nowhere", ("PA",))
    with pytest.raises(CxrclfError, match="metadata.csv not found"):
        cohen.read(tmp_path, ("PA",))
    (tmp_path / "metadata.csv").write_text("patientid,finding,filename\n1,COVID-19,a.png\n")
    with pytest.raises(CxrclfError, match="missing column 'view'"):
        cohen.read(tmp_path, ("PA",))


def test_rsna_one_row_per_image(tmp_path):
    rng = np.random.default_rng(0)
    ids = synthetic.write_rsna(tmp_path, {"normal": 3, "other_pneumonia": 4}, rng, size=64, ap=2, not_normal=2)
    with open(tmp_path / "stage_2_train_labels.csv") as handle:
        assert len(list(csv.DictReader(handle))) > len(ids)  # boxes repeat images upstream
    rows = rsna.read(tmp_path, ("PA",))
    assert Counter(r.finding for r in rows.records) == {"normal": 3, "other_pneumonia": 4}
    assert len({r.patient_id for r in rows.records}) == 7
    assert Counter(e.reason for e in rows.exclusions) == {"view not requested": 2, "not normal, no opacity": 2}
    assert all(r.sex in ("M", "F") and r.age.isdigit() for r in rows.records)
    paper = rsna.read(tmp_path, ("PA", "AP"), not_normal="normal")
    assert Counter(r.finding for r in paper.records) == {"normal": 5, "other_pneumonia": 6}


def test_rsna_missing_files(tmp_path):
    with pytest.raises(CxrclfError, match="stage_2_train_labels.csv"):
        rsna.read(tmp_path, ("PA",))


@pytest.mark.parametrize("depth", ["parent", "set", "cxr_png"])
def test_nlm_folder_or_parent(tmp_path, depth):
    rng = np.random.default_rng(0)
    synthetic.write_nlm(tmp_path / "mont", {"normal": 2, "tuberculosis": 3}, rng, size=32, set_name="montgomery")
    synthetic.write_nlm(tmp_path / "shen", {"normal": 1, "tuberculosis": 1}, rng, size=32, set_name="shenzhen")
    folder = {"parent": tmp_path / "mont", "set": tmp_path / "mont" / "MontgomerySet", "cxr_png": tmp_path / "mont" / "MontgomerySet" / "CXR_png"}[depth]
    rows = nlm.read(folder)
    assert Counter(r.finding for r in rows.records) == {"normal": 2, "tuberculosis": 3}
    assert {r.source for r in rows.records} == {"montgomery"}
    if depth != "cxr_png":  # ClinicalReadings sits beside CXR_png
        assert all(r.sex in ("M", "F") and r.age for r in rows.records)
    both = nlm.read(tmp_path)
    assert Counter(r.source for r in both.records) == {"montgomery": 5, "shenzhen": 2}
    assert all(r.sex and r.age for r in both.records if r.source == "shenzhen")


def test_nlm_lung_masks_are_counted_not_read_as_xrays(tmp_path):
    # the official downloads: Montgomery ManualMask/{left,right}Mask/ under the X-ray's own
    # name, Shenzhen mask/CHNCXR_dddd_L_mask.png
    rng = np.random.default_rng(1)
    synthetic.write_nlm(tmp_path / "mont", {"normal": 2, "tuberculosis": 3}, rng, size=32, set_name="montgomery")
    synthetic.write_nlm(tmp_path / "shen", {"normal": 1, "tuberculosis": 1}, rng, size=32, set_name="shenzhen")
    assert len(list((tmp_path / "mont").rglob("MCUCXR_*.png"))) == 15  # 5 X-rays, 10 masks of the same names
    rows = nlm.read(tmp_path)
    assert Counter(r.source for r in rows.records) == {"montgomery": 5, "shenzhen": 2}
    assert all("CXR_png" in r.source_file for r in rows.records)
    assert rows.lung_masks == {"montgomery": {"left": 5, "right": 5}, "shenzhen": {"both": 2}}
    with pytest.raises(CxrclfError, match="no MCUCXR"):  # pointed at a mask folder: no X-rays there
        nlm.read(tmp_path / "mont" / "MontgomerySet" / "ManualMask" / "leftMask")


def test_nlm_empty_folder(tmp_path):
    with pytest.raises(CxrclfError, match="no MCUCXR"):
        nlm.read(tmp_path)


def test_table_reader(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        synthetic._png(tmp_path / "imgs" / name, synthetic.to_uint8(synthetic.phantom("normal", rng, 32).image))
    (tmp_path / "mine.csv").write_text(
        "path,finding,patient_id,view,sex,age\n"
        "imgs/a.png,COVID-19,p1,PA,female,45\n"
        "imgs/b.png,normal,p1,PA,M,46\n"
        "imgs/c.png,tuberculosis,p2,AP,M,30\n"
        "imgs/zzz.png,normal,p3,PA,,\n"
        "imgs/a.png,effusion,p4,PA,,\n"
    )
    rows = table.read(tmp_path / "mine.csv", ("PA",))
    assert [(r.finding, r.patient_id, r.sex, r.age) for r in rows.records] == [
        ("covid19", "table:mine:p1", "F", "45"), ("normal", "table:mine:p1", "M", "46")]
    assert [e.reason for e in rows.exclusions] == ["view not requested", "file not found", "unrecognised finding"]
    (tmp_path / "bad.csv").write_text("file,label\nx.png,normal\n")
    with pytest.raises(CxrclfError, match="missing column 'path'"):
        table.read(tmp_path / "bad.csv", ("PA",))


@pytest.mark.parametrize("raw, years", [("068Y", "68"), ("45yrs", "45"), ("68", "68"), ("45.0", "45"), ("006M", "0"), ("", ""), ("abc", ""), ("300", "")])
def test_normalise_age(raw, years):
    assert normalise_age(raw) == years
