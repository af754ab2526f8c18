"""RSNA Pneumonia Detection Challenge: label CSVs + ``stage_2_train_images/*.dcm``.

The label file has one row per bounding box, so an image with three boxes appears three
times; this reader yields one row per image. The view is only in the DICOM header. RSNA's
``patientId`` identifies an image, not a person.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from cxrclf.data.imageio import read_dicom_fields
from cxrclf.data.sources import Exclusion, SourceRecord, SourceRows, normalise_age, normalise_sex, require_folder
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


def read(folder: Path, views: tuple[str, ...], not_normal: str = "exclude") -> SourceRows:
    """``not_normal``: ``exclude`` (default; those images are abnormal) or ``normal`` (the paper)."""
    folder = require_folder(folder, "RSNA")
    labels = _read_csv(folder / LABELS, ("patientId", "Target"))
    classes = _read_csv(folder / CLASSES, ("patientId", "class"))
    image_folder = folder / IMAGES
    if not image_folder.is_dir():
        raise CxrclfError("RSNA image folder not found", image_folder)

    # One entry per image, in first-appearance order; every box row must agree.
    image_class: OrderedDict[str, set[str]] = OrderedDict()
    for row in classes:
        image_class.setdefault(row["patientId"].strip(), set()).add(row["class"].strip())
    image_target: dict[str, set[str]] = {}
    for row in labels:
        image_target.setdefault(row["patientId"].strip(), set()).add(row["Target"].strip())

    wanted = {v.strip().upper() for v in views}
    out = SourceRows()
    for image_id, found in image_class.items():
        source_file = f"{IMAGES}/{image_id}.dcm"
        if len(found) != 1:
            out.exclusions.append(Exclusion(SOURCE, source_file, "conflicting labels", "; ".join(sorted(found))))
            continue
        label = next(iter(found))
        targets = image_target.get(image_id, set())
        expected_target = "1" if label == "Lung Opacity" else "0"
        if targets and targets != {expected_target}:
            out.exclusions.append(Exclusion(SOURCE, source_file, "conflicting labels", f"class {label}, Target {sorted(targets)}"))
            continue
        if label == "Lung Opacity":
            finding = OTHER_PNEUMONIA
        elif label == "Normal":
            finding = NORMAL
        elif label == NOT_NORMAL:
            if not_normal != "normal":
                out.exclusions.append(Exclusion(SOURCE, source_file, "not normal, no opacity", "excluded by default (--rsna-not-normal normal keeps them as normal)"))
                continue
            finding = NORMAL
        else:
            out.exclusions.append(Exclusion(SOURCE, source_file, "unrecognised finding", f"class {label!r}"))
            continue
        path = image_folder / f"{image_id}.dcm"
        if "/" in image_id or "\\" in image_id or image_id.startswith("."):
            out.exclusions.append(Exclusion(SOURCE, source_file, "unsafe path", "patientId is not a plain file name"))
            continue
        if not path.is_file():
            out.exclusions.append(Exclusion(SOURCE, source_file, "file not found"))
            continue
        try:
            header = read_dicom_fields(path, ("ViewPosition", "PatientSex", "PatientAge"))
        except CxrclfError as exc:
            out.exclusions.append(Exclusion(SOURCE, source_file, "unreadable image", exc.reason))
            continue
        view = header["ViewPosition"].upper()
        if not view:
            out.exclusions.append(Exclusion(SOURCE, source_file, "view not recorded"))
            continue
        if view not in wanted:
            out.exclusions.append(Exclusion(SOURCE, source_file, "view not requested", f"view {view}"))
            continue
        out.records.append(
            SourceRecord(
                source=SOURCE,
                file=path,
                source_file=source_file,
                patient_id=f"{SOURCE}:{image_id}",
                finding=finding,
                view=view,
                sex=normalise_sex(header["PatientSex"]),
                age=normalise_age(header["PatientAge"]),
            )
        )
    return out
