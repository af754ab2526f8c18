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
from pathlib import Path

from cxrclf.data.sources import Exclusion, SourceRecord, SourceRows, normalise_age, normalise_sex, require_folder
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


def _patient(row: dict[str, str], image_name: str) -> str:
    """NIH's patient number without leading zeros (the CSV says 61, the file name 00000061_012.png)."""
    patient = row["Patient ID"] or image_name.split("_")[0]
    return str(int(patient)) if patient.isdigit() else patient


def read(folder: Path, views: tuple[str, ...]) -> SourceRows:
    folder = require_folder(folder, "NIH ChestX-ray14")
    rows = read_csv_rows(folder / LABELS, _COLUMNS, "NIH ChestX-ray14 table")
    files = image_files(folder)
    if rows and not files:
        raise CxrclfError("no NIH images found: expected images/*.png or images_001/images/*.png beside Data_Entry_2017.csv", folder)
    wanted = {v.strip().upper() for v in views}
    out = SourceRows()
    for row in rows:
        name = row["Image Index"]
        path = files.get(name)  # only scanned PNGs are looked up: a table row cannot point outside the folder
        source_file = path.relative_to(folder).as_posix() if path else f"images/{name}"
        finding, reason = map_labels(row["Finding Labels"])
        if finding is None:
            out.exclusions.append(Exclusion(SOURCE, source_file, reason, f"labels {row['Finding Labels']!r}"))
            continue
        view = row["View Position"].upper()
        if not view:
            out.exclusions.append(Exclusion(SOURCE, source_file, "view not recorded"))
            continue
        if view not in wanted:
            out.exclusions.append(Exclusion(SOURCE, source_file, "view not requested", f"view {view}"))
            continue
        if path is None:
            out.exclusions.append(Exclusion(SOURCE, source_file, "file not found"))
            continue
        out.records.append(
            SourceRecord(
                source=SOURCE,
                file=path,
                source_file=source_file,
                patient_id=f"{SOURCE}:{_patient(row, name)}",
                finding=finding,
                view=view,
                sex=normalise_sex(row.get("Patient Gender", "")),
                age=normalise_age(row.get("Patient Age", "")),
            )
        )
    return out
