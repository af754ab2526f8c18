"""Lung mask pairs: where the masks of a download are, and reading them.

Three layouts give (X-ray, lung masks) pairs:

- Montgomery, as NLM ships it: ``MontgomerySet/CXR_png/MCUCXR_dddd_L.png`` with one mask per
  lung under the same name in ``ManualMask/leftMask/`` and ``ManualMask/rightMask/`` (named
  from the patient's side); the two are joined;
- Shenzhen's published masks: ``mask/CHNCXR_dddd_L_mask.png`` (or ``masks/``), both lungs in one;
- a CSV of ``image,mask`` pairs (optional ``patient_id``; relative paths resolve against the
  CSV's folder), for any other source.

Masks are found with the NLM reader's own rule (:func:`cxrclf.data.sources.nlm.mask_side`),
so fuse and segmentation agree on which files are masks. Images and masks are read through
:func:`cxrclf.data.imageio.read_image`, the one decoding path; a mask is every pixel above
half its range.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrclf.data import imageio
from cxrclf.data.sources import nlm
from cxrclf.errors import CxrclfError
from cxrclf.io import read_csv_rows

__all__ = ["MaskPair", "find_pairs", "pairs_from_csv", "pairs_from_nlm", "read_mask", "read_pair", "split_patients", "table_sha256"]


@dataclass(frozen=True)
class MaskPair:
    image: Path
    masks: tuple[Path, ...]   # joined into one lung mask (Montgomery: left and right)
    patient_id: str
    source: str


def pairs_from_nlm(folder: Path) -> tuple[list[MaskPair], dict]:
    """Pairs under an NLM folder (Montgomery and/or Shenzhen, the set's folder or a parent).

    Returns the pairs and a report: X-rays without masks and masks without an X-ray, counted
    per source (a Montgomery X-ray with only one of its two lung masks is not used).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CxrclfError("NLM folder not found" if not folder.exists() else "NLM folder must be a folder", folder)
    images: dict[str, Path] = {}
    masks: dict[str, dict[str, Path]] = {}
    for path in sorted(p for p in folder.rglob("*.png") if nlm.MASK_PATTERN.match(p.name)):
        side = nlm.mask_side(path, folder)
        match = nlm.MASK_PATTERN.match(path.name)
        stem = f"{match.group(1).upper()}_{match.group(2)}_{match.group(3)}"
        if side is None:
            if nlm.PATTERN.match(path.name):
                images[stem] = path
        else:
            masks.setdefault(stem, {})[side] = path
    pairs, report = [], {"without_masks": {}, "masks_without_image": {}, "incomplete_masks": {}}
    for stem, image in sorted(images.items()):
        source = nlm.SOURCES[stem.split("_")[0]]
        found = masks.get(stem, {})
        if "both" in found:
            chosen: tuple[Path, ...] = (found["both"],)
        elif "left" in found and "right" in found:
            chosen = (found["left"], found["right"])
        else:
            key = "incomplete_masks" if found else "without_masks"
            report[key][source] = report[key].get(source, 0) + 1
            continue
        number = stem.split("_")[1]
        pairs.append(MaskPair(image, chosen, f"{source}:{number}", source))
    for stem in sorted(set(masks) - set(images)):
        source = nlm.SOURCES[stem.split("_")[0]]
        report["masks_without_image"][source] = report["masks_without_image"].get(source, 0) + 1
    return pairs, report


def pairs_from_csv(csv_path: Path) -> list[MaskPair]:
    """Pairs listed in a CSV with columns ``image,mask`` (and optionally ``patient_id``)."""
    csv_path = Path(csv_path)
    rows = read_csv_rows(csv_path, ("image", "mask"), "mask CSV")
    root = csv_path.parent.resolve()
    source = "table:" + csv_path.stem
    pairs = []
    for number, row in enumerate(rows, start=2):
        files = []
        for column in ("image", "mask"):
            if not row[column]:
                raise CxrclfError(f"line {number}: empty {column} path", csv_path)
            path = Path(row[column])
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise CxrclfError(f"line {number}: {column} file not found ({row[column]})", csv_path)
            files.append(path.resolve())
        patient = row.get("patient_id") or files[0].stem
        pairs.append(MaskPair(files[0], (files[1],), f"{source}:{patient}", source))
    if not pairs:
        raise CxrclfError("the mask CSV lists no pairs", csv_path)
    return pairs


def find_pairs(nlm_folder: Path | None = None, masks_csv: Path | None = None) -> tuple[list[MaskPair], dict]:
    """Every pair from an NLM folder and/or a CSV, and what was left out (see :func:`pairs_from_nlm`)."""
    if nlm_folder is None and masks_csv is None:
        raise CxrclfError("no training masks given: name an NLM folder (--nlm) and/or a CSV of image,mask pairs (--masks)")
    pairs, report = [], {"without_masks": {}, "masks_without_image": {}, "incomplete_masks": {}}
    if nlm_folder is not None:
        pairs, report = pairs_from_nlm(nlm_folder)
        if not pairs:
            raise CxrclfError("no X-ray with its lung masks found (expected MontgomerySet/ManualMask/leftMask/ and rightMask/, "
                              "or Shenzhen's mask/CHNCXR_dddd_L_mask.png)", nlm_folder)
    if masks_csv is not None:
        pairs = pairs + pairs_from_csv(masks_csv)
    images = [p.image.resolve() for p in pairs]
    if len(set(images)) != len(images):
        twice = next(p for p in images if images.count(p) > 1)
        raise CxrclfError("an X-ray is listed twice (in the NLM folder and the CSV?)", twice)
    return pairs, report


def read_mask(paths: tuple[Path, ...], shape: tuple[int, int] | None = None) -> np.ndarray:
    """The union of the mask files as bool; every file must have ``shape`` when given."""
    joined = None
    for path in paths:
        pixels = imageio.read_image(path)
        if shape is not None and pixels.shape != tuple(shape):
            raise CxrclfError(f"mask is {pixels.shape[1]}x{pixels.shape[0]} but its X-ray is {shape[1]}x{shape[0]}; masks must have the X-ray's size", path)
        top = np.iinfo(pixels.dtype).max if pixels.dtype.kind == "u" else 1.0
        mask = pixels > top / 2
        joined = mask if joined is None else joined | mask
    return joined


def read_pair(pair: MaskPair) -> tuple[np.ndarray, np.ndarray]:
    """(X-ray pixels as decoded, its lung mask as bool of the same size)."""
    image = imageio.read_image(pair.image)
    return image, read_mask(pair.masks, image.shape)


def split_patients(pairs: list[MaskPair], val_frac: float, test_frac: float, seed: int) -> list[str]:
    """``train``, ``val`` or ``test`` per pair; whole patients, in proportion within each source.

    Each source with at least three patients gives at least one to validation and one to
    test (when its fraction is above 0), so every source is measured on patients it never trained on.
    """
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise CxrclfError(f"validation and test fractions must be in [0, 1) and leave images to train on, not {val_frac} and {test_frac}")
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for source in sorted({p.source for p in pairs}):
        patients = sorted({p.patient_id for p in pairs if p.source == source})
        order = [patients[i] for i in rng.permutation(len(patients))]
        count = len(order)
        n_test = int(round(test_frac * count))
        n_val = int(round(val_frac * count))
        if count >= 3:
            n_test = max(n_test, 1 if test_frac > 0 else 0)
            n_val = max(n_val, 1 if val_frac > 0 else 0)
        n_test = min(n_test, max(count - 1, 0))
        n_val = min(n_val, max(count - 1 - n_test, 0))
        for index, patient in enumerate(order):
            assignment[patient] = "test" if index < n_test else "val" if index < n_test + n_val else "train"
    return [assignment[p.patient_id] for p in pairs]


def table_sha256(pairs: list[MaskPair], splits: list[str]) -> str:
    """A fingerprint of the pairs and their split: a resumed run must see the same ones."""
    digest = hashlib.sha256()
    for pair, split in zip(pairs, splits):
        digest.update(f"{pair.image}|{'|'.join(map(str, pair.masks))}|{pair.patient_id}|{split}\n".encode())
    return digest.hexdigest()
