from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from cxrclf.data import synthetic
from cxrclf.data.imageio import read_image
from cxrclf.errors import CxrclfError
from cxrclf.labels import NORMAL, TUBERCULOSIS
from cxrclf.segment.data import MaskPair, find_pairs, pairs_from_csv, pairs_from_nlm, read_mask, read_pair, split_patients


def test_montgomery_layout_pairs_every_xray_with_both_lung_masks(phantom_nlm):
    pairs, report = pairs_from_nlm(phantom_nlm)
    assert len(pairs) == 40 and not any(report.values())
    assert {p.source for p in pairs} == {"montgomery"}
    first = pairs[0]
    assert [m.parent.name for m in first.masks] == ["leftMask", "rightMask"] and all(m.name == first.image.name for m in first.masks)
    image, mask = read_pair(first)
    assert mask.shape == image.shape == (64, 64)
    left = read_mask((first.masks[0],))
    # the patient's left lung lies on the image's right; the union is both lungs
    assert left[:, 32:].sum() > 0 and left[:, :32].sum() == 0
    assert mask.sum() == left.sum() + read_mask((first.masks[1],)).sum()


def test_shenzhen_published_mask_layout(tmp_path):
    synthetic.write_nlm(tmp_path, {NORMAL: 3, TUBERCULOSIS: 2}, np.random.default_rng(1), size=64, set_name="shenzhen", masks=True)
    pairs, report = pairs_from_nlm(tmp_path)
    assert len(pairs) == 5 and {p.source for p in pairs} == {"shenzhen"}
    assert all(p.masks[0].name == p.image.stem + "_mask.png" and p.masks[0].parent.name == "mask" for p in pairs)
    assert pairs[0].patient_id == "shenzhen:0001"


def test_an_xray_with_one_lung_mask_is_reported_not_used(phantom_nlm, tmp_path):
    shutil.copytree(phantom_nlm, tmp_path / "nlm")
    next((tmp_path / "nlm" / "MontgomerySet" / "ManualMask" / "rightMask").glob("*.png")).unlink()
    pairs, report = pairs_from_nlm(tmp_path / "nlm")
    assert len(pairs) == 39 and report["incomplete_masks"] == {"montgomery": 1}


def test_csv_pairs_resolve_relative_paths_and_name_bad_lines(phantom_nlm, tmp_path):
    pairs, _ = pairs_from_nlm(phantom_nlm)
    table = tmp_path / "pairs.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "patient_id"])
        for pair in pairs[:3]:
            writer.writerow([pair.image, pair.masks[0], "p1"])
    found = pairs_from_csv(table)
    assert [p.patient_id for p in found] == ["table:pairs:p1"] * 3 and found[0].masks == (pairs[0].masks[0],)
    with open(table, "a") as handle:
        handle.write("missing.png,also-missing.png,p2\n")
    with pytest.raises(CxrclfError, match="line 5: image file not found") as caught:
        pairs_from_csv(table)
    assert caught.value.path == str(table)
    (tmp_path / "bad.csv").write_text("path,finding\nx.png,normal\n")
    with pytest.raises(CxrclfError, match="missing column 'image'"):
        pairs_from_csv(tmp_path / "bad.csv")
    with pytest.raises(CxrclfError, match="listed twice"):
        find_pairs(phantom_nlm, _duplicate_table(tmp_path, pairs[0]))


def _duplicate_table(tmp_path, pair: MaskPair):
    path = tmp_path / "dup.csv"
    path.write_text(f"image,mask\n{pair.image},{pair.masks[0]}\n")
    return path


def test_a_mask_of_another_size_is_refused(phantom_nlm, tmp_path):
    pair = pairs_from_nlm(phantom_nlm)[0][0]
    small = tmp_path / "small.png"
    small.write_bytes(__import__("cv2").imencode(".png", np.zeros((32, 32), np.uint8))[1].tobytes())
    with pytest.raises(CxrclfError, match="masks must have the X-ray's size"):
        read_mask((small,), read_image(pair.image).shape)


def test_patient_split_keeps_patients_whole_and_gives_every_source_held_out_patients():
    pairs = [MaskPair(f"{s}{i}-{k}.png", (f"m{s}{i}-{k}.png",), f"{s}:{i}", s) for s in ("a", "b") for i in range(10) for k in range(2)]
    splits = split_patients(pairs, 0.2, 0.3, seed=4)
    by_patient = {}
    for pair, split in zip(pairs, splits):
        by_patient.setdefault(pair.patient_id, set()).add(split)
    assert all(len(s) == 1 for s in by_patient.values())
    for source in ("a", "b"):
        chosen = [next(iter(by_patient[f"{source}:{i}"])) for i in range(10)]
        assert chosen.count("test") == 3 and chosen.count("val") == 2 and chosen.count("train") == 5
    assert splits == split_patients(pairs, 0.2, 0.3, seed=4)
    with pytest.raises(CxrclfError, match="fractions"):
        split_patients(pairs, 0.6, 0.5, seed=0)
