"""A user's own images listed in a CSV: ``path,finding`` plus optional ``patient_id,view,sex,age``.

Relative paths resolve against the CSV's folder and must stay inside it (absolute and ``../``
paths are excluded as unsafe, as in the Cohen reader). ``finding`` may be a cxrclf finding
(``covid19``...) or any Cohen-style text (``COVID-19``, ``No Finding``). Without a
``patient_id`` column each image counts as its own patient (reported), and without a
``view`` column the view is not filtered.
"""

from __future__ import annotations

import re
from pathlib import Path

from cxrclf.data.sources import Exclusion, SourceRecord, SourceRows, normalise_age, normalise_sex, resolve_inside
from cxrclf.data.sources.cohen import map_finding
from cxrclf.io import read_csv_rows
from cxrclf.labels import FINDINGS

__all__ = ["read", "source_name"]


def source_name(csv_path: Path) -> str:
    return "table:" + re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(csv_path).stem)


def read(csv_path: Path, views: tuple[str, ...]) -> SourceRows:
    csv_path = Path(csv_path)
    rows = read_csv_rows(csv_path, ("path", "finding"), "table CSV")
    source = source_name(csv_path)
    root = csv_path.parent.resolve()
    wanted = {v.strip().upper() for v in views}
    out = SourceRows()
    for row in rows:
        relative = row["path"]
        text = row["finding"]
        finding = text.lower() if text.lower() in FINDINGS else map_finding(text)
        if finding is None:
            out.exclusions.append(Exclusion(source, relative, "unrecognised finding", f"finding {text!r}"))
            continue
        view = row.get("view", "").upper()
        if "view" in row and view not in wanted:  # every row has the header's keys
            out.exclusions.append(Exclusion(source, relative, "view not requested" if view else "view not recorded", f"view {view}"))
            continue
        path = resolve_inside(root, relative)  # the rule the Cohen reader follows: nothing outside the table's folder
        if path is None:
            out.exclusions.append(Exclusion(source, relative, "unsafe path", "absolute or outside the table's folder"))
            continue
        if not path.is_file():
            out.exclusions.append(Exclusion(source, relative, "file not found"))
            continue
        patient = row.get("patient_id", "")
        out.records.append(
            SourceRecord(
                source=source,
                file=path.resolve(),
                source_file=relative,
                patient_id=f"{source}:{patient}" if patient else f"{source}:file:{relative}",
                finding=finding,
                view=view,
                sex=normalise_sex(row.get("sex", "")),
                age=normalise_age(row.get("age", "")),
            )
        )
    return out
