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
from pathlib import Path

from cxrclf.data.sources import Exclusion, SourceRecord, SourceRows, normalise_age, normalise_sex, require_folder, resolve_inside
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


def read(folder: Path, views: tuple[str, ...]) -> SourceRows:
    folder = require_folder(folder, "Cohen")
    metadata = folder / "metadata.csv"
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

    wanted = {v.strip().upper() for v in views}
    out = SourceRows()

    def get(row: dict, key: str) -> str:
        name = columns.get(key)
        return (row.get(name) or "").strip() if name else ""

    for row in rows:
        folder_name = get(row, "folder") or "images"
        filename = get(row, "filename")
        source_file = f"{folder_name}/{filename}" if filename else ""
        modality = get(row, "modality")
        view = get(row, "view")
        if modality and modality.lower() not in ("x-ray", "xray", "cr", "dx"):
            out.exclusions.append(Exclusion(SOURCE, source_file, "not an X-ray", f"modality {modality}"))
            continue
        if not view:
            out.exclusions.append(Exclusion(SOURCE, source_file, "view not recorded"))
            continue
        if view.upper() not in wanted:
            out.exclusions.append(Exclusion(SOURCE, source_file, "view not requested", f"view {view}"))
            continue
        finding_text = get(row, "finding")
        finding = map_finding(finding_text)
        if finding is None:
            reason = "unlabelled finding" if finding_text.strip().lower() in _UNLABELLED else "unrecognised finding"
            out.exclusions.append(Exclusion(SOURCE, source_file, reason, f"finding {finding_text!r}"))
            continue
        unsafe = not filename or filename.startswith(("/", "\\")) or Path(filename).is_absolute()
        path = None if unsafe else resolve_inside(folder, source_file)
        if path is None:
            out.exclusions.append(Exclusion(SOURCE, source_file, "unsafe path", "absolute or outside the source folder"))
            continue
        if not path.is_file():
            out.exclusions.append(Exclusion(SOURCE, source_file, "file not found"))
            continue
        patient = get(row, "patientid")
        out.records.append(
            SourceRecord(
                source=SOURCE,
                file=path,
                source_file=source_file,
                patient_id=f"{SOURCE}:{patient}" if patient else f"{SOURCE}:file:{source_file}",
                finding=finding,
                view=view.upper(),
                sex=normalise_sex(get(row, "sex")),
                age=normalise_age(get(row, "age")),
            )
        )
    return out
