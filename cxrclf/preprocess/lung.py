"""Lung focus: crop an X-ray to its lung fields, or grey out everything outside them.

Pure transforms on an image and its lung mask (bool, same size):

- :func:`crop_to_lungs`: the bounding box of both lungs, which holds the mediastinum between
  them, widened by ``margin`` of the box's mean side on every side (clipped to the image);
- :func:`grey_outside_lungs`: every pixel farther than that distance from the lungs becomes
  the constant :data:`LUNG_FILL`;
- :func:`lung_problem`: why a mask is not a pair of lung fields (too small; no mediastinum
  between two fields; one field much smaller), or ``None``. A lateral view, a photograph or a CT slice is reported, never cropped
  to a sliver: the pipeline raises :class:`NoLungsFound` (a :class:`CxrclfError`) instead.

The segmenter is handed in (a :class:`LungSegmenter`: anything with ``mask(image)``), never
loaded here: :func:`cxrclf.segment.run.segmenter_for` finds the one a parameter set names.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from cxrclf.choices import Lung, parse
from cxrclf.errors import CxrclfError

__all__ = ["LUNG_FILL", "MIN_LUNG_AREA", "MAX_MEDIASTINUM_COVER", "MIN_LUNG_RATIO", "LungSegmenter", "NoLungsFound", "apply_lungs", "crop_to_lungs",
           "grey_outside_lungs", "lung_box", "lung_problem", "mediastinum"]

LUNG_FILL = 0.5          # the grey outside the lung fields, in [0, 1]
MIN_LUNG_AREA = 0.05     # lung fields cover 20-35% of a PA radiograph; below 5% nothing usable was found
MIN_LUNG_RATIO = 0.3     # the smaller lung field has at least this share of the larger one's area
MAX_MEDIASTINUM_COVER = 0.35  # the emptiest central column of the lungs' box is at most this full (of the fullest)


class NoLungsFound(CxrclfError):
    """The segmenter found no pair of lung fields in this image."""


class LungSegmenter(Protocol):
    """What the lung step is handed: :class:`cxrclf.segment.infer.Segmenter`, or a known mask in tests."""

    def mask(self, image: np.ndarray) -> np.ndarray:
        """The lung mask (bool) of a 2-D image, at the image's size."""
        ...


def lung_problem(mask: np.ndarray) -> str | None:
    """Why ``mask`` is not a pair of lung fields, or ``None`` when it is.

    A pair covers at least :data:`MIN_LUNG_AREA` of the image and has a mediastinum: in the
    middle 40% of the lungs' box a column at most :data:`MAX_MEDIASTINUM_COVER` as full as
    the fullest column (lungs that touch above the heart still pass; a lateral view's one
    region does not), and either side of that column holds at least :data:`MIN_LUNG_RATIO`
    of the other side's lung. How many laterals and radiographs of each source it rejects:
    docs/performance.md, "Lung segmentation".
    """
    mask = np.asarray(mask, bool)
    area = float(mask.mean()) if mask.size else 0.0
    if area < MIN_LUNG_AREA:
        return (f"no lung fields found (lung area {area:.1%} of the image, expected at least {MIN_LUNG_AREA:.0%}); "
                "a lateral view, or not a chest radiograph?")
    split, cover = mediastinum(mask)
    profile = mask.sum(axis=0).astype(np.float64)
    if cover > MAX_MEDIASTINUM_COVER:
        return (f"no mediastinum between two lung fields (its emptiest central column is {cover:.0%} lung): "
                "a lateral view, or not a chest radiograph?")
    sides = profile[:split].sum(), profile[split + 1:].sum()
    ratio = min(sides) / max(max(sides), 1.0)
    if ratio < MIN_LUNG_RATIO:
        return (f"one lung field much smaller than the other ({ratio:.0%} of its area): one lung hidden by an opacity or cut off, "
                "or a lateral view?")
    return None


def mediastinum(mask: np.ndarray) -> tuple[int, float]:
    """(column, cover): the emptiest column in the middle 40% of a non-empty mask's box, and how full it is of the fullest column.

    Between two lung fields that column crosses the mediastinum (cover near 0; lungs that
    touch above the heart leave it partly full); in one field it crosses lung.
    """
    profile = np.asarray(mask, bool).sum(axis=0).astype(np.float64)
    columns = np.flatnonzero(profile)
    left, right = int(columns[0]), int(columns[-1]) + 1
    low, high = left + int(0.3 * (right - left)), left + int(np.ceil(0.7 * (right - left)))
    split = low + int(np.argmin(profile[low:high]))
    return split, float(profile[split] / profile.max())


def lung_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom/right exclusive: the lungs' box widened by ``margin`` of its mean side."""
    rows, columns = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        raise NoLungsFound("no lung fields found (empty mask)")
    top, bottom = int(np.argmax(rows)), int(len(rows) - np.argmax(rows[::-1]))
    left, right = int(np.argmax(columns)), int(len(columns) - np.argmax(columns[::-1]))
    pad = int(round(margin * ((bottom - top) + (right - left)) / 2))
    height, width = mask.shape
    return max(0, top - pad), min(height, bottom + pad), max(0, left - pad), min(width, right + pad)


def crop_to_lungs(image: np.ndarray, mask: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(the image cropped to :func:`lung_box`, the mask cropped alike)."""
    top, bottom, left, right = lung_box(mask, margin)
    return image[top:bottom, left:right], mask[top:bottom, left:right]


def grey_outside_lungs(image: np.ndarray, mask: np.ndarray, margin: float, fill: float = LUNG_FILL) -> np.ndarray:
    """A float image: ``image`` within ``margin`` (of the lungs' box mean side) of the lungs, ``fill`` elsewhere."""
    import cv2

    top, bottom, left, right = lung_box(mask, 0.0)
    distance = int(round(margin * ((bottom - top) + (right - left)) / 2))
    keep = mask.astype(np.uint8)
    if distance > 0:
        keep = cv2.dilate(keep, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * distance + 1, 2 * distance + 1)))
    return np.where(keep.astype(bool), image, np.asarray(fill, dtype=image.dtype)).astype(image.dtype, copy=False)


def apply_lungs(image: np.ndarray, mask: np.ndarray, lung: Lung | str, margin: float) -> np.ndarray:
    """``image`` with the lung step ``lung`` applied (crop, mask or none); :class:`NoLungsFound` when the mask is no pair of lungs."""
    lung = parse(Lung, lung, "lung")
    if lung is Lung.none:
        return image
    problem = lung_problem(mask)
    if problem:
        raise NoLungsFound(problem)
    if lung is Lung.crop:
        return crop_to_lungs(image, mask, margin)[0]
    return grey_outside_lungs(image, mask, margin)
