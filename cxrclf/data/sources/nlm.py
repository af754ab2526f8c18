"""NLM tuberculosis sets: Montgomery (``MCUCXR_dddd_L.png``) and Shenzhen (``CHNCXR_dddd_L.png``).

The label is the last digit of the file name (1 tuberculosis, 0 normal). The folder given
may be the set's ``CXR_png``, the set's folder, or any parent of it (both sets may share a
parent). Sex and age come from ``ClinicalReadings/*.txt`` or ``shenzhen_metadata.csv``.
All NLM images are posteroanterior.

The official downloads also hold lung masks under the same file names
(Montgomery ``ManualMask/leftMask/MCUCXR_dddd_L.png`` and ``rightMask/``; Shenzhen's
published ``mask/CHNCXR_dddd_L_mask.png``). They are never read as X-rays: they are counted
and reported (``SourceRows.lung_masks``, shown in ``fuse_report.json``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from cxrclf.data.sources import Exclusion, SourceRecord, SourceRows, normalise_age, normalise_sex, require_folder, resolve_inside
from cxrclf.errors import CxrclfError
from cxrclf.labels import NORMAL, TUBERCULOSIS

__all__ = ["MASK_FOLDERS", "MASK_PATTERN", "PATTERN", "SOURCES", "VIEW", "mask_side", "read"]

PATTERN = re.compile(r"^(MCUCXR|CHNCXR)_(\d+)_([0-9])\.png$", re.IGNORECASE)
MASK_PATTERN = re.compile(r"^(MCUCXR|CHNCXR)_(\d+)_([0-9])(_mask)?\.png$", re.IGNORECASE)
SOURCES = {"MCUCXR": "montgomery", "CHNCXR": "shenzhen"}
VIEW = "PA"
# folder names that hold lung masks in the official layouts (compared in lower case)
MASK_FOLDERS = {"manualmask": "both", "leftmask": "left", "rightmask": "right", "mask": "both", "masks": "both"}


def mask_side(path: Path, root: Path) -> str | None:
    """``left``, ``right`` or ``both`` when ``path`` is a lung mask of the NLM layouts, else ``None``.

    Judged by the folders between ``root`` and the file (and ``root``'s own name, for a user
    who points at a mask folder) and by Shenzhen's ``_mask`` suffix.
    """
    folders = [part.lower() for part in path.relative_to(root).parts[:-1]] + [root.name.lower()]
    sides = [MASK_FOLDERS[name] for name in folders if name in MASK_FOLDERS]
    if path.stem.lower().endswith("_mask"):
        sides.append("both")
    if not sides:
        return None
    return next((side for side in sides if side != "both"), "both")


def _clinical_reading(image: Path) -> tuple[str, str]:
    """Sex and age from ``ClinicalReadings/<stem>.txt`` beside ``CXR_png``, if present."""
    for folder in (image.parent.parent / "ClinicalReadings", image.parent / "ClinicalReadings"):
        text_file = folder / f"{image.stem}.txt"
        if text_file.is_file():
            text = text_file.read_text(errors="replace")
            sex_match = re.search(r"sex:\s*([MF]\w*)", text, re.IGNORECASE) or re.search(r"\b(male|female)\b", text, re.IGNORECASE)
            age_match = re.search(r"age:\s*(\d+\w*)", text, re.IGNORECASE) or re.search(r"(\d+)\s*(?:yrs|yr|years?)", text, re.IGNORECASE)
            return (normalise_sex(sex_match.group(1)) if sex_match else "", normalise_age(age_match.group(1)) if age_match else "")
    return "", ""


def _metadata_tables(root: Path) -> dict[str, tuple[str, str]]:
    """``shenzhen_metadata.csv`` (``study_id,sex,age,findings``) anywhere up to two levels below root."""
    found: dict[str, tuple[str, str]] = {}
    for table in sorted(list(root.glob("*metadata*.csv")) + list(root.glob("*/*metadata*.csv")) + list(root.glob("*/*/*metadata*.csv"))):
        try:
            with open(table, newline="", encoding="utf-8-sig") as handle:
                for row in csv.DictReader(handle):
                    study = (row.get("study_id") or "").strip()
                    if study:
                        found[Path(study).name.lower()] = (normalise_sex(row.get("sex", "")), normalise_age(row.get("age", "")))
        except (UnicodeDecodeError, csv.Error, OSError):
            continue  # a stray CSV that is not the NLM table: sex/age stay unknown
    return found


def read(folder: Path, views: tuple[str, ...] = ("PA",)) -> SourceRows:
    folder = require_folder(folder, "NLM")
    images, masks = [], {}
    for path in sorted(p for p in folder.rglob("*.png") if MASK_PATTERN.match(p.name)):
        side = mask_side(path, folder)
        if side is None:
            if PATTERN.match(path.name):
                images.append(path)
            continue
        source = SOURCES[MASK_PATTERN.match(path.name).group(1).upper()]
        masks.setdefault(source, {}).setdefault(side, 0)
        masks[source][side] += 1
    if not images:
        raise CxrclfError("no MCUCXR_dddd_L.png or CHNCXR_dddd_L.png images found (expected an NLM set folder or its parent)", folder)
    tables = _metadata_tables(folder)
    keep_view = VIEW in {v.strip().upper() for v in views}
    out = SourceRows(lung_masks=masks)
    for path in images:
        match = PATTERN.match(path.name)
        prefix, number, digit = match.group(1).upper(), match.group(2), match.group(3)
        source = SOURCES[prefix]
        source_file = path.relative_to(folder).as_posix()
        if resolve_inside(folder, source_file) is None:  # a link out of the folder: the same rule as the Cohen reader
            out.exclusions.append(Exclusion(source, source_file, "unsafe path", "a link to a file outside the source folder"))
            continue
        if digit not in "01":
            out.exclusions.append(Exclusion(source, source_file, "unrecognised finding", f"label digit {digit}"))
            continue
        if not keep_view:
            out.exclusions.append(Exclusion(source, source_file, "view not requested", f"view {VIEW}"))
            continue
        sex, age = tables.get(path.name.lower(), ("", ""))
        if not sex and not age:
            sex, age = _clinical_reading(path)
        out.records.append(
            SourceRecord(
                source=source,
                file=path,
                source_file=source_file,
                patient_id=f"{source}:{number}",
                finding=TUBERCULOSIS if digit == "1" else NORMAL,
                view=VIEW,
                sex=sex,
                age=age,
            )
        )
    return out
