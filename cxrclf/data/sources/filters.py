"""Row filters: the steps between loading a source and translating it into the manifest schema.

A reader is three parts: its loading step (a source's files -> typed rows, one per image),
a list of named filters applied in order, and the translation of the rows that pass into
:class:`~cxrclf.data.sources.SourceRecord`. A filter takes the rows still in play and
returns the rows it keeps (unchanged, or with a field it has worked out, as the finding
or the view read from a header) and the rows it drops, each with a reason and a detail.

A row is dropped by the first filter it fails, as in a loop with one ``continue`` per rule;
:func:`apply_filters` hands the exclusions back in the source's own row order (each row
carries its ``position``), which is the order ``fuse_report.json`` lists them in.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Callable, Generic, Protocol, Sequence, TypeVar

from cxrclf.data.sources import Exclusion, SourceRecord, normalise_age, normalise_sex, resolve_inside

__all__ = ["Drop", "Dropped", "RowFilter", "apply_filters", "file_exists", "inside_folder", "requested_views", "row_filter", "to_record", "view_recorded",
           "view_requested"]


class SourceRow(Protocol):
    """What every reader's row type carries (frozen dataclasses: read-only attributes)."""

    @property
    def position(self) -> int: ...   # where the source lists it: exclusions keep this order

    @property
    def source(self) -> str: ...

    @property
    def source_file(self) -> str: ...


Row = TypeVar("Row", bound=SourceRow)


@dataclass(frozen=True)
class Drop:
    """A rule's verdict on a row it excludes: the short reason counted in the report, and a detail."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Dropped(Generic[Row]):
    row: Row
    drop: Drop

    def exclusion(self) -> Exclusion:
        return Exclusion(self.row.source, self.row.source_file, self.drop.reason, self.drop.detail)


RowFilter = Callable[[list[Row]], tuple[list[Row], list[Dropped[Row]]]]


def row_filter(rule: Callable[[Row], Row | Drop]) -> RowFilter[Row]:
    """A filter from a rule on one row, keeping the rule's name: the rule returns the row to keep
    it (possibly with a field filled in) or a :class:`Drop` to exclude it."""

    @wraps(rule)
    def keep(rows: list[Row]) -> tuple[list[Row], list[Dropped[Row]]]:
        kept: list[Row] = []
        dropped: list[Dropped[Row]] = []
        for row in rows:
            verdict = rule(row)
            if isinstance(verdict, Drop):
                dropped.append(Dropped(row, verdict))
            else:
                kept.append(verdict)
        return kept, dropped

    return keep


def to_record(row, patient: str, *, view: str | None = None, file: Path | None = None) -> SourceRecord:
    """The translation step: a row that passed every filter as a manifest :class:`SourceRecord`.

    ``row`` carries ``source``, ``file``, ``source_file``, ``finding``, ``view`` and the raw
    ``sex`` and ``age``; ``patient`` is namespaced by the source. ``view`` and ``file``
    replace the row's where a reader records them otherwise (upper case, a resolved path).
    """
    return SourceRecord(
        source=row.source,
        file=row.file if file is None else file,
        source_file=row.source_file,
        patient_id=f"{row.source}:{patient}",
        finding=row.finding,
        view=row.view if view is None else view,
        sex=normalise_sex(row.sex),
        age=normalise_age(row.age),
    )


def apply_filters(rows: list[Row], filters: Sequence[RowFilter[Row]]) -> tuple[list[Row], list[Exclusion]]:
    """The rows every filter keeps, and the others' exclusions in row order."""
    dropped: list[Dropped[Row]] = []
    for keep in filters:
        rows, lost = keep(rows)
        dropped.extend(lost)
    dropped.sort(key=lambda entry: entry.row.position)
    return rows, [entry.exclusion() for entry in dropped]


# ----------------------------------------------------------------------------- shared rules


def requested_views(views: Sequence[str]) -> set[str]:
    """The views asked for, as the readers compare them (upper case, no spaces around)."""
    return {view.strip().upper() for view in views}


class _Viewed(SourceRow, Protocol):
    @property
    def view(self) -> str: ...


class _Located(SourceRow, Protocol):
    @property
    def file(self) -> Path | None: ...


@row_filter
def view_recorded(row: _Viewed) -> _Viewed | Drop:
    return row if row.view else Drop("view not recorded")


def view_requested(wanted: set[str]) -> RowFilter:
    """Keeps the rows whose view (in any case) is one of ``wanted`` (see :func:`requested_views`)."""

    @row_filter
    def view_requested(row: _Viewed) -> _Viewed | Drop:
        return row if row.view.upper() in wanted else Drop("view not requested", f"view {row.view}")

    return view_requested


@row_filter
def file_exists(row: _Located) -> _Located | Drop:
    return row if row.file is not None and row.file.is_file() else Drop("file not found")


def inside_folder(root: Path, detail: str) -> RowFilter:
    """Keeps the rows whose ``source_file``, relative to ``root``, stays inside it (links resolved)."""

    @row_filter
    def inside_folder(row: Row) -> Row | Drop:
        return row if resolve_inside(root, row.source_file) is not None else Drop("unsafe path", detail)

    return inside_folder
