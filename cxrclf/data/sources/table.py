"""A user's own images listed in a CSV: ``path,finding`` plus optional ``patient_id,view,sex,age``.

Relative paths resolve against the CSV's folder and must stay inside it (absolute and ``../``
paths are excluded as unsafe, as in the Cohen reader). ``finding`` may be a cxrclf finding
(``covid19``...) or any Cohen-style text (``COVID-19``, ``No Finding``). Without a
``patient_id`` column each image counts as its own patient (reported), and without a
``view`` column the view is not filtered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from cxrclf.data.sources import SourceRecord, SourceRows
from cxrclf.data.sources.cohen import map_finding
from cxrclf.data.sources.filters import (Drop, RowFilter, apply_filters, file_exists, inside_folder, requested_views, row_filter,
                                         to_record)
from cxrclf.io import read_csv_rows
from cxrclf.labels import FINDINGS

__all__ = ["read", "source_name"]


def source_name(csv_path: Path) -> str:
    return "table:" + re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(csv_path).stem)


@dataclass(frozen=True)
class TableRow:
    """One row of the user's CSV, as the filters see it."""

    position: int
    source: str
    source_file: str      # the ``path`` column, relative to the CSV's folder
    file: Path            # the CSV's folder / source_file (checked by inside_folder before use)
    finding_text: str
    view: str | None      # None without a ``view`` column: the view is not filtered
    patient: str
    sex: str
    age: str
    finding: str = ""     # set by known_finding


def read(csv_path: Path, views: tuple[str, ...]) -> SourceRows:
    csv_path = Path(csv_path)
    rows = _load(csv_path)
    filters = [known_finding, listed_view_requested(requested_views(views)),
               inside_folder(csv_path.parent.resolve(), "absolute or outside the table's folder"), file_exists]
    rows, exclusions = apply_filters(rows, filters)
    return SourceRows(records=[_record(row) for row in rows], exclusions=exclusions)


def _load(csv_path: Path) -> list[TableRow]:
    source = source_name(csv_path)
    root = csv_path.parent.resolve()
    return [
        TableRow(
            position=position, source=source, source_file=row["path"], file=root / row["path"], finding_text=row["finding"],
            view=row["view"].upper() if "view" in row else None,  # every row has the header's keys
            patient=row.get("patient_id", ""), sex=row.get("sex", ""), age=row.get("age", ""),
        )
        for position, row in enumerate(read_csv_rows(csv_path, ("path", "finding"), "table CSV"))
    ]


@row_filter
def known_finding(row: TableRow) -> TableRow | Drop:
    """A cxrclf finding name, or any text the Cohen reader understands."""
    text = row.finding_text
    finding = text.lower() if text.lower() in FINDINGS else map_finding(text)
    return Drop("unrecognised finding", f"finding {text!r}") if finding is None else replace(row, finding=finding)


def listed_view_requested(wanted: set[str]) -> RowFilter:
    """Like the other readers' view filters, when the table has a ``view`` column."""

    @row_filter
    def listed_view_requested(row: TableRow) -> TableRow | Drop:
        if row.view is None or row.view in wanted:
            return row
        return Drop("view not requested" if row.view else "view not recorded", f"view {row.view}")

    return listed_view_requested


def _record(row: TableRow) -> SourceRecord:
    """Without a ``patient_id`` an image is its own patient; without a ``view`` column the view is ''."""
    return to_record(row, row.patient or f"file:{row.source_file}", view=row.view or "", file=row.file.resolve())
