"""Cheap rule-based checks on a decoded image and its header, run before the model.

:func:`input_warnings` returns short reasons a user can read ("DICOM modality CT is not a
radiograph (computed tomography)", "lateral view (ViewPosition LL): the model reads frontal
views"); an empty list means no rule objects. The rules catch what a header or a histogram
shows for certain; what they miss (a grey photograph, an X-ray of another body part saved
as PNG, a negative) is the learned score's job (:mod:`cxrclf.guard.detector`).

Header rules (DICOM only; PNG and JPEG carry empty fields, which pass):

- Modality. ``CR``, ``DX``, ``DR``, ``RG`` are projection radiographs and pass. ``OT`` ("other")
  and ``SC`` pass too, like an empty field: film digitisers and secondary-capture converters
  write them for scanned radiographs, so they say nothing about the image; the pixel rules
  and the learned score decide. Every other code is flagged: ``CT``, ``MR``, ``US``, ``NM``,
  ``PT``, ``XA``, ``MG`` and the rest, and also ``RF`` (fluoroscopy: dynamic, low-dose spot
  images such as swallow studies, not the plain radiographs the model was trained on).
- View position. Lateral (``LL``, ``RL``, ``LATERAL``, ``LAT``, and ``L`` as the Cohen data
  writes it), oblique (``LAO``, ``RAO``, ``LPO``, ``RPO``, ``LLO``, ``RLO``) and decubitus
  (``LLD``, ``RLD``: a frontal projection with the patient lying on one side, the image turned
  by 90 degrees) views are flagged. ``AP`` is a frontal view and passes unless the caller
  names the views the model was trained on (``trained_views``, a run's
  :attr:`~cxrclf.runs.DataSpec.trained_views`): then a view outside them is flagged by name,
  "AP view (DICOM ViewPosition AP); this run saw PA films only". Views compare by family
  (:func:`view_family`): ``AP SUPINE`` and ``AP ERECT`` are AP films, so a run trained with
  AP films passes them.
- Body part. Empty or naming the chest (``CHEST``, ``THORAX``, ``TORAX``, ``LUNG``) passes.
- Frames. More than one frame is a DICOM series or cine loop, an animated PNG or a camera's
  multi-picture JPEG; the reader keeps only the first.

Pixel rules, with thresholds set on the real radiographs of ``cxr-mini`` (Cohen, RSNA,
Montgomery, Shenzhen and one MONOCHROME1 DICOM, decoded by ``read_image``) against
scikit-image's sample photographs, lung masks and synthetic cases: each constant says what
it separates. What the rules raise on those images: docs/performance.md, "Rule-based input
checks".

With ``trained_views`` given and no view in the header (PNG, JPEG, a DICOM without
``ViewPosition``), an image every other rule passed also goes through the learned PA-or-AP
check of :mod:`cxrclf.guard.view` ("looks like an AP film (0.93); this run saw PA films only").

No rule for an inverted grey scale (a negative image): the one tried, mediastinum brighter
than the lung fields at fixed positions, caught most negated films but also flagged upright
films once a crop moved the anatomy away from those positions (same section). Negatives, turned films,
laterals and CT slices saved as PNG are found from where the lungs are instead: the lung
segmenter's checks in :mod:`cxrclf.guard.lungs`, which ``predict``, ``evaluate`` and
``explain`` run beside these rules.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the one definition of an image's header fields
    from cxrclf.data.imageio import ImageInfo

# --- header rules -------------------------------------------------------------------------

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
# No evidence either way: not DICOM, or DICOM that only says "other" / secondary capture.
UNKNOWN_MODALITIES = frozenset({"", "OT", "SC"})
MODALITY_NAMES = {
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "positron emission tomography",
    "XA": "X-ray angiography",
    "RF": "fluoroscopy",
    "MG": "mammography",
    "PX": "panoramic dental X-ray",
    "IO": "intra-oral X-ray",
    "XC": "external camera photograph",
    "ES": "endoscopy",
    "OP": "ophthalmic photograph",
    "SM": "slide microscopy",
    "BMD": "bone densitometry",
    "SEG": "segmentation",
    "RTIMAGE": "radiotherapy portal image",
    "RTDOSE": "radiotherapy dose",
    "RTSTRUCT": "radiotherapy structures",
}
FRONTAL_VIEWS = ("PA", "AP")  # posteroanterior (upright, the default training view), anteroposterior (portable, often supine)
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "L"})
OBLIQUE_VIEWS = frozenset({"LAO", "RAO", "LPO", "RPO", "LLO", "RLO", "OBLIQUE"})
DECUBITUS_VIEWS = frozenset({"LLD", "RLD"})
CHEST_BODY_PARTS = ("CHEST", "THORA", "TORAX", "TÓRAX", "LUNG")  # substrings: THORAX, THORACIC, ...

# --- pixel rules --------------------------------------------------------------------------

# Robust intensity spread: 99th minus 1st percentile, intensities scaled to [0, 1] by the
# image's bit depth. Real radiographs: 0.25 at the least (a faded Cohen JPEG), median 0.85.
# Below 0.05 (13 of 255 grey levels) nothing anatomical is visible: blank, saturated or
# faint frames.
MIN_INTENSITY_SPREAD = 0.05
# Distinct grey levels (at 8 bits). Real radiographs: 30 at the least (a posterised journal
# figure), over 200 typically; Montgomery's lung masks have 2. Fewer than 16 is a mask,
# drawing or thresholded image.
MIN_GREY_LEVELS = 16
# Long side over short side. Real single radiographs: at most 1.39 (1.49 for Cohen's CT
# slices); PA films are about 0.7 to 1.4. The one real image beyond 2.0 is a 2.2:1 strip
# cropped from a journal figure, which the model sees squashed to a square: worth a warning.
MAX_ASPECT_RATIO = 2.0
# Hasler-Suesstrunk colourfulness on [0, 1] RGB (0 for grey). Real radiographs: 0 for
# nearly all, at most 0.083 (a journal figure with red arrows). scikit-image's colour
# photographs: 0.149 (cat) to 0.39 (retina). 0.12 lies between the two; Hasler and
# Suesstrunk call 33/255 = 0.13 "moderately colourful".
MAX_COLOURFULNESS = 0.12
# Statistics are taken on every k-th pixel so that a 4000 x 4000 DICOM costs what a 1024 px
# image does; percentiles of a million samples do not move at the precision used here.
_MAX_SAMPLED_SIDE = 1024


def input_warnings(pixels: np.ndarray, info: ImageInfo | None = None, *,
                   trained_views: Collection[str] | None = None, lungs: bool = False) -> list[str]:
    """Reasons to distrust the model's answer for this image; empty when every rule passes.

    ``pixels`` is the decoded 2-D ``uint8``/``uint16`` grey image (``read_image``), ``info`` its
    header summary (None: pixel rules only). ``lungs``: the lung checks too
    (:func:`cxrclf.guard.lungs.lung_findings`: an original image, not one a run preprocessed).
    ``trained_views`` (e.g. ``("PA",)``), when given, also flags a view outside it, such as AP:
    the header's, or where the header names none, the one the pixels look like (only for an
    image no other rule objected to: the view check presumes a frontal chest film; it frames
    the lungs' box with the lung checks' mask where they ran).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16) or pixels.size == 0:
        raise ValueError(
            f"pixels must be a non-empty 2-D uint8 or uint16 grey image (as read_image returns), "
            f"got shape {pixels.shape} and dtype {pixels.dtype}"
        )
    warnings = header_warnings(info, trained_views=trained_views) if info is not None else []
    warnings += pixel_warnings(pixels, colourfulness=getattr(info, "colourfulness", None))
    mask = None
    if lungs:
        from cxrclf.guard.lungs import lung_findings

        findings = lung_findings(pixels)
        if findings is not None:
            warnings += list(findings.reasons)
            mask = findings.mask
    if trained_views is not None and not warnings and not _field(info, "view_position"):
        from cxrclf.guard.view import pixel_view_warning  # the pixels' view, where the header names none

        looks = pixel_view_warning(pixels, trained_views, mask=mask)
        warnings += [looks] if looks else []
    return warnings


