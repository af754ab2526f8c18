"""The manifest schema: one row per image, the contract between every stage.

A fused manifest (``data/fused/manifest.csv``) has :data:`FUSED_COLUMNS`; later stages
add columns (for example ``preprocessed_path``) but never remove or rename these.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from cxrclf.io import write_bytes
from cxrclf.errors import CxrclfError
from cxrclf.labels import FINDINGS

__all__ = ["FUSED_COLUMNS", "SPLITS", "manifest_path", "read_manifest", "select_split", "to_csv_bytes", "write_manifest"]

FUSED_COLUMNS: tuple[str, ...] = (
    "image_id",      # unique, stable, file-name safe
    "path",          # image file relative to the manifest's folder
    "source",        # cohen | nih | rsna | montgomery | shenzhen | table:<name>
    "source_file",   # the original file, relative to the source folder given to fuse
    "patient_id",    # namespaced by source: "cohen:123"
    "finding",       # one of labels.FINDINGS
    "view",          # PA, AP, ... as the source states it
    "sex",           # M | F | ""
    "age",           # years, "" when unknown
    "width",
    "height",
    "sha256",        # of the decoded pixels (dtype, shape and bytes)
    "phash",         # 256-bit perceptual hash, 64 hex digits
    "group",         # leakage group: patients linked by shared or near-identical images
    "split",         # train | val | test
    "fold",          # 0..K-1 outside test, -1 in test
)

SPLITS: tuple[str, ...] = ("train", "val", "test")
INT_COLUMNS = ("width", "height", "fold")
MANIFEST_NAME = "manifest.csv"


def manifest_path(folder_or_file: Path) -> Path:
    """Accept a stage folder or the manifest file itself."""
    path = Path(folder_or_file)
    return path / MANIFEST_NAME if path.is_dir() else path


def read_manifest(folder_or_file: Path, required: tuple[str, ...] = FUSED_COLUMNS, strict: bool = True) -> pd.DataFrame:
    """Read and validate a manifest; errors name the file and what is wrong.

    ``strict=False`` checks only that the CSV parses and has the ``required`` columns (for
    manifests written by other tools, whose values need not follow cxrclf's vocabulary).
    """
    path = manifest_path(folder_or_file)
    if not path.is_file():
        raise CxrclfError("no manifest here (expected a folder written by `cxrclf fuse` or a manifest.csv)", path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CxrclfError(f"not a readable CSV ({exc.__class__.__name__})", path) from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CxrclfError(f"missing column(s) {', '.join(missing)}", path)
    if not strict:
        return frame
    for column in INT_COLUMNS:
        if column in frame.columns:
            try:
                frame[column] = frame[column].astype(int)
            except ValueError as exc:
                raise CxrclfError(f"column {column} must hold integers", path) from exc
    if "finding" in frame.columns:
        unknown = sorted(set(frame["finding"]) - set(FINDINGS))
        if unknown:
            raise CxrclfError(f"unknown finding(s) {', '.join(unknown)}; expected {', '.join(FINDINGS)}", path)
    if "split" in frame.columns:
        unknown = sorted(set(frame["split"]) - set(SPLITS))
        if unknown:
            raise CxrclfError(f"unknown split(s) {', '.join(unknown)}; expected {', '.join(SPLITS)}", path)
    _check_ids_and_paths(frame, path)
    return frame


def _check_ids_and_paths(frame: pd.DataFrame, path: Path) -> None:
    """Ids become file names and paths are opened under the manifest's folder: neither may escape it."""
    if "image_id" in frame.columns:
        bad = next((i for i in frame["image_id"] if not _safe_name(i)), None)
        if bad is not None:
            raise CxrclfError(f"image_id {bad!r} is not a safe file name (no separators, no leading dot, no '..')", path)
        repeated = frame["image_id"][frame["image_id"].duplicated()]
        if len(repeated):
            raise CxrclfError(f"image_id {repeated.iloc[0]!r} appears more than once", path)
    for column in ("path", "fused_path"):
        if column in frame.columns:
            bad = next((p for p in frame[column] if not _safe_relative(p)), None)
            if bad is not None:
                raise CxrclfError(f"{column} {bad!r} must be relative to the manifest's folder and stay inside it", path)


def _safe_name(name: str) -> bool:
    return bool(name) and len(name) <= 255 and not name.startswith(".") and not any(c in name for c in "/\\\0:")


def _safe_relative(relative: str) -> bool:
    parts = relative.replace("\\", "/").split("/")
    return bool(relative) and not relative.startswith(("/", "\\")) and ".." not in parts and "\0" not in relative and ":" not in parts[0]


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue().encode("utf-8")


def write_manifest(frame: pd.DataFrame, folder: Path) -> Path:
    path = Path(folder) / MANIFEST_NAME
    write_bytes(path, to_csv_bytes(frame))
    return path


def select_split(frame: pd.DataFrame, split: str, fold: int | None = None) -> pd.DataFrame:
    """Rows of a split. With ``fold``, val is that fold and train is every other non-test fold."""
    if fold is None:
        return frame[frame["split"] == split]
    outside = frame[frame["split"] != "test"]
    if split == "test":
        return frame[frame["split"] == "test"]
    return outside[outside["fold"] == fold] if split == "val" else outside[outside["fold"] != fold]
