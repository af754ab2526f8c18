"""NIH ChestX-ray14: ``Data_Entry_2017.csv`` + ``images/*.png`` (or the archives' ``images_001/images/`` ...).

One CSV row per image: ``Image Index`` (the file name), ``Finding Labels`` (14 findings
joined by ``|``, or ``No Finding``), ``Patient ID``, ``Patient Age``, ``Patient Gender``
and ``View Position`` (PA or AP). ``No Finding`` is normal; any label list containing
``Pneumonia`` is other pneumonia (whatever else it lists); every other row names findings
cxrclf does not classify and is excluded. The header's ``OriginalImage[Width,Height]``
splits into two columns at its comma; those columns are not read.

The official download is 12 archives that unpack to ``images_001/images/`` ...
``images_012/images/``; a single ``images/`` folder is read as well. RSNA's pneumonia
images are NIH images under new ids: only their pixels tell (see :mod:`cxrclf.data.fuse`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from cxrclf.data.sources import SourceRecord, SourceRows, require_folder
from cxrclf.data.sources.filters import Drop, apply_filters, requested_views, row_filter, to_record, view_recorded, view_requested
from cxrclf.errors import CxrclfError
from cxrclf.io import read_csv_rows
from cxrclf.labels import NORMAL, OTHER_PNEUMONIA

__all__ = ["LABELS", "NO_FINDING", "PNEUMONIA", "SOURCE", "image_files", "map_labels", "read"]

SOURCE = "nih"
LABELS = "Data_Entry_2017.csv"
NO_FINDING = "No Finding"
PNEUMONIA = "Pneumonia"
_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")


def map_labels(text: str) -> tuple[str | None, str]:
    """``(finding, "")`` for a usable label list, else ``(None, reason)``."""
    labels = {label.strip() for label in text.split("|") if label.strip()}
    if not labels:
        return None, "unlabelled finding"
    if NO_FINDING in labels:
        return (NORMAL, "") if labels == {NO_FINDING} else (None, "conflicting labels")
    if PNEUMONIA in labels:
        return OTHER_PNEUMONIA, ""
    return None, "no pneumonia finding"


def image_files(folder: Path) -> dict[str, Path]:
    """File name -> path for the PNGs in ``images/`` and ``images_*/images/`` (the first, in sorted folder order, wins)."""
    folders = [folder / "images"] + sorted(p / "images" for p in folder.glob("images_*") if p.is_dir())
    found: dict[str, Path] = {}
    for images in folders:
        if not images.is_dir():
            continue
        with os.scandir(images) as entries:  # 112,120 files: scandir, not a stat per name
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.lower().endswith(".png") and entry.is_file():
                    found.setdefault(entry.name, Path(entry.path))
    return found


def _patient(patient_id: str, image_name: str) -> str:
    """NIH's patient number without leading zeros (the CSV says 61, the file name 00000061_012.png)."""
    patient = patient_id or image_name.split("_")[0]
    return str(int(patient)) if patient.isdigit() else patient


@dataclass(frozen=True)
class NihRow:
    """One Data_Entry_2017.csv row, as the filters see it."""

    position: int
    source_file: str
    name: str              # "Image Index"
    file: Path | None      # None when no scanned PNG has that name
    labels: str            # "Finding Labels" as written
    view: str
    patient: str           # "Patient ID" as written
    sex: str
    age: str
    finding: str = ""      # set by known_labels
    source: str = SOURCE


def read(folder: Path, views: tuple[str, ...]) -> SourceRows:
    folder = require_folder(folder, "NIH ChestX-ray14")
    filters = [known_labels, view_recorded, view_requested(requested_views(views)), scanned]
    rows, exclusions = apply_filters(_load(folder), filters)
    return SourceRows(records=[_record(row) for row in rows], exclusions=exclusions)


def _load(folder: Path) -> list[NihRow]:
    rows = read_csv_rows(folder / LABELS, _COLUMNS, "NIH ChestX-ray14 table")
    files = image_files(folder)
    if rows and not files:
        raise CxrclfError("no NIH images found: expected images/*.png or images_001/images/*.png beside Data_Entry_2017.csv", folder)

    def nih_row(position: int, row: dict[str, str]) -> NihRow:
        name = row["Image Index"]
        path = files.get(name)  # only scanned PNGs are looked up: a table row cannot point outside the folder
        return NihRow(
            position=position, source_file=path.relative_to(folder).as_posix() if path else f"images/{name}", name=name,
            file=path, labels=row["Finding Labels"], view=row["View Position"].upper(), patient=row["Patient ID"],
            sex=row.get("Patient Gender", ""), age=row.get("Patient Age", ""),
        )

    return [nih_row(position, row) for position, row in enumerate(rows)]


@row_filter
def known_labels(row: NihRow) -> NihRow | Drop:
    finding, reason = map_labels(row.labels)
    return Drop(reason, f"labels {row.labels!r}") if finding is None else replace(row, finding=finding)


@row_filter
def scanned(row: NihRow) -> NihRow | Drop:
    """The file was found when the image folders were scanned (no stat per row: there are 112,120)."""
    return row if row.file is not None else Drop("file not found")


def _record(row: NihRow) -> SourceRecord:
    return to_record(row, _patient(row.patient, row.name))
