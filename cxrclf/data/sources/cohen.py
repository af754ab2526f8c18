"""Cohen et al. covid-chestxray-dataset: ``metadata.csv`` + images.

Three upstream schemas exist and all are read:

- early: ``Patientid, offset, sex, age, finding, survival, view, ..., filename, ..., notes``
  (no ``modality`` or ``folder``; images in ``images/``);
- mid-2020: ``patientid, ..., finding, ..., view, modality, ..., folder, filename, ...`` with
  flat findings such as ``COVID-19``, ``COVID-19, ARDS``, ``Klebsiella``;
- current: hierarchical findings (``Pneumonia/Viral/COVID-19``) and ``RT_PCR_positive``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

from cxrclf.data.sources import SourceRecord, SourceRows, require_folder, resolve_inside
from cxrclf.data.sources.filters import (Drop, RowFilter, apply_filters, file_exists, requested_views, row_filter, to_record,
                                         view_recorded, view_requested)
from cxrclf.errors import CxrclfError
from cxrclf.labels import COVID19, NORMAL, OTHER_PNEUMONIA, TUBERCULOSIS

__all__ = ["SOURCE", "map_finding", "read"]

SOURCE = "cohen"

# Words that make a finding a pneumonia that is not COVID-19: the causes named in the
# three schemas (flat organism names in mid-2020, path components in the current one).
_PNEUMONIA_WORDS = (
    "pneumonia", "sars", "mers", "ards", "bacterial", "fungal", "viral", "lipoid", "aspiration",
    "klebsiella", "pneumocystis", "pcp", "mycoplasma", "streptococcus", "staphylococcus",
    "legionella", "chlamydophila", "e.coli", "escherichia", "influenza", "h1n1", "varicella",
    "herpes", "nocardia", "aspergillosis", "candida", "cryptococcus", "histoplasmosis",
    "mycobacterium avium", "pseudomonas", "haemophilus", "moraxella",
)
_UNLABELLED = ("", "todo", "unknown", "unknow", "n/a", "na", "none")


def map_finding(text: str) -> str | None:
    """Map a Cohen finding (any schema) to a cxrclf finding; ``None`` when unlabelled or unknown."""
    value = " ".join(str(text).strip().lower().split())
    if value in _UNLABELLED:
        return None
    if "covid" in value or "sars-cov-2" in value:
        return COVID19
    if value == "no finding" or value.endswith("/no finding"):
        return NORMAL
    if "tuberculosis" in value:
        return TUBERCULOSIS
    if any(word in value for word in _PNEUMONIA_WORDS):
        return OTHER_PNEUMONIA
    return None


def _columns(header: list[str]) -> dict[str, str]:
    """Lower-case, underscore-joined column names -> original names."""
    return {" ".join(name.strip().lower().split()).replace(" ", "_"): name for name in header}


@dataclass(frozen=True)
class CohenRow:
    """One metadata.csv row, as the filters see it."""

    position: int
    source_file: str     # "<folder>/<filename>" ("" when the filename is blank)
    filename: str
    patient: str
    modality: str
    view: str
    finding_text: str
    sex: str
    age: str
    finding: str = ""           # set by known_finding
    file: Path | None = None    # set by safe_path
    source: str = SOURCE


def read(folder: Path, views: tuple[str, ...]) -> SourceRows:
    folder = require_folder(folder, "Cohen")
    filters = [x_ray, view_recorded, view_requested(requested_views(views)), known_finding, safe_path(folder), file_exists]
    rows, exclusions = apply_filters(_load(folder), filters)
    return SourceRows(records=[_record(row) for row in rows], exclusions=exclusions)


def _load(folder: Path) -> list[CohenRow]:
    """metadata.csv's rows, whichever of the three schemas names the columns."""
    columns, rows = _read_metadata(folder / "metadata.csv")

    def get(row: dict, key: str) -> str:
        name = columns.get(key)
        return (row.get(name) or "").strip() if name else ""

    def cohen_row(position: int, row: dict) -> CohenRow:
        filename = get(row, "filename")
        return CohenRow(
            position=position, source_file=f"{get(row, 'folder') or 'images'}/{filename}" if filename else "", filename=filename,
            patient=get(row, "patientid"), modality=get(row, "modality"), view=get(row, "view"), finding_text=get(row, "finding"),
            sex=get(row, "sex"), age=get(row, "age"),
        )

    return [cohen_row(position, row) for position, row in enumerate(rows)]


def _read_metadata(metadata: Path) -> tuple[dict[str, str], list[dict]]:
    """The normalised column names (see :func:`_columns`) and the rows of ``metadata.csv``."""
    if not metadata.is_file():
        raise CxrclfError("Cohen metadata.csv not found (expected the covid-chestxray-dataset folder)", metadata)
    try:
        with open(metadata, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = _columns(reader.fieldnames or [])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CxrclfError(f"not a readable CSV ({exc})", metadata) from exc
    for needed in ("patientid", "finding", "view", "filename"):
        if needed not in columns:
            raise CxrclfError(f"missing column {needed!r}", metadata)
    return columns, rows


@row_filter
def x_ray(row: CohenRow) -> CohenRow | Drop:
    """The early schema has no modality column: its rows are all X-rays."""
    if row.modality and row.modality.lower() not in ("x-ray", "xray", "cr", "dx"):
        return Drop("not an X-ray", f"modality {row.modality}")
    return row


@row_filter
def known_finding(row: CohenRow) -> CohenRow | Drop:
    finding = map_finding(row.finding_text)
    if finding is None:
        reason = "unlabelled finding" if row.finding_text.strip().lower() in _UNLABELLED else "unrecognised finding"
        return Drop(reason, f"finding {row.finding_text!r}")
    return replace(row, finding=finding)


def safe_path(folder: Path) -> RowFilter:
    """Keeps the rows whose image lies inside ``folder`` (a row cannot name /etc/passwd or ../..)."""

    @row_filter
    def safe_path(row: CohenRow) -> CohenRow | Drop:
        unsafe = not row.filename or row.filename.startswith(("/", "\\")) or Path(row.filename).is_absolute()
        path = None if unsafe else resolve_inside(folder, row.source_file)
        if path is None:
            return Drop("unsafe path", "absolute or outside the source folder")
        return replace(row, file=path)

    return safe_path


def _record(row: CohenRow) -> SourceRecord:
    """Without a patient id an image is its own patient."""
    return to_record(row, row.patient or f"file:{row.source_file}", view=row.view.upper())
