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
from dataclasses import dataclass
from pathlib import Path

from cxrclf.data.sources import SourceRecord, SourceRows, normalise_age, normalise_sex, require_folder
from cxrclf.data.sources.filters import Drop, apply_filters, inside_folder, requested_views, row_filter, view_requested
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


@dataclass(frozen=True)
class NlmImage:
    """One ``MCUCXR_dddd_L.png`` or ``CHNCXR_dddd_L.png`` X-ray, as the filters see it."""

    position: int
    file: Path
    source_file: str     # relative to the folder given
    source: str          # montgomery or shenzhen, from the prefix
    number: str          # the patient
    digit: str           # the label: 1 tuberculosis, 0 normal
    view: str = VIEW


def read(folder: Path, views: tuple[str, ...] = ("PA",)) -> SourceRows:
    folder = require_folder(folder, "NLM")
    images, masks = _scan(folder)
    tables = _metadata_tables(folder)
    # a link out of the folder is refused by the same rule as the Cohen reader's paths
    filters = [inside_folder(folder, "a link to a file outside the source folder"), known_digit, view_requested(requested_views(views))]
    rows, exclusions = apply_filters(images, filters)
    return SourceRows(records=[_record(row, tables) for row in rows], exclusions=exclusions, lung_masks=masks)


def _scan(folder: Path) -> tuple[list[NlmImage], dict[str, dict[str, int]]]:
    """The X-rays under ``folder`` (sorted by path) and the lung masks counted per source and side."""
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
    return [_image(position, path, folder) for position, path in enumerate(images)], masks


def _image(position: int, path: Path, folder: Path) -> NlmImage:
    prefix, number, digit = PATTERN.match(path.name).groups()
    return NlmImage(position, path, path.relative_to(folder).as_posix(), SOURCES[prefix.upper()], number, digit)


@row_filter
def known_digit(row: NlmImage) -> NlmImage | Drop:
    return row if row.digit in "01" else Drop("unrecognised finding", f"label digit {row.digit}")


def _record(row: NlmImage, tables: dict[str, tuple[str, str]]) -> SourceRecord:
    """Sex and age from a metadata table, else from the image's clinical reading."""
    sex, age = tables.get(row.file.name.lower(), ("", ""))
    if not sex and not age:
        sex, age = _clinical_reading(row.file)
    return SourceRecord(
        source=row.source,
        file=row.file,
        source_file=row.source_file,
        patient_id=f"{row.source}:{row.number}",
        finding=TUBERCULOSIS if row.digit == "1" else NORMAL,
        view=VIEW,
        sex=sex,
        age=age,
    )
