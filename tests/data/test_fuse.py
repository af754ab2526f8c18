from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pandas as pd

from cxrclf.data import fuse as fuse_module
from cxrclf.data.manifest import FUSED_COLUMNS, read_manifest


def _fuse_args(sources, out, *extra):
    return ["fuse", "--cohen", sources["cohen"], "--rsna", sources["rsna"], "--nlm", sources["nlm"], "--out", out, "--workers", "1", *extra]


def test_fuse_synthetic_end_to_end(run_cli, synthetic_sources, tmp_path):
    result = run_cli(*_fuse_args(synthetic_sources, tmp_path / "fused"))
    assert result.exit_code == 0, result.stderr
    manifest = read_manifest(tmp_path / "fused")
    assert list(manifest.columns) == list(FUSED_COLUMNS)
    # per_class=12: COVID only from Cohen, TB only from NLM, normal from all three
    assert manifest.groupby(["source", "finding"]).size().to_dict() == {
        ("cohen", "covid19"): 12, ("cohen", "normal"): 4, ("cohen", "other_pneumonia"): 4,
        ("montgomery", "normal"): 4, ("montgomery", "tuberculosis"): 12,
        ("rsna", "normal"): 4, ("rsna", "other_pneumonia"): 8,
    }
    assert manifest["image_id"].is_unique
    for row in manifest.itertuples():
        image = cv2.imread(str(tmp_path / "fused" / row.path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (row.height, row.width)
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    assert set(manifest.loc[manifest.split == "test", "fold"]) == {-1}
    report = json.loads((tmp_path / "fused" / "fuse_report.json").read_text())
    assert report["source_x_finding"]["rsna"] == {"normal": 4, "covid19": 0, "other_pneumonia": 8, "tuberculosis": 0, "total": 12}
    assert report["excluded"]["by_reason"] == {"not an X-ray": 1, "not normal, no opacity": 2, "unlabelled finding": 1, "view not requested": 4}
    assert report["single_source_findings"] == {"covid19": "cohen", "tuberculosis": "montgomery"}
    warnings = ["covid19 comes only from cohen: a model can learn the archive instead of the disease",
                "tuberculosis comes only from montgomery: a model can learn the archive instead of the disease"]
    assert report["confounding"] == {
        "finding_x_source": {
            "normal": {"cohen": 4, "montgomery": 4, "rsna": 4, "total": 12},
            "covid19": {"cohen": 12, "montgomery": 0, "rsna": 0, "total": 12},
            "other_pneumonia": {"cohen": 4, "montgomery": 0, "rsna": 8, "total": 12},
            "tuberculosis": {"cohen": 0, "montgomery": 12, "rsna": 0, "total": 12},
        },
        "single_source_findings": {"covid19": "cohen", "tuberculosis": "montgomery"},
        "warnings": warnings,
    }
    assert "Images per finding and source" in result.stdout
    assert all(f"warning: {line}" in " ".join(result.stdout.split()) for line in warnings)  # wrapped at the terminal's width
    audited = run_cli("audit", tmp_path / "fused")
    assert audited.exit_code == 0 and "Images per finding and source" in audited.stdout
    assert all(f"warning: {line}" in " ".join(audited.stdout.split()) for line in warnings)
    as_json = run_cli("audit", tmp_path / "fused", "--json")
    assert json.loads(as_json.stdout)["confounding"] == report["confounding"]


def test_same_seed_gives_byte_identical_manifest(run_cli, synthetic_sources, tmp_path):
    run_cli(*_fuse_args(synthetic_sources, tmp_path / "a"))
    run_cli(*_fuse_args(synthetic_sources, tmp_path / "b", "--workers", "2"))
    run_cli(*_fuse_args(synthetic_sources, tmp_path / "c", "--seed", "7"))
    a = (tmp_path / "a" / "manifest.csv").read_bytes()
    assert a == (tmp_path / "b" / "manifest.csv").read_bytes()
    assert a != (tmp_path / "c" / "manifest.csv").read_bytes()
    assert (tmp_path / "a" / "fuse_report.json").read_bytes() == (tmp_path / "b" / "fuse_report.json").read_bytes()


def test_duplicates_collapse_and_near_duplicates_share_a_split(run_cli, sources_copy, tmp_path):
    cohen = sources_copy["cohen"]
    metadata = pd.read_csv(cohen / "metadata.csv", dtype=str, keep_default_na=False)
    first = metadata.iloc[0]
    # an exact copy under another patient, a conflicting-label copy, and a resized JPEG copy
    shutil.copy(cohen / "images" / first.filename, cohen / "images" / "copy.png")
    image = cv2.imread(str(cohen / "images" / first.filename), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(cohen / "images" / "small.jpg"), cv2.resize(image, (90, 90)), [cv2.IMWRITE_JPEG_QUALITY, 70])
    rows = [first.to_dict() | {"patientid": "900", "filename": "copy.png"},
            first.to_dict() | {"patientid": "901", "filename": "small.jpg"}]
    other = metadata[(metadata.view == "PA") & metadata.finding.isin(["SARS", "Klebsiella", "Streptococcus", "Pneumocystis"])].iloc[0]
    shutil.copy(cohen / "images" / other.filename, cohen / "images" / "conflict.png")
    rows.append(other.to_dict() | {"patientid": "902", "filename": "conflict.png", "finding": "No Finding"})
    pd.concat([metadata, pd.DataFrame(rows)]).to_csv(cohen / "metadata.csv", index=False)

    result = run_cli(*_fuse_args(sources_copy, tmp_path / "fused", "--json"))
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    manifest = read_manifest(tmp_path / "fused")
    assert "cohen-copy" not in set(manifest.image_id)  # the exact copy collapsed
    assert not (tmp_path / "fused" / "images" / "cohen-copy.png").exists()
    conflicted = {e["source_file"] for e in report["excluded_rows"] if e["reason"] == "identical image, conflicting findings"}
    assert conflicted == {f"images/{other.filename}", "images/conflict.png"}
    original = manifest[manifest.source_file == f"images/{first.filename}"].iloc[0]
    small = manifest[manifest.source_file == "images/small.jpg"].iloc[0]
    assert small.patient_id != original.patient_id
    assert small.group == original.group and small.split == original.split and small.fold == original.fold
    assert any({original.image_id, small.image_id} <= set(g) for g in report["near_duplicates_across_patients"])


def test_bad_images_are_skipped_with_reasons(run_cli, sources_copy, tmp_path):
    images = sorted((sources_copy["cohen"] / "images").glob("*.png"))
    images[0].write_bytes(b"")
    images[1].write_bytes(images[1].read_bytes()[:50])
    images[2].write_text("not an image")
    result = run_cli(*_fuse_args(sources_copy, tmp_path / "fused", "--json"))
    assert result.exit_code == 0, result.stderr
    unreadable = {e["source_file"]: e["detail"] for e in json.loads(result.stdout)["excluded_rows"] if e["reason"] == "unreadable image"}
    assert set(unreadable) == {f"images/{p.name}" for p in images[:3]}
    assert "empty file" in unreadable[f"images/{images[0].name}"]
    assert len(read_manifest(tmp_path / "fused")) == 48 - 3


def test_existing_output_is_refused_and_untouched(run_cli, synthetic_sources, tmp_path):
    out = tmp_path / "fused"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli(*_fuse_args(synthetic_sources, out))
    assert result.exit_code == 2
    assert "--overwrite" in result.stderr and str(out) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # --overwrite replaces only a folder cxrclf made: the user's folder stays as it was
    refused = run_cli(*_fuse_args(synthetic_sources, out, "--overwrite"))
    assert refused.exit_code == 2 and "not made by cxrclf" in refused.stderr and [p.name for p in out.iterdir()] == ["keep.txt"]
    other = tmp_path / "fused2"
    assert run_cli(*_fuse_args(synthetic_sources, other)).exit_code == 0
    first = (other / "manifest.csv").read_bytes()
    assert run_cli(*_fuse_args(synthetic_sources, other, "--overwrite")).exit_code == 0
    assert (other / "manifest.csv").read_bytes() == first and (other / ".cxrclf").read_text() == "fused\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused", "fused2"]  # no lock, stage or trash left beside


def test_missing_folder_is_one_line_exit_2_and_writes_nothing(run_cli, synthetic_sources, tmp_path):
    result = run_cli("fuse", "--cohen", tmp_path / "nope", "--out", tmp_path / "fused")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"cxrclf: error: {tmp_path / 'nope'}: Cohen folder does not exist"
    assert not (tmp_path / "fused").exists()
    assert run_cli("fuse", "--out", tmp_path / "fused").exit_code == 2  # no source at all


def test_interrupted_fuse_leaves_nothing(run_cli, synthetic_sources, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fuse_module.split, "assign_splits", explode)
    result = run_cli(*_fuse_args(synthetic_sources, tmp_path / "fused"))
    assert result.exit_code == 130
    assert list(tmp_path.iterdir()) == []  # neither the output nor a staging folder


def test_audit_finds_leakage(run_cli, synthetic_sources, tmp_path):
    run_cli(*_fuse_args(synthetic_sources, tmp_path / "fused"))
    manifest = pd.read_csv(tmp_path / "fused" / "manifest.csv", dtype=str, keep_default_na=False)
    leaky = manifest.copy()
    train_row = leaky[leaky.split == "train"].iloc[0]
    leaky.loc[leaky.split == "test", "patient_id"] = train_row.patient_id  # shared patient
    copy = train_row.copy()
    copy["split"], copy["image_id"] = "test", "dup"
    leaky = pd.concat([leaky, copy.to_frame().T])  # identical image in train and test
    leaky.to_csv(tmp_path / "fused" / "leaky.csv", index=False)
    result = run_cli("audit", tmp_path / "fused" / "leaky.csv", "--json")
    assert result.exit_code == 1
    found = json.loads(result.stdout)
    assert found["leakage"] is True
    assert [p["patient_id"] for p in found["patients_in_several_splits"]] == [train_row.patient_id]
    assert len(found["identical_images_across_splits"]) == 1
    # without hash columns, audit computes them from the images
    leaky.drop(columns=["sha256", "phash"]).to_csv(tmp_path / "fused" / "nohash.csv", index=False)
    assert json.loads(run_cli("audit", tmp_path / "fused" / "nohash.csv", "--json").stdout)["identical_images_across_splits"] == found["identical_images_across_splits"]
    bad = run_cli("audit", tmp_path / "nothing.csv")
    assert bad.exit_code == 2 and "no manifest here" in bad.stderr


def test_image_ids_never_collide():
    from pathlib import Path

    from cxrclf.data.sources import SourceRecord

    records = [SourceRecord("site", Path(f), f, "p", "normal") for f in ("a/001.png", "b/001.png", "c/001-2.png")]
    ids = fuse_module._image_ids(records)
    assert len(set(ids)) == 3 and ids[:2] == ["site-001", "site-001-2"]
    # nor by case alone: on a file system that does not tell IMG.png from img.png, the second would overwrite the first
    records = [SourceRecord("site", Path(f), f, "p", "normal") for f in ("IMG.png", "img.png", "Img-2.png")]
    ids = fuse_module._image_ids(records)
    assert ids == ["site-IMG", "site-img-2", "site-Img-2-2"] and len({i.lower() for i in ids}) == 3


def test_collapsed_copy_keeps_its_patient_linked(run_cli, sources_copy, tmp_path):
    """An image shared by two patients: after the copy is dropped, both patients stay in one split."""
    cohen = sources_copy["cohen"]
    metadata = pd.read_csv(cohen / "metadata.csv", dtype=str, keep_default_na=False)
    first = metadata.iloc[0]
    shutil.copy(cohen / "images" / first.filename, cohen / "images" / "shared.png")
    from cxrclf.data import synthetic

    synthetic._png(cohen / "images" / "own777.png", synthetic.to_uint8(synthetic.phantom("covid19", np.random.default_rng(42), 128).image))
    extra = [first.to_dict() | {"patientid": "777", "filename": "shared.png"}, first.to_dict() | {"patientid": "777", "filename": "own777.png"}]
    pd.concat([metadata, pd.DataFrame(extra)]).to_csv(cohen / "metadata.csv", index=False)
    assert run_cli(*_fuse_args(sources_copy, tmp_path / "fused")).exit_code == 0
    manifest = read_manifest(tmp_path / "fused")
    kept = manifest[manifest.source_file == f"images/{first.filename}"].iloc[0]
    patient_777 = manifest[manifest.patient_id == "cohen:777"]
    assert list(patient_777.source_file) == ["images/own777.png"]  # its copy of the shared image collapsed
    assert set(patient_777.group) == {kept.group} and set(patient_777.split) == {kept.split}


def test_views_apply_to_nlm(run_cli, synthetic_sources, tmp_path):
    result = run_cli("fuse", "--nlm", synthetic_sources["nlm"], "--rsna", synthetic_sources["rsna"], "--views", "AP", "--out", tmp_path / "f", "--json", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["source_x_finding"]) == {"rsna"} and report["excluded"]["by_source"]["montgomery"] == {"view not requested": 16}


def test_audit_recomputes_foreign_hashes(run_cli, synthetic_sources, tmp_path):
    run_cli(*_fuse_args(synthetic_sources, tmp_path / "fused"))
    manifest = pd.read_csv(tmp_path / "fused" / "manifest.csv", dtype=str, keep_default_na=False)
    manifest.assign(phash="abc").to_csv(tmp_path / "fused" / "short.csv", index=False)
    assert run_cli("audit", tmp_path / "fused" / "short.csv", "--json").exit_code == 0
    manifest.assign(phash="abc").drop(columns=["path"]).to_csv(tmp_path / "fused" / "nopath.csv", index=False)
    bad = run_cli("audit", tmp_path / "fused" / "nopath.csv")
    assert bad.exit_code == 2 and "64 hex digits" in bad.stderr


def test_the_rsna_rule_is_an_enum_member_and_the_report_keeps_its_string(synthetic_sources, tmp_path):
    import pytest

    from cxrclf.choices import RsnaNotNormal
    from cxrclf.data.fuse import FuseOptions, fuse
    from cxrclf.errors import CxrclfError

    assert FuseOptions().rsna_not_normal is RsnaNotNormal.exclude
    options = FuseOptions(rsna=synthetic_sources["rsna"], rsna_not_normal="normal", workers=1)
    assert options.rsna_not_normal is RsnaNotNormal.normal
    report = fuse(options, tmp_path / "fused")
    written = json.loads((tmp_path / "fused" / "fuse_report.json").read_text())
    assert written["options"]["rsna_not_normal"] == "normal" and type(report["options"]["rsna_not_normal"]) is str
    excluded = fuse(FuseOptions(rsna=synthetic_sources["rsna"], workers=1), tmp_path / "default")["excluded"]["by_reason"]
    # the synthetic RSNA holds two "No Lung Opacity / Not Normal" images: excluded by default, kept as normal on request
    assert excluded["not normal, no opacity"] == 2 and "not normal, no opacity" not in written["excluded"]["by_reason"]
    with pytest.raises(CxrclfError, match="RSNA 'Not Normal' rule must be one of exclude, normal, not 'keep'"):
        fuse(FuseOptions(rsna=synthetic_sources["rsna"], rsna_not_normal="keep", workers=1), tmp_path / "other")