def header_warnings(info: ImageInfo, *, trained_views: Collection[str] | None = None) -> list[str]:
    """The header rules of :func:`input_warnings` (modality, view, body part, frames)."""
    warnings = []
    modality = _field(info, "modality")
    if modality not in RADIOGRAPH_MODALITIES and modality not in UNKNOWN_MODALITIES:
        name = MODALITY_NAMES.get(modality)
        warnings.append(f"DICOM modality {modality} is not a radiograph" + (f" ({name})" if name else ""))

    view = _field(info, "view_position")
    if view in LATERAL_VIEWS:
        warnings.append(f"lateral view (ViewPosition {view}): the model reads frontal views")
    elif view in OBLIQUE_VIEWS:
        warnings.append(f"oblique view (ViewPosition {view}): the model reads frontal views")
    elif view in DECUBITUS_VIEWS:
        warnings.append(f"decubitus view (ViewPosition {view}): the patient lies on one side")
    elif view and trained_views is not None:
        families = view_families(trained_views)
        if view_family(view) not in families:
            warnings.append(f"{view_family(view)} view (DICOM ViewPosition {view}); this run saw {' and '.join(families)} films only")

    body_part = _field(info, "body_part")
    if body_part and not any(part in body_part for part in CHEST_BODY_PARTS):
        warnings.append(f"DICOM body part {body_part} is not the chest")

    frames = int(getattr(info, "frames", 1) or 1)
    if frames > 1:
        if _field(info, "format") == "DICOM":
            warnings.append(f"multi-frame DICOM ({frames} frames): a series or cine loop, only the first frame was read")
        else:  # an animated PNG, or a camera's multi-picture (MPO) JPEG
            kind = _field(info, "format") or "image"
            warnings.append(f"{frames} frames in one {kind} file (animated or multi-picture): only the first was read")
    return warnings


