"""Leakage audit of any manifest: shared patients, identical and near-identical images across splits.

Works on cxrclf manifests and on other CSVs with ``split`` and ``patient_id`` (and either
hash columns or ``path`` to images, whose hashes are then computed). With ``finding`` and
``source`` columns (a fused or preprocessed folder), the result also holds the class x source
table and its warnings, counted by :func:`cxrclf.data.confounding.confounding` as ``fuse`` counts them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrclf.data import imageio, split
from cxrclf.data.confounding import confounding
from cxrclf.data.manifest import manifest_path, read_manifest
from cxrclf.errors import CxrclfError

__all__ = ["audit", "audit_frame", "load"]


def _hash_images(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    frame = frame.copy()
    shas, phashes = [], []
    for relative in frame["path"]:
        try:
            image = imageio.read_image(root / relative)
        except CxrclfError as exc:
            raise CxrclfError(f"cannot hash image {relative}: {exc.reason}", root / relative) from exc
        shas.append(imageio.pixel_sha256(image))
        phashes.append(imageio.perceptual_hash(image))
    frame["sha256"], frame["phash"] = shas, phashes
    return frame


def load(path: Path) -> pd.DataFrame:
    """Any manifest with ``split`` and ``patient_id``; hashes computed from ``path`` when absent."""
    frame = read_manifest(path, required=("split", "patient_id"), strict=False)
    if "phash" in frame.columns and not frame["phash"].str.fullmatch(r"[0-9a-fA-F]{64}").all():
        if "path" not in frame.columns:
            raise CxrclfError("phash column holds values that are not 64 hex digits (cxrclf's 256-bit hash), and there is no path column to compute them from", manifest_path(path))
        frame = frame.drop(columns=["phash"])
    if "sha256" not in frame.columns or "phash" not in frame.columns:
        if "path" not in frame.columns:
            raise CxrclfError("needs sha256 and phash columns, or a path column to compute them from", manifest_path(path))
        frame = _hash_images(frame, manifest_path(path).parent)
    return frame


def audit_frame(frame: pd.DataFrame, near_duplicate_bits: int = 24) -> dict:
    """The leakage findings of a manifest (pure). ``leakage`` is true when any list is non-empty."""
    split.check_distance(near_duplicate_bits)
    patient_splits = frame.groupby("patient_id")["split"].agg(lambda s: sorted(set(s)))
    shared_patients = [{"patient_id": p, "splits": s} for p, s in patient_splits.items() if len(s) > 1]

    identical = []
    repeated_within_split = 0
    for sha, sub in frame.groupby("sha256", sort=True):
        if len(sub) < 2:
            continue
        splits = sorted(set(sub["split"]))
        if len(splits) > 1:
            identical.append({"sha256": sha, "splits": splits, "rows": sub.get("image_id", sub.get("path", sub.index.astype(str))).astype(str).tolist()})
        else:
            repeated_within_split += len(sub) - 1

    labels = frame.get("image_id", frame.get("path", pd.Series(frame.index.astype(str), index=frame.index))).astype(str).tolist()
    near = []
    hashes, split_names, shas = frame["phash"].tolist(), frame["split"].tolist(), frame["sha256"].tolist()
    for i, j in split.hamming_pairs(hashes, near_duplicate_bits):
        if split_names[i] != split_names[j] and shas[i] != shas[j]:
            near.append({"rows": [labels[i], labels[j]], "splits": [split_names[i], split_names[j]]})

    confounded = confounding(frame["finding"], frame["source"]) if {"finding", "source"} <= set(frame.columns) else None
    return {
        "rows": int(len(frame)),
        "leakage": bool(shared_patients or identical or near),
        "patients_in_several_splits": shared_patients,
        "identical_images_across_splits": identical,
        "near_identical_images_across_splits": near,
        "identical_images_repeated_within_a_split": repeated_within_split,
        "confounding": None if confounded is None else confounded.to_dict(),  # the class x source table, as fuse reports it
    }


def audit(path: Path, near_duplicate_bits: int = 24) -> dict:
    return audit_frame(load(path), near_duplicate_bits)
