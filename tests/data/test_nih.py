"""The NIH ChestX-ray14 reader, and the same X-ray found in two sources by its pixels."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest

from cxrclf.data import synthetic
from cxrclf.data.sources import nih
from cxrclf.errors import CxrclfError


@pytest.mark.parametrize(
    "labels, finding, reason",
    [
        ("No Finding", "normal", ""), ("Pneumonia", "other_pneumonia", ""),
        ("Edema|Effusion|Infiltration|Pleural_Thickening|Pneumonia", "other_pneumonia", ""),
        ("Effusion|Infiltration", None, "no pneumonia finding"), ("No Finding|Effusion", None, "conflicting labels"),
        ("", None, "unlabelled finding"), ("Pneumonia_like", None, "no pneumonia finding"),
    ],
)
def test_label_lists(labels, finding, reason):
    assert nih.map_labels(labels) == (finding, reason)


@pytest.fixture(scope="module")
def nih_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nih") / "nih"
    rows = synthetic.write_nih(folder, {"normal": 4, "other_pneumonia": 5}, np.random.default_rng(0), size=64, other=3, ap=2)
    return folder, rows


def test_reader_labels_views_and_patients(nih_folder):
    folder, rows = nih_folder
    read = nih.read(folder, ("PA",))
    assert Counter(r.finding for r in read.records) == {"normal": 4, "other_pneumonia": 5}
    assert Counter(e.reason for e in read.exclusions) == {"no pneumonia finding": 3, "view not requested": 2}
    by_name = {row["Image Index"]: row for row in rows}
    for record in read.records:
        row = by_name[record.file.name]
        assert record.source_file == f"images/{record.file.name}" and record.view == "PA"
        assert record.patient_id == f"nih:{int(row['Patient ID'])}" == f"nih:{int(record.file.name.split('_')[0])}"
        assert record.sex == row["Patient Gender"] and record.age == row["Patient Age"]
    # follow-ups of one patient share the patient id
    patients = Counter(r.patient_id for r in read.records)
    assert sum(patients.values()) == 9 and len(patients) == len({by_name[r.file.name]["Patient ID"] for r in read.records}) < 9
    both = nih.read(folder, ("PA", "AP"))
    assert len(both.records) == 11 and Counter(r.view for r in both.records) == {"PA": 9, "AP": 2}


def test_reader_finds_the_official_archive_folders(tmp_path):
    rows = synthetic.write_nih(tmp_path / "nih", {"normal": 3, "other_pneumonia": 3}, np.random.default_rng(1), size=64, archives=3)
    read = nih.read(tmp_path / "nih", ("PA",))
    assert len(read.records) == 6 and not read.exclusions
    assert sorted({r.source_file.split("/")[0] for r in read.records}) == ["images_001", "images_002", "images_003"]
    assert all(r.source_file.endswith("/images/" + r.file.name) for r in read.records) and len(rows) == 6


def test_reader_missing_files_and_folders(tmp_path):
    folder = tmp_path / "nih"
    rows = synthetic.write_nih(folder, {"normal": 2, "other_pneumonia": 2}, np.random.default_rng(2), size=64)
    (folder / "images" / rows[0]["Image Index"]).unlink()
    read = nih.read(folder, ("PA",))
    assert [(e.reason, e.source_file) for e in read.exclusions] == [("file not found", f"images/{rows[0]['Image Index']}")]
    for path in (folder / "images").iterdir():
        path.unlink()
    with pytest.raises(CxrclfError, match="no NIH images found"):
        nih.read(folder, ("PA",))
    (folder / "Data_Entry_2017.csv").unlink()
    with pytest.raises(CxrclfError, match="NIH ChestX-ray14 table not found"):
        nih.read(folder, ("PA",))


def test_same_xray_in_two_sources_is_kept_once_or_excluded_when_labels_disagree(tmp_path, run_cli):
    """Copies of four NIH images in a table of your own: three re-encoded as JPEG (another
    sha, nearly the same hash), one byte-identical; one JPEG copy says normal where NIH says pneumonia."""
    import cv2

    folder = tmp_path / "nih"
    rows = synthetic.write_nih(folder, {"normal": 3, "other_pneumonia": 5}, np.random.default_rng(3), size=128, images_per_patient=1)
    finding_of = {row["Image Index"]: "normal" if row["Finding Labels"] == "No Finding" else "other_pneumonia" for row in rows}
    copies = tmp_path / "copies"
    copies.mkdir()
    table = []
    for k, row in enumerate(rows[:4]):
        name = row["Image Index"]
        pixels = cv2.imread(str(folder / "images" / name), cv2.IMREAD_GRAYSCALE)
        if k == 3:
            (copies / name).write_bytes((folder / "images" / name).read_bytes())
            table.append([name, finding_of[name], f"P{k}"])
            continue
        cv2.imwrite(str(copies / f"{k}.jpg"), cv2.resize(pixels, (100, 100), interpolation=cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 80])
        disagree = k == 2
        table.append([f"{k}.jpg", ("other_pneumonia" if finding_of[name] == "normal" else "normal") if disagree else finding_of[name], f"P{k}"])
    with open(copies / "copies.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "finding", "patient_id"]] + table)

    out = tmp_path / "fused"
    result = run_cli("fuse", "--nih", folder, "--table", copies / "copies.csv", "--out", out, "--workers", "1", "--folds", "2")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "same X-ray in nih and table:copies: 4 (kept once: 3; excluded, findings disagree: 1)" in " ".join(result.stdout.split())
    report = json.loads((out / "fuse_report.json").read_text())
    assert report["same_xray_by_source_pair"] == {"nih+table:copies": {"x_rays": 4, "kept once": 3, "excluded, findings disagree": 1}}
    listed = report["same_xray_across_sources"]
    assert [entry["kept"] for entry in listed] == [f"nih-{rows[0]['Image Index'][:-4]}", f"nih-{rows[1]['Image Index'][:-4]}", None, f"nih-{rows[3]['Image Index'][:-4]}"]
    assert all([c["source"] for c in entry["copies"]] == ["nih", "table:copies"] for entry in listed)
    assert [c["patient_id"] for c in listed[1]["copies"]] == [f"nih:{int(rows[1]['Patient ID'])}", "table:copies:P1"]
    assert report["exact_duplicates"] == [{"kept": f"nih-{rows[3]['Image Index'][:-4]}", "dropped": [f"copies-{rows[3]['Image Index'][:-4]}"], "reason": "identical pixels"}]
    assert report["excluded"]["by_source"] == {
        "nih": {"same X-ray in several sources, conflicting findings": 1},
        "table:copies": {"exact duplicate": 1, "same X-ray in another source": 2, "same X-ray in several sources, conflicting findings": 1},
    }
    assert report["source_x_finding"]["nih"]["total"] == 7 and "table:copies" not in report["source_x_finding"]
    # one copy of each X-ray: NIH's, the first in reading order
    manifest = {line.split(",")[0]: line for line in (out / "manifest.csv").read_text().splitlines()[1:]}
    assert len(manifest) == 7 and not any(key.startswith("copies-") for key in manifest)


def test_same_xray_distance_is_validated():
    from cxrclf.data.fuse import FuseOptions

    with pytest.raises(CxrclfError, match="near-duplicate distance"):
        FuseOptions(nih=".", same_xray_bits=-1).validate()


def test_distinct_phantoms_lie_as_far_apart_as_real_films(tmp_path):
    """The scale benchmark's phantoms, posed and exposed each their own way, spread their hashes as real radiographs do
    (the shared set's: a median 118 bits apart); plain phantoms are alike (a median under 90 bits apart), which would
    make the near-duplicate search grow with the square of their number."""
    import cv2

    from cxrclf.data.imageio import perceptual_hash

    def median_distance(folder, distinct):
        synthetic.write_nih(folder, {"normal": 40, "other_pneumonia": 40}, np.random.default_rng(0), size=128, distinct=distinct)
        hashes = [perceptual_hash(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)) for p in sorted((folder / "images").glob("*.png"))]
        bits = np.unpackbits(np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), np.uint8).reshape(len(hashes), 32), axis=1)
        distances = np.concatenate([(bits[i + 1:] != bits[i]).sum(axis=1) for i in range(len(bits) - 1)])
        return np.median(distances), distances.min()

    spread, closest = median_distance(tmp_path / "distinct", True)
    alike, _ = median_distance(tmp_path / "plain", False)
    assert spread >= 105 and closest > 24
    assert alike < 90
