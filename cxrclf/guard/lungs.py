"""Input checks from the lungs: does the image show a frontal chest X-ray, upright, in positive grey levels?

A frontal chest radiograph has two lung fields side by side, of plausible size and shape,
apices up, darker than the mediastinum between them. The built-in lung segmenter (trained on
Montgomery; run in onnxruntime by :func:`cxrclf.segment.ort.lung_network`) finds them; these
rules read its mask on the segmenter's own 128-pixel input plane (:func:`describe_pair`), so
an image that passes with a sure mask costs one pass of the network. An image that fails,
or passes unsurely, is looked at again turned by 90, 180 and 270 degrees and with its grey
levels inverted (one batch of four), to say why. The image itself is never turned or
changed: the reasons are warnings.

:func:`lung_warnings` returns at most one reason:

- "rotated by 90/180/270 degrees ...": a turn of the image is a pair of lung fields, surer
  than the image as it is (which, turned by 90 or 270 degrees, shows the fields one above
  the other; turned by 180, a pair the network is less sure of);
- "inverted grey levels (a negative) ...": the image is a pair only with its grey levels
  inverted (as it is, its lungs are brighter than the mediastinum, or not found at all);
- "one lung field not found: dense opacity or not a frontal chest X-ray": one lung-shaped
  field off the centre and nothing, or far too little, on the other side. A white-out of
  one lung hides it from the segmenter, so this reason is as often a sick patient as a wrong
  image; its rate on pneumonia, COVID-19 and tuberculosis is measured on its own
  (docs/performance.md, "Lung-based input checks");
- "no pair of lung fields (a lateral, CT, MR, photograph or crop?)": anything else.

Every threshold below was set on the real radiographs of the shared set (Cohen PA, RSNA,
Montgomery, Shenzhen, NIH) against the images the checks must flag (Cohen's laterals and CT
slices, pydicom's CT and MR files, scikit-image's photographs, noise, corner crops, the
radiographs turned and inverted); each comment gives the values it separates, which
``python benchmarks/lungs.py --features`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["INVERTED", "LungFindings", "LungPair", "NO_PAIR", "ONE_FIELD", "REASONS", "TURNS", "describe_pair", "lung_findings", "lung_warnings",
           "orientation_reasons"]

# The figures below are the built-in segmenter's masks of the 514 real frontal radiographs
# ``benchmarks/lungs.py`` reads (153 Cohen PA, 173 RSNA, the 23 Montgomery patients it never
# trained on, 53 Shenzhen, 112 NIH) on the 128-pixel plane, and of the images that must be
# flagged, as they are. The thresholds were set on these same images (the shared set has no
# others), so the false-alarm rates in docs/performance.md are not a held-out measurement.

# --- a pair of lung fields (LungPair.is_pair) ------------------------------------------------
# Lung share of the plane: radiographs 0.27 median, 0.11 at the 1st percentile (a small film
# on a wide canvas); 44 of the 47 photographs, noise images and pydicom CT and MR files lie
# below 0.08.
MIN_PAIR_AREA = 0.08
# The smaller field's area over the larger's: 0.83 median, 0.44 at the 1st percentile; below,
# one lung is mostly hidden (three radiographs: 0.23, 0.26, 0.30), "one lung field not found".
# The same 0.3 as cxrclf.preprocess.lung.MIN_LUNG_RATIO.
MIN_BALANCE = 0.3
# Rows both fields span, over the shorter field's: radiographs 0.86 at the 1st percentile
# (lowest 0.62); turned by 90 degrees the fields lie one above the other.
MIN_SIDE_BY_SIDE = 0.6
# From one field's outer edge to the other's, over the side: radiographs 0.54 at the 1st
# percentile (lowest 0.52); the two regions of a lateral span 0.43-0.62.
MIN_PAIR_WIDTH = 0.45
# Height over width of a field: radiographs 1.33 at the 1st percentile (lowest 1.18): lungs are
# tall; CT and MR regions and photographs' blobs are often as wide as they are tall.
MIN_FIELD_ASPECT = 1.1
# The highest lung row, over the side: radiographs at most 0.31 (apices near the top).
MAX_TOP = 0.35
# Median grey of the mediastinum between the fields minus the lungs' (plane stretched to
# [0, 1]): radiographs 0.32 median, 0.09 at the 1st percentile (lowest 0.016, one RSNA
# film); a negative is below 0, so the lungs must be darker. Above 0.63 the lungs are black
# and the mediastinum white, as only a CT lung window shows them: Cohen's CT slices 0.65 and
# 0.71, radiographs at most 0.60.
MIN_CONTRAST = 0.0
MAX_CONTRAST = 0.63
# Mean probability of lung inside the mask: radiographs 0.92 median, 0.83 at the 1st
# percentile (lowest 0.77); every photograph, noise image and pydicom CT and MR file lies
# below 0.8 (at most 0.78), and 7 of Cohen's 12 laterals and CT slices: the network is unsure
# of what is not a chest.
MIN_CONFIDENCE = 0.8

# --- orientation ------------------------------------------------------------------------------
# An upright pair at least this sure is accepted in one pass: 82% of the radiographs. Turned
# by 180 degrees, 60% of them still look like a pair, but at this confidence 1 of 514; the
# others, and every image that fails, are looked at turned and inverted (four more planes).
SURE_CONFIDENCE = 0.9
# Where the upright image and a turn both look like a pair, the turn is reported only when
# surer by this much: the 310 radiographs that look like a pair both ways were surer upright
# by 0.028 or more, and a symmetric phantom's half turn is no surer than it.
TURN_MARGIN = 0.02
# A turn or the negative of an image is named only at this confidence (radiographs upright:
# 0.83 at the 1st percentile); two of Cohen's laterals look like a turned pair at 0.80 and
# 0.82, and are "no pair of lung fields" instead.
TURN_CONFIDENCE = 0.83

# --- one field (LungPair.is_one_field) ---------------------------------------------------------
# One region of a lung's size, at least this far (over the side) from the centre column: a
# lateral's single region sits near the middle (0.43-0.55), the one lung a white-out leaves
# does not (0.26, 0.64 and 0.73 on a Cohen and two RSNA films).
ONE_FIELD_AREA = (0.05, 0.3)
MIN_ONE_FIELD_OFFSET = 0.1


@dataclass(frozen=True)
class LungPair:
    """What the lung mask of one orientation shows, on the segmenter's input plane (side ``S``).

    ``fields`` is 2 when a mediastinum splits the mask in two (the emptiest central column of
    the mask's box at most :data:`cxrclf.preprocess.lung.MAX_MEDIASTINUM_COVER` full), 1 for
    one region, 0 for none. Fractions are of the plane's area or side.
    """
    fields: int = 0
    area: float = 0.0          # lung share of the plane
    confidence: float = 0.0    # mean probability of lung inside the mask
    balance: float = 0.0       # the smaller field's area over the larger's
    side_by_side: float = 0.0  # rows both fields occupy, over the shorter field's rows
    width: float = 0.0         # from the left field's outer edge to the right field's, over S
    aspect: float = 0.0        # height over width, the mean of the fields (of the one region for 1)
    top: float = 1.0           # the highest lung row, over S
    contrast: float = float("nan")  # median grey of the mediastinum between the fields minus the lungs' ([0, 1] plane)
    centre: float = 0.5        # for one region: its box's centre column, over S

    @property
    def is_pair(self) -> bool:
        """Two lung fields side by side, of plausible size and shape, apices near the top, darker than the mediastinum."""
        return self.balance >= MIN_BALANCE and self._paired_but_for_balance()

    @property
    def is_one_field(self) -> bool:
        """One lung-shaped field, and on the other side nothing (one region off the centre) or far too little (a lopsided pair)."""
        if self.fields == 2:
            return self.balance < MIN_BALANCE and self._paired_but_for_balance()
        return (self.fields == 1 and ONE_FIELD_AREA[0] <= self.area <= ONE_FIELD_AREA[1] and self.aspect >= MIN_FIELD_ASPECT
                and self.confidence >= MIN_CONFIDENCE and abs(self.centre - 0.5) >= MIN_ONE_FIELD_OFFSET)

    def _paired_but_for_balance(self) -> bool:
        return (self.fields == 2 and self.area >= MIN_PAIR_AREA and self.side_by_side >= MIN_SIDE_BY_SIDE and self.width >= MIN_PAIR_WIDTH
                and self.aspect >= MIN_FIELD_ASPECT and self.top <= MAX_TOP and self.confidence >= MIN_CONFIDENCE
                and MIN_CONTRAST <= self.contrast <= MAX_CONTRAST)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a non-empty mask, bottom and right exclusive."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1


def _between(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Per row where both fields have lung: the pixels between the left field's last and the right field's first."""
    width = left.shape[1]
    both = left.any(axis=1) & right.any(axis=1)
    last = width - 1 - np.argmax(left[:, ::-1], axis=1)
    first = np.argmax(right, axis=1)
    columns = np.arange(width)
    return both[:, None] & (columns[None, :] > last[:, None]) & (columns[None, :] < first[:, None])


def describe_pair(probabilities: np.ndarray, plane: np.ndarray, threshold: float = 0.5, mask: np.ndarray | None = None) -> LungPair:
    """The :class:`LungPair` of the segmenter's ``probabilities`` for ``plane`` (both (S, S); plane in [0, 1]);
    ``mask``: their mask, where the caller made it already (:func:`~cxrclf.segment.masks.mask_from_probabilities`)."""
    from cxrclf.preprocess.lung import MAX_MEDIASTINUM_COVER, mediastinum
    from cxrclf.segment.masks import mask_from_probabilities

    size = plane.shape[0]
    mask = mask_from_probabilities(probabilities, plane.shape, threshold) if mask is None else mask
    area = float(mask.mean())
    if not mask.any():
        return LungPair()
    confidence = float(probabilities[mask].mean())
    split, cover = mediastinum(mask)
    left_field, right_field = mask.copy(), mask.copy()
    left_field[:, split:] = False
    right_field[:, :split + 1] = False
    if cover > MAX_MEDIASTINUM_COVER or not (left_field.any() and right_field.any()):
        top, bottom, left, right = _box(mask)
        return LungPair(fields=1, area=area, confidence=confidence, aspect=(bottom - top) / (right - left), top=top / size,
                        centre=(left + right) / 2 / size)
    boxes = [_box(field) for field in (left_field, right_field)]
    areas = [int(field.sum()) for field in (left_field, right_field)]
    heights = [b[1] - b[0] for b in boxes]
    shared = max(0, min(boxes[0][1], boxes[1][1]) - max(boxes[0][0], boxes[1][0]))
    between = _between(left_field, right_field)
    contrast = float(np.median(plane[between]) - np.median(plane[mask])) if between.any() else float("nan")
    return LungPair(fields=2, area=area, confidence=confidence, balance=min(areas) / max(areas), side_by_side=shared / min(heights),
                    width=(boxes[1][3] - boxes[0][2]) / size, aspect=float(np.mean([h / (b[3] - b[2]) for h, b in zip(heights, boxes)])),
                    top=min(b[0] for b in boxes) / size, contrast=contrast)


# Reasons, one per way an image fails; TURNS by the counter-clockwise quarter turns (np.rot90) that make the image upright.
NO_PAIR = "no pair of lung fields (a lateral, CT, MR, photograph or crop?)"
ONE_FIELD = "one lung field not found: dense opacity or not a frontal chest X-ray"
INVERTED = "inverted grey levels (a negative): the lungs are brighter than the mediastinum"
TURNS = {1: "rotated by 90 degrees (clockwise)", 2: "rotated by 180 degrees (upside down)", 3: "rotated by 270 degrees (90 counter-clockwise)"}
REASONS = (NO_PAIR, ONE_FIELD, INVERTED, *TURNS.values())
_ALTERNATIVES = ((1, False), (2, False), (3, False), (0, True))   # (quarter turns back, inverted)


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class LungFindings:
    """What the lung checks found in one image: the reasons (at most one; empty when it passes) and the
    upright lung mask on the segmenter's input plane (bool (S, S)), which the view check frames its lungs' box with."""

    reasons: tuple[str, ...]
    mask: np.ndarray


def _upright_and_reasons(plane: np.ndarray, segmenter) -> tuple[np.ndarray, list[str]]:
    """(the upright mask, the reasons) for an input plane."""
    from cxrclf.segment.masks import mask_from_probabilities

    threshold = segmenter.threshold
    probabilities = segmenter.plane_probabilities(plane, folded=True)
    mask = mask_from_probabilities(probabilities, plane.shape, threshold)
    upright = describe_pair(probabilities, plane, threshold, mask)
    if upright.is_pair and upright.confidence >= SURE_CONFIDENCE:
        return mask, []
    turned = [np.ascontiguousarray(np.rot90(1.0 - plane if inverted else plane, turns)) for turns, inverted in _ALTERNATIVES]
    pairs = [describe_pair(p, t, threshold) for p, t in zip(segmenter.plane_probabilities(np.stack(turned), folded=True), turned)]
    floor = max(TURN_CONFIDENCE, upright.confidence + TURN_MARGIN if upright.is_pair else 0.0)  # an upright pair yields only to a surer one
    candidates = [(pair.confidence, alternative) for pair, alternative in zip(pairs, _ALTERNATIVES) if pair.is_pair and pair.confidence >= floor]
    if candidates:
        turns, inverted = max(candidates, key=lambda c: c[0])[1]
        return mask, [INVERTED if inverted else TURNS[turns]]
    if upright.is_pair:
        return mask, []
    return mask, [ONE_FIELD if upright.is_one_field else NO_PAIR]


def orientation_reasons(plane: np.ndarray, segmenter) -> list[str]:
    """The reasons of :func:`lung_warnings` for an input plane (float32 (S, S) in [0, 1], as
    :func:`~cxrclf.segment.plane.segmenter_plane` makes it)."""
    return _upright_and_reasons(plane, segmenter)[1]


def lung_findings(pixels: np.ndarray, segmenter=None) -> LungFindings | None:
    """The lung checks on ``pixels`` (a decoded image, any size and dtype ``read_image`` gives), with the upright mask.

    ``segmenter``: anything with ``input_size``, ``threshold`` and ``plane_probabilities``
    (default: :func:`cxrclf.segment.ort.lung_network`, the built-in segmenter in onnxruntime,
    or in PyTorch where onnxruntime is missing). None where neither is installed: no lung check.
    """
    from cxrclf.segment.ort import lung_network
    from cxrclf.segment.plane import lung_plane

    segmenter = segmenter or lung_network()
    if segmenter is None:
        return None
    mask, reasons = _upright_and_reasons(lung_plane(pixels, segmenter.input_size), segmenter)
    return LungFindings(tuple(reasons), mask)


def lung_warnings(pixels: np.ndarray, segmenter=None) -> list[str]:
    """Why ``pixels`` (a decoded image, any size and dtype ``read_image`` gives) is no upright, positive frontal chest X-ray;
    empty when it is, or when there is no segmenter to look (:func:`lung_findings`)."""
    findings = lung_findings(pixels, segmenter)
    return [] if findings is None else list(findings.reasons)
