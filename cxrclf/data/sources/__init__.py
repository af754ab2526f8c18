"""Source readers. Each translates one public source's layout into :class:`SourceRecord` rows.

Readers only read metadata (and, for RSNA, DICOM headers); pixels are decoded once, later,
by :mod:`cxrclf.data.fuse`. A row a reader cannot use becomes an :class:`Exclusion` with
a short ``reason`` (counted in the report) and a ``detail``. Every reader has the same
shape: load the source's rows, apply its named filters in order
(:mod:`cxrclf.data.sources.filters`), translate the rows that pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxrclf.errors import CxrclfError

__all__ = ["Exclusion", "SourceRecord", "SourceRows", "normalise_age", "normalise_sex", "require_folder", "resolve_inside"]


@dataclass(frozen=True)
class SourceRecord:
    source: str
    file: Path            # absolute path of the image file
    source_file: str      # relative to the source folder, as shown to users
    patient_id: str       # namespaced: "<source>:<id>"
    finding: str
    view: str = ""
    sex: str = ""
    age: str = ""


@dataclass(frozen=True)
class Exclusion:
    source: str
    source_file: str
    reason: str
    detail: str = ""


@dataclass
class SourceRows:
    records: list[SourceRecord] = field(default_factory=list)
    exclusions: list[Exclusion] = field(default_factory=list)
    lung_masks: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> side -> masks found (not read as X-rays)

    def extend(self, other: "SourceRows") -> None:
        self.records.extend(other.records)
        self.exclusions.extend(other.exclusions)
        for source, sides in other.lung_masks.items():
            for side, count in sides.items():
                self.lung_masks.setdefault(source, {}).setdefault(side, 0)
                self.lung_masks[source][side] += count


def require_folder(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise CxrclfError(f"{what} folder does not exist", path)
    if not path.is_dir():
        raise CxrclfError(f"{what} must be a folder", path)
    return path


def resolve_inside(root: Path, relative: str) -> Path | None:
    """``root/relative`` if it stays inside ``root``; ``None`` for absolute or escaping paths."""
    if not relative or Path(relative).is_absolute() or relative.startswith(("/", "\\")):
        return None
    candidate = (root / relative).resolve()
    try:
        candidate.relative_to(root.resolve())
    except ValueError:
        return None
    return candidate


def normalise_sex(value: str) -> str:
    value = str(value).strip().lower()
    if value in ("m", "male", "man"):
        return "M"
    if value in ("f", "female", "woman"):
        return "F"
    return ""


def normalise_age(value: str) -> str:
    """Years as a plain integer string: '068Y', '45yrs', '68', '45.0' -> '68'/'45'; else ''."""
    digits = ""
    for char in str(value).strip():
        if char.isdigit() or (char == "." and digits and "." not in digits):
            digits += char
        elif digits:
            break
    if not digits:
        return ""
    try:
        years = int(float(digits))
    except ValueError:
        return ""
    text = str(value).strip().upper()
    if text.endswith("M") and not text.endswith("YM"):  # DICOM age strings: 006M = 6 months
        years = 0
    return str(years) if 0 <= years < 130 else ""
