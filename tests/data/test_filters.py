"""The row-filter pipeline that every source reader is built from."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from cxrclf.data.sources import Exclusion
from cxrclf.data.sources.filters import (Drop, apply_filters, file_exists, inside_folder, requested_views, row_filter, view_recorded,
                                         view_requested)


@dataclass(frozen=True)
class Row:
    position: int
    source_file: str
    view: str = "PA"
    file: Path | None = None
    finding: str = ""
    source: str = "test"


@row_filter
def named_finding(row: Row) -> Row | Drop:
    if row.source_file.startswith("bad"):
        return Drop("unrecognised finding", row.source_file)
    return replace(row, finding=row.source_file.split(".")[0])


def test_first_failing_filter_wins_and_exclusions_keep_row_order(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "c.png").write_bytes(b"x")
    rows = [Row(0, "bad0.png"), Row(1, "a.png", view="ap"), Row(2, "c.png"), Row(3, "d.png", view=""), Row(4, "bad4.png", view=""),
            Row(5, "gone.png"), Row(6, "a.png")]
    rows = [replace(row, file=tmp_path / row.source_file) for row in rows]
    filters = [named_finding, view_recorded, view_requested(requested_views([" pa"])), file_exists]
    kept, exclusions = apply_filters(rows, filters)
    assert [(row.position, row.finding) for row in kept] == [(2, "c"), (6, "a")]
    # grouped by filter they would read 0, 4, 3, 1, 5: the report lists them as the source does
    assert exclusions == [
        Exclusion("test", "bad0.png", "unrecognised finding", "bad0.png"),
        Exclusion("test", "a.png", "view not requested", "view ap"),
        Exclusion("test", "d.png", "view not recorded", ""),
        Exclusion("test", "bad4.png", "unrecognised finding", "bad4.png"),
        Exclusion("test", "gone.png", "file not found", ""),
    ]
    assert view_requested(set()).__name__ == "view_requested" and named_finding.__name__ == "named_finding"


def test_inside_folder_refuses_escapes_and_links_out(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    rows = [Row(0, "in.png"), Row(1, "../outside.png"), Row(2, "/etc/passwd"), Row(3, "link.png"), Row(4, "sub/../in.png")]
    kept, exclusions = apply_filters(rows, [inside_folder(root, "outside")])
    assert [row.position for row in kept] == [0, 4]
    assert [(e.source_file, e.reason, e.detail) for e in exclusions] == [
        ("../outside.png", "unsafe path", "outside"), ("/etc/passwd", "unsafe path", "outside"), ("link.png", "unsafe path", "outside")]