def view_family(view: str) -> str:
    """A view code's family: ``AP``, ``AP SUPINE``, ``ap erect`` -> ``AP``; ``PA`` -> ``PA``; any other code upper-cased."""
    words = str(view or "").strip().upper().split()
    if words and words[0] in FRONTAL_VIEWS:
        return words[0]
    return " ".join(words)


def view_families(views: Collection[str]) -> tuple[str, ...]:
    """The distinct, sorted families of ``views`` (empty codes left out)."""
    return tuple(sorted({view_family(v) for v in views} - {""}))


def pixel_warnings(pixels: np.ndarray, *, colourfulness: float | None = None) -> list[str]:
    """The pixel rules of :func:`input_warnings` (colour, contrast, grey levels, shape)."""
    warnings = []
    if colourfulness is not None and math.isfinite(colourfulness) and colourfulness > MAX_COLOURFULNESS:
        warnings.append(f"real colour (colourfulness {colourfulness:.2f}): a photograph or colour rendering, not an X-ray")

    scaled = _sampled_unit_image(pixels)
    levels = np.bincount(np.rint(scaled * 255).astype(np.intp).ravel(), minlength=256)
    low, high = _percentile_levels(levels, (0.01, 0.99))
    spread = (high - low) / 255.0
    if spread < MIN_INTENSITY_SPREAD:
        warnings.append(f"constant or nearly constant image (1st-99th percentile spread {spread:.3f})")
    else:
        grey_levels = int(np.count_nonzero(levels))
        if grey_levels < MIN_GREY_LEVELS:
            warnings.append(f"only {grey_levels} grey levels: a mask, drawing or thresholded image, not a radiograph")

    height, width = pixels.shape
    aspect = max(height, width) / min(height, width)
    if aspect > MAX_ASPECT_RATIO:
        warnings.append(f"extreme aspect ratio {aspect:.1f}:1: the model sees it squashed to a square")
    return warnings


def _sampled_unit_image(pixels: np.ndarray) -> np.ndarray:
    """Every k-th pixel, float in [0, 1] scaled by the bit depth the values occupy (>= 8 bits)."""
    step = max(1, math.ceil(max(pixels.shape) / _MAX_SAMPLED_SIDE))
    sampled = pixels[::step, ::step]
    # read_image stretches 16-bit data to the full range; an unstretched 12-bit image (max
    # 4095) is scaled as 12-bit rather than looking nearly black against 65535.
    bits = max(8, int(sampled.max()).bit_length())
    return sampled.astype(np.float64) / float(2**bits - 1)


def _percentile_levels(counts: np.ndarray, fractions: tuple[float, ...]) -> list[int]:
    cumulative = np.cumsum(counts)
    return [int(np.searchsorted(cumulative, fraction * cumulative[-1], side="left")) for fraction in fractions]


def _field(info: object, name: str) -> str:
    return str(getattr(info, name, "") or "").strip().upper()
