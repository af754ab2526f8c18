"""RSNA Pneumonia Detection Challenge: label CSVs + ``stage_2_train_images/*.dcm``.

The label file has one row per bounding box, so an image with three boxes appears three
times; this reader yields one row per image. The view is only in the DICOM header. RSNA's
``patientId`` identifies an image, not a person.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

from cxrclf.choices import RsnaNotNormal, parse
from cxrclf.data.imageio import read_dicom_fields
from cxrclf.data.sources import SourceRecord, SourceRows, require_folder
from cxrclf.data.sources.filters import (Drop, RowFilter, apply_filters, file_exists, requested_views, row_filter, to_record,
                                         view_recorded, view_requested)
from cxrclf.errors import CxrclfError
from cxrclf.io import read_csv_rows
from cxrclf.labels import NORMAL, OTHER_PNEUMONIA

__all__ = ["CLASSES", "IMAGES", "LABELS", "NOT_NORMAL", "SOURCE", "read"]

SOURCE = "rsna"
LABELS = "stage_2_train_labels.csv"
CLASSES = "stage_2_detailed_class_info.csv"
IMAGES = "stage_2_train_images"
NOT_NORMAL = "No Lung Opacity / Not Normal"


def _read_csv(path: Path, needed: tuple[str, ...]) -> list[dict[str, str]]:
    return read_csv_rows(path, needed, "RSNA file")


@dataclass(frozen=True)
class RsnaImage:
    """One image (its box rows gathered), as the filters see it."""

    position: int                # first appearance in the class file
    image_id: str
    file: Path
    classes: frozenset[str]      # every box row's class (one when they agree)
    targets: frozenset[str]      # every box row's Target
    label: str = ""              # set by one_class
    finding: str = ""            # set by known_class
    view: str = ""               # set by readable_header, with sex and age
    sex: str = ""
    age: str = ""
    source: str = SOURCE

    @property
    def source_file(self) -> str:
        return f"{IMAGES}/{self.image_id}.dcm"


def read(folder: Path, views: tuple[str, ...], not_normal: RsnaNotNormal | str = RsnaNotNormal.exclude) -> SourceRows:
    """``not_normal``: ``exclude`` (default; those images are abnormal) or ``normal`` (the paper)."""
    folder = require_folder(folder, "RSNA")
    filters = [one_class, class_matches_target, known_class(not_normal), plain_file_name, file_exists, readable_header,
               view_recorded, view_requested(requested_views(views))]
    rows, exclusions = apply_filters(_load(folder), filters)
    return SourceRows(records=[_record(row) for row in rows], exclusions=exclusions)


def _load(folder: Path) -> list[RsnaImage]:
    """One row per image, in first-appearance order in the class file, with every box row's class and Target."""
    labels = _read_csv(folder / LABELS, ("patientId", "Target"))
    classes = _read_csv(folder / CLASSES, ("patientId", "class"))
    image_folder = folder / IMAGES
    if not image_folder.is_dir():
        raise CxrclfError("RSNA image folder not found", image_folder)
    image_class: OrderedDict[str, set[str]] = OrderedDict()
    for row in classes:
        image_class.setdefault(row["patientId"].strip(), set()).add(row["class"].strip())
    image_target: dict[str, set[str]] = {}
    for row in labels:
        image_target.setdefault(row["patientId"].strip(), set()).add(row["Target"].strip())
    return [
        RsnaImage(position, image_id, image_folder / f"{image_id}.dcm", frozenset(found), frozenset(image_target.get(image_id, set())))
        for position, (image_id, found) in enumerate(image_class.items())
    ]


@row_filter
def one_class(row: RsnaImage) -> RsnaImage | Drop:
    """Every box row of an image must name the same class."""
    if len(row.classes) != 1:
        return Drop("conflicting labels", "; ".join(sorted(row.classes)))
    return replace(row, label=next(iter(row.classes)))


@row_filter
def class_matches_target(row: RsnaImage) -> RsnaImage | Drop:
    """Target is 1 for Lung Opacity and 0 otherwise (an image absent from the label file passes)."""
    expected_target = "1" if row.label == "Lung Opacity" else "0"
    if row.targets and row.targets != {expected_target}:
        return Drop("conflicting labels", f"class {row.label}, Target {sorted(row.targets)}")
    return row


def known_class(not_normal: RsnaNotNormal | str) -> RowFilter:
    """Lung Opacity is other pneumonia, Normal is normal; ``not_normal`` decides "No Lung Opacity / Not Normal"."""
    as_normal = parse(RsnaNotNormal, not_normal, "the RSNA 'Not Normal' rule") is RsnaNotNormal.normal

    @row_filter
    def known_class(row: RsnaImage) -> RsnaImage | Drop:
        if row.label == "Lung Opacity":
            return replace(row, finding=OTHER_PNEUMONIA)
        if row.label == "Normal":
            return replace(row, finding=NORMAL)
        if row.label == NOT_NORMAL:
            if not as_normal:
                return Drop("not normal, no opacity", "excluded by default (--rsna-not-normal normal keeps them as normal)")
            return replace(row, finding=NORMAL)
        return Drop("unrecognised finding", f"class {row.label!r}")

    return known_class


@row_filter
def plain_file_name(row: RsnaImage) -> RsnaImage | Drop:
    """``patientId`` names the DICOM file: it must not reach outside the image folder."""
    if "/" in row.image_id or "\\" in row.image_id or row.image_id.startswith("."):
        return Drop("unsafe path", "patientId is not a plain file name")
    return row


@row_filter
def readable_header(row: RsnaImage) -> RsnaImage | Drop:
    """The view (and sex and age) are only in the DICOM header."""
    try:
        header = read_dicom_fields(row.file, ("ViewPosition", "PatientSex", "PatientAge"))
    except CxrclfError as exc:
        return Drop("unreadable image", exc.reason)
    return replace(row, view=header["ViewPosition"].upper(), sex=header["PatientSex"], age=header["PatientAge"])


def _record(row: RsnaImage) -> SourceRecord:
    """RSNA's ``patientId`` names an image, not a person: each image is its own patient."""
    return to_record(row, row.image_id)
